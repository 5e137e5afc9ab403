"""The durable log of Carerix webhook deliveries, shared by the receiver, the triggers and the CLI.

The receiver writes, triggers read "events after sequence N"; the store is the only thing they share, so it
is deliberately free of Airflow imports (the receiver runs without Airflow) and works the same on an embedded
SQLite file (one machine) and on PostgreSQL (several receivers and triggerers on several machines).

Guarantees the rest of the provider builds on:

* **Durable on return.** ``insert``/``insert_many`` return only after the transaction is committed and
  flushed to disk, so a receiver may answer 2xx the moment they return. SQLite runs in WAL mode with
  ``synchronous=FULL``: with ``NORMAL`` a WAL commit survives a process crash but may be rolled back by a power
  loss or OS crash, and a 2xx to Carerix must mean "kept" whatever happens next. The cost (one fsync per
  commit) is paid once per group of requests thanks to the receiver's group commit.
* **Readers never skip an event.** Readers poll "sequence > cursor"; if sequence 11 became visible while 10
  could still commit, a reader at cursor 11 would skip 10 forever. SQLite serialises writers
  (``BEGIN IMMEDIATE``), so there sequence order is commit order. On PostgreSQL, holding a lock from
  ``nextval`` to commit would serialise every commit's fsync across all receivers (more receivers, smaller
  groups, fewer events per second), so writers commit concurrently and readers are held back instead. An
  insert takes the insert lock (a session-level advisory lock) only for the one statement that hands out its
  sequences; before releasing it, that statement announces "my sequences start at N" with a transaction-level
  advisory lock (``_PG_IN_FLIGHT``, N mod 2**31) that lasts until commit or rollback. ``events_after`` and
  ``last_sequence`` return nothing above min(last sequence handed out when they looked, first announced
  sequence - 1), then query with a fresh snapshot: every sequence at or below that bound has settled.
* **One row per event id.** Carerix delivers at least once; a redelivery returns the existing sequence
  (``ON CONFLICT`` covers two receivers storing the same redelivery at the same moment).
* **Stalled writers do not stop the fleet.** A receiver can be paused at any point (SIGSTOP, a long GC pause, a
  VM freeze, a network partition). It cannot hold the insert lock while paused: the lock lives inside one
  server-side statement. Paused after that statement, its open transaction holds readers back (not writers)
  at its first sequence. Every PostgreSQL session the store opens carries ``PG_SESSION_SETTINGS``: the server
  ends a session left idle inside a transaction after ``idle_in_transaction_session_timeout`` (its insert rolls
  back, it had not been acknowledged, readers move on), cancels a statement after ``statement_timeout``, and a
  writer waits at most ``lock_timeout`` for the insert lock before raising ``StoreUnavailable`` (the receiver
  answers 503 at once and Carerix retries). A holder that is not a store session (``psql``, another tool) is
  not bounded by these: receivers answer 503 quickly until it lets go.
* **received_at follows sequence order.** It is stamped with the database clock while the insert lock is held
  (SQLite: inside ``BEGIN IMMEDIATE``), so it never decreases along the sequence unless the clock is set back.
  It is the time the event was stored, not the time it became visible to readers.
"""

from __future__ import annotations

from airflow_provider_carerix.store.base import resolve_store_url
from airflow_provider_carerix.store.core import EventStore, insert_counted
from airflow_provider_carerix.store.errors import (
    CAUSES,
    ConsumerOwned,
    EventRejected,
    StoreUnavailable,
    unavailable_cause,
)
from airflow_provider_carerix.store.records import (
    Lease,
    Provenance,
    ReceiverSeen,
    StoredEvent,
    StoreIdentity,
    key_fingerprint,
)
from airflow_provider_carerix.store.schema import SCHEMA_VERSION
from airflow_provider_carerix.store.sessions import NOTIFY_CHANNEL, PG_SESSION_SETTINGS

__all__ = [
    "CAUSES",
    "NOTIFY_CHANNEL",
    "PG_SESSION_SETTINGS",
    "SCHEMA_VERSION",
    "ConsumerOwned",
    "EventRejected",
    "EventStore",
    "Lease",
    "Provenance",
    "ReceiverSeen",
    "StoreIdentity",
    "StoreUnavailable",
    "StoredEvent",
    "insert_counted",
    "key_fingerprint",
    "resolve_store_url",
    "unavailable_cause",
]
