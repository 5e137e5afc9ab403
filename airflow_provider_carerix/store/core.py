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

import contextlib
import errno
import functools
import hashlib
import json
import logging
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from airflow_provider_carerix import settings
from airflow_provider_carerix.definitions import event_types as _types
from airflow_provider_carerix.definitions.models import EventPayload

__all__ = [
    "CAUSES",
    "NOTIFY_CHANNEL",
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
    "resolve_store_url",
    "unavailable_cause",
]

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "carerix_events"
# Any constant works as long as every writer uses the same one; derived from the table name for readability.
_PG_INSERT_LOCK = zlib.crc32(b"carerix_events.insert")
_PG_MIGRATE_LOCK = zlib.crc32(b"carerix_events.migrate")
# First key (int4) of the lock each insert holds from "sequences handed out" until its commit; the second key is
# its first sequence modulo 2**31, so readers can see which sequences are still in flight (see module docstring).
_PG_IN_FLIGHT = zlib.crc32(b"carerix_events.in_flight") & 0x7FFFFFFF
_IN_FLIGHT_MOD = 2**31
# Applied to every PostgreSQL session the store opens (libpq ``options``, so no extra round trip). They bound how
# long one stalled writer (SIGSTOP, GC pause, VM freeze, network partition) can hold the insert lock and how
# long the others wait for it; see "Stalled writers" in the module docstring. ``options`` in the store URL are
# appended after these, so ``?options=-c%20lock_timeout%3D3s`` overrides one of them.
PG_SESSION_SETTINGS: dict[str, str] = {
    # A writer waits this long for the insert lock, then gets StoreUnavailable (the receiver answers 503 and
    # Carerix retries, possibly on another receiver). Normal waits are a few commits long (milliseconds).
    "lock_timeout": "1s",
    # The server ends a session that sits in an open transaction this long: a paused lock holder loses the
    # lock (its transaction rolls back, so nothing it had not yet acknowledged is half-stored).
    "idle_in_transaction_session_timeout": "5s",
    # A statement that runs this long is cancelled (a holder stuck inside a statement). Migrations lift it.
    "statement_timeout": "10s",
}
_ID_MAX = 255
# The id of the row ``probe_write`` adds to the schema version table and removes in the same transaction.
_PROBE_ROW = -1
_F = TypeVar("_F", bound=Callable[..., Any])


def resolve_store_url(url: str | None = None) -> str:
    """The store's URL from an explicit URL, else the settings (``event_store_url``, then the default).

    Components that can reach Airflow connections resolve through
    :class:`~airflow_provider_carerix.hooks.event_store.CarerixEventStoreHook` instead, which looks at the
    ``carerix_event_store`` connection first (:func:`airflow_provider_carerix.settings.resolve_store`).
    """
    if url and url.strip():
        return _normalise_url(url)
    return settings.resolve_store().url


_normalise_url = settings.normalise_store_url


class StoreUnavailable(Exception):
    """The store cannot be reached or is busy: callers should retry later (the receiver answers 503).

    ``cause`` says why in one word an operator can act on (:data:`CAUSES`): ``disk_full``, ``read_only``,
    ``locked``, ``file_replaced``, ``file_removed``, ``unreachable``, ``io_error``, ``timeout``, or
    ``unavailable`` when nothing more precise is known. Derived from error codes, never from the database's
    message (which may quote a row).
    """

    def __init__(self, message: str, cause: str = "unavailable") -> None:
        super().__init__(message)
        self.cause = cause


#: What each :attr:`StoreUnavailable.cause` means, as the messages, logs and ``/health`` say it.
CAUSES: dict[str, str] = {
    "disk_full": "disk full",
    "read_only": "read-only (file, directory, file system or database)",
    "locked": "locked by another writer",
    "file_replaced": "the SQLite file was replaced",
    "file_removed": "the SQLite file was removed",
    "unreachable": "cannot connect",
    "io_error": "disk I/O error",
    "timeout": "timed out",
    "corrupt": "the database file is damaged",
    "unavailable": "unavailable",
}
# Causes a fresh connection may cure once the operator fixed them (permissions, a failover to a new primary):
# connections opened in that state stay read-only or broken, so the pool is emptied and the next use reopens.
_REOPEN_CAUSES = frozenset({"read_only", "io_error", "corrupt"})
_SQLITE_CAUSES = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_PERM", "read_only"),
    ("SQLITE_BUSY", "locked"),
    ("SQLITE_LOCKED", "locked"),
    ("SQLITE_CANTOPEN", "unreachable"),
    ("SQLITE_IOERR", "io_error"),
    ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_NOTADB", "corrupt"),
)
# Python 3.10's sqlite3 carries no error code, only SQLite's fixed English texts (not the row).
_SQLITE_TEXTS = (
    ("database or disk is full", "disk_full"),
    ("readonly database", "read_only"),
    ("database is locked", "locked"),
    ("database table is locked", "locked"),
    ("unable to open database", "unreachable"),
    ("disk i/o error", "io_error"),
    ("malformed", "corrupt"),
    ("not a database", "corrupt"),
)
_PG_CAUSES = {
    "53100": "disk_full",  # disk_full
    "25006": "read_only",  # read_only_sql_transaction (a standby, or default_transaction_read_only)
    "55P03": "locked",  # lock_not_available (lock_timeout)
    "40P01": "locked",  # deadlock_detected
    "57014": "timeout",  # query_canceled (statement_timeout)
}
_OS_CAUSES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only",
    errno.EACCES: "read_only",
    errno.EPERM: "read_only",
}


def unavailable_cause(exc: BaseException | None) -> str:
    """The :data:`CAUSES` key for a driver or OS error (``unavailable`` when it says nothing more)."""
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, cause in _SQLITE_CAUSES:
            if name.startswith(prefix):
                return cause
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _PG_CAUSES:
            return _PG_CAUSES[sqlstate]
        if sqlstate.startswith(("08", "57P")):  # connection exceptions, server shutting down
            return "unreachable"
    if isinstance(exc, sqlite3.Error) and name is None:
        text = str(exc).lower()
        for fragment, cause in _SQLITE_TEXTS:
            if fragment in text:
                return cause
    if isinstance(exc, OSError) and exc.errno in _OS_CAUSES:
        return _OS_CAUSES[exc.errno]
    if exc is not None and type(exc).__module__.startswith("psycopg") and sqlstate is None:
        return "unreachable"  # no server answer at all: refused, unresolved, timed out connecting
    return "unavailable"


def _unavailable(exc: BaseException, what: str = "event store unavailable") -> StoreUnavailable:
    cause = unavailable_cause(exc)
    return StoreUnavailable(f"{what}: {CAUSES[cause]} ({type(exc).__name__})", cause)


class ConsumerOwned(Exception):
    """A consumer name is already used by another DAG: two DAGs would split (or double) its events."""

    def __init__(self, consumer: str, owner: str, claimant: str) -> None:
        super().__init__(
            f"Carerix event consumer {consumer!r} belongs to DAG {owner!r}, not {claimant!r}: give each DAG's "
            "CarerixEvents its own name"
        )
        self.consumer = consumer
        self.owner = owner
        self.claimant = claimant


@dataclass(frozen=True)
class Lease:
    """Outcome of one attempt to take a consumer's lease."""

    acquired: bool
    holder: str | None
    until: datetime | None


class EventRejected(Exception):
    """The store refused an event because of the event itself (a value no column can hold): retrying cannot
    help, so the receiver answers 4xx. The message names the event id and the error type, never a value.
    """

    def __init__(self, message: str, event_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.field = field


@dataclass(frozen=True)
class StoreIdentity:
    """Which store this is (``store_id`` is random, made once) and where this process reaches it."""

    store_id: str
    created_at: datetime
    url: str  # password hidden


@dataclass(frozen=True)
class ReceiverSeen:
    """A receiver's last heartbeat in this store."""

    receiver_id: str
    kind: str
    host: str | None
    pid: int | None
    version: str | None
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True)
class StoredEvent:
    """One stored delivery. ``payload`` is parsed from ``raw``, the exact text Carerix sent."""

    sequence: int
    event_id: str
    type: str
    time: datetime
    tenant: str | None
    application_id: str | None
    webhook_id: str | None
    entity_id: str | None
    received_at: datetime
    payload: dict[str, Any] = field(repr=False)
    raw: str = field(default="", repr=False, compare=False)
    #: True: ``Cx-Signature`` checked against a key of its application; False: accepted without (no key
    #: known yet); None: not applicable (recovered from Carerix's delivery log over its API, or stored
    #: before signatures were recorded).
    signature_verified: bool | None = None
    #: Stored by recovery from Carerix's delivery log rather than delivered to the receiver.
    recovered: bool = False


@dataclass(frozen=True)
class Provenance:
    """How an event reached the store, recorded beside it (``insert_many`` items may carry one)."""

    signature_verified: bool | None = None
    recovered: bool = False


_DELIVERED = Provenance()
_Item = tuple[bytes | str, EventPayload] | tuple[bytes | str, EventPayload, Provenance]


class _UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC in and out; SQLite has no timezone type, so it stores naive UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = sa.MetaData()

_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite

schema_version = sa.Table(
    "carerix_schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)

events = sa.Table(
    "carerix_events",
    metadata,
    # AUTOINCREMENT on SQLite: never reuse a sequence number, even after the newest rows were deleted.
    sa.Column("sequence", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(_ID_MAX), nullable=False, unique=True),
    sa.Column("type", sa.String(_ID_MAX), nullable=False),
    sa.Column("time", _UTCDateTime, nullable=False),
    sa.Column("tenant", sa.String(_ID_MAX)),
    sa.Column("application_id", sa.String(_ID_MAX)),
    sa.Column("webhook_id", sa.String(_ID_MAX)),
    sa.Column("entity_id", sa.String(_ID_MAX)),
    sa.Column("received_at", _UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # Added by migration step 2 (see ``_migration_2``).
    sa.Column("signature_verified", sa.Boolean),
    sa.Column("recovered", sa.Boolean, nullable=False, server_default=sa.false()),
    sqlite_autoincrement=True,
)
# What triggers ask: "after sequence N" (primary key), optionally for some types or one webhook.
_events_indexes = [
    sa.Index("ix_carerix_events_type_sequence", events.c.type, events.c.sequence),
    sa.Index("ix_carerix_events_webhook_sequence", events.c.webhook_id, events.c.sequence),
    sa.Index("ix_carerix_events_received_at", events.c.received_at),
]

cursors = sa.Table(
    "carerix_cursors",
    metadata,
    sa.Column("name", sa.String(_ID_MAX), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
)


# The public keys Carerix signs each application's deliveries with, as provisioning last saw them. The key seen
# last is current (``superseded_at`` NULL); a key replaced by another stays valid for a rotation window after
# ``superseded_at``, so deliveries signed just before a rotation are still accepted.
signing_keys = sa.Table(
    "carerix_signing_keys",
    metadata,
    sa.Column("application_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(_ID_MAX)),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("first_seen", _UTCDateTime, nullable=False),
    sa.Column("last_seen", _UTCDateTime, nullable=False),
    sa.Column("superseded_at", _UTCDateTime),
)


# The webhooks as the provisioning sync last listed them (before it acted), for the Carerix page: which webhook
# delivers what, and whether Carerix disabled it. Replaced per application on every sync.
webhooks = sa.Table(
    "carerix_webhooks",
    metadata,
    sa.Column("application_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("webhook_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("application_name", sa.String(_ID_MAX)),
    sa.Column("url", sa.Text),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("status", sa.String(_ID_MAX)),
    sa.Column("sync_action", sa.String(32)),
    sa.Column("seen_at", _UTCDateTime, nullable=False),
)
# What the Carerix page asks: events of one entity, and per-minute counts by type (index-only).
_page_indexes = [
    sa.Index("ix_carerix_events_entity_sequence", events.c.entity_id, events.c.sequence),
    sa.Index("ix_carerix_events_received_type", events.c.received_at, events.c.type),
]


consumers = sa.Table(
    "carerix_consumers",
    metadata,
    sa.Column("name", sa.String(_ID_MAX), primary_key=True),
    # The DAG that processes this consumer's events: a second DAG claiming the same name is an error.
    sa.Column("owner", sa.String(_ID_MAX)),
    # The lease: who may process right now, until when (renewed while processing, expires after a crash).
    sa.Column("holder", sa.String(_ID_MAX)),
    sa.Column("lease_until", _UTCDateTime),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
    # Added by migration step 5: the consumer's filter (JSON), so the Carerix page can count its lag.
    sa.Column("filter", sa.Text),
)


def _migration_1(conn: Connection) -> None:
    events.create(conn, checkfirst=True)
    for index in _events_indexes:
        index.create(conn, checkfirst=True)
    cursors.create(conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    """Signing keys per application; per event whether its signature was verified and whether it was recovered."""
    signing_keys.create(conn, checkfirst=True)
    # A store created by this version already has the columns (step 1 creates the table from ``events``).
    present = {column["name"] for column in sa.inspect(conn).get_columns(events.name)}
    if "signature_verified" not in present:
        conn.execute(sa.text(f"ALTER TABLE {events.name} ADD COLUMN signature_verified BOOLEAN"))
    if "recovered" not in present:
        conn.execute(
            sa.text(f"ALTER TABLE {events.name} ADD COLUMN recovered BOOLEAN NOT NULL DEFAULT FALSE")
        )


def _migration_3(conn: Connection) -> None:
    """The webhooks snapshot and the indexes of the Carerix page."""
    webhooks.create(conn, checkfirst=True)
    for index in _page_indexes:
        index.create(conn, checkfirst=True)


def _migration_4(conn: Connection) -> None:
    """Consumers: the owning DAG and the lease a claim holds while processing."""
    consumers.create(conn, checkfirst=True)


def _migration_5(conn: Connection) -> None:
    """Consumers remember their filter (for the lag the Carerix page shows)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(consumers.name)}
    if "filter" not in present:
        conn.execute(sa.text(f"ALTER TABLE {consumers.name} ADD COLUMN filter TEXT"))


# What retention removed: the horizon below which a delivery may be a replay of a purged event.
purges = sa.Table(
    "carerix_purges",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("purged_at", _UTCDateTime, nullable=False),
    # Rows received AND timed before this were deleted (the newest row excepted).
    sa.Column("horizon", _UTCDateTime, nullable=False),
    sa.Column("deleted", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,
)


def _migration_6(conn: Connection) -> None:
    """The purge log: its horizon refuses replays of purged events."""
    purges.create(conn, checkfirst=True)


# Which store this is: a random id made when the store was created (or upgraded to schema 7), shown by the
# receivers' /health, the Carerix page and the readers' start-up logs, so two components can be seen to share
# one store (or not) without comparing URLs that differ per machine.
store_info = sa.Table(
    "carerix_store_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("store_id", sa.String(64), nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
)

# Receivers that write to this store: each records a heartbeat (at start, then every minute). Readers warn when
# none is recent: a receiver that writes to another store leaves no heartbeat here.
receivers = sa.Table(
    "carerix_receivers",
    metadata,
    sa.Column("receiver_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("host", sa.String(_ID_MAX)),
    sa.Column("pid", sa.Integer),
    sa.Column("version", sa.String(64)),
    sa.Column("started_at", _UTCDateTime, nullable=False),
    sa.Column("last_seen", _UTCDateTime, nullable=False),
)


def _migration_7(conn: Connection) -> None:
    """The store's identity and the receivers' heartbeats."""
    store_info.create(conn, checkfirst=True)
    receivers.create(conn, checkfirst=True)
    if conn.execute(sa.select(store_info.c.id)).first() is None:
        conn.execute(store_info.insert().values(id=1, store_id=uuid.uuid4().hex, created_at=_utcnow()))


# Append steps, never edit shipped ones: version N means steps 1..N ran.
_MIGRATIONS = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
]
SCHEMA_VERSION = len(_MIGRATIONS)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _type_filter(patterns: Iterable[str]) -> sa.ColumnElement[bool] | None:
    """SQL for :mod:`~airflow_provider_carerix.definitions.event_types` patterns; stored types are lowercase."""
    exact: list[str] = []
    clauses: list[sa.ColumnElement[bool]] = []
    for pattern in patterns:
        entity, action = _types.parse_pattern(pattern)
        if entity == _types.ANY and action == _types.ANY:
            return None
        if action == _types.ANY:
            clauses.append(events.c.type.startswith(entity + ":", autoescape=True))
        elif entity == _types.ANY:
            clauses.append(events.c.type.endswith(":" + action, autoescape=True))
        else:
            exact.append(f"{entity}:{action}")
    if exact:
        clauses.append(events.c.type.in_(exact))
    if not clauses:
        return sa.false()
    return sa.or_(*clauses)


def _entity_id(event: EventPayload) -> str | None:
    value = event.data.entity_id if event.data is not None else None
    return None if value is None else str(value)


def _enable_wal(cur: Any) -> None:
    """WAL is persistent in the file; switching can hit SQLITE_BUSY without the busy handler, so retry."""
    import sqlite3
    import time

    for attempt in range(100):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)


# The part of an insert that runs one writer at a time, as ONE statement so the lock is held only while the server
# executes it (no client round trip, no commit, no fsync). Evaluation order is forced by data dependencies: the
# lock is taken before the first row is stamped (the stamp comes from it), every row is inserted before the
# announcement (it needs min(sequence)), and the unlock waits for the announcement (its key depends on it).
# The lock is session-level because it is released before the commit; an error path releases it explicitly.
_PG_INSERT_GROUP = sa.text(
    f"""
WITH locked AS MATERIALIZED (
    SELECT clock_timestamp() AS stamp FROM (SELECT pg_advisory_lock({_PG_INSERT_LOCK})) AS l
), ins AS (
    INSERT INTO carerix_events
        (event_id, type, time, tenant, application_id, webhook_id, entity_id, received_at, payload,
         signature_verified, recovered)
    SELECT g.event_id, g.type, g.time, g.tenant, g.application_id, g.webhook_id, g.entity_id, locked.stamp,
           g.payload, g.signature_verified, g.recovered
    FROM unnest(
        CAST(:event_id AS text[]), CAST(:type AS text[]), CAST(:time AS timestamptz[]),
        CAST(:tenant AS text[]), CAST(:application_id AS text[]), CAST(:webhook_id AS text[]),
        CAST(:entity_id AS text[]), CAST(:payload AS text[]), CAST(:signature_verified AS boolean[]),
        CAST(:recovered AS boolean[])
    ) WITH ORDINALITY AS g(
        event_id, type, time, tenant, application_id, webhook_id, entity_id, payload, signature_verified,
        recovered, n
    )
    CROSS JOIN locked
    ORDER BY g.n
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, sequence
), announced AS (
    SELECT count(*) AS n FROM (
        SELECT pg_advisory_xact_lock_shared(
            {_PG_IN_FLIGHT}, CAST(min(sequence) % {_IN_FLIGHT_MOD} AS integer)
        ) FROM ins HAVING count(*) > 0 AND CAST(:announce AS boolean)
    ) AS a
)
SELECT
    (SELECT json_agg(json_build_array(event_id, sequence)) FROM ins) AS inserted,
    pg_advisory_unlock({_PG_INSERT_LOCK} + 0 * (SELECT n FROM announced)) AS unlocked
"""
)
_PG_LAST_HANDED_OUT = sa.text(
    "SELECT pg_sequence_last_value(CAST(pg_get_serial_sequence('carerix_events', 'sequence') AS regclass))"
)
_PG_IN_FLIGHT_KEYS = sa.text(
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
    f"AND classid = {_PG_IN_FLIGHT} AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _known_sequences(
    conn: Connection, ids: Sequence[str], payloads: dict[str, str] | None = None
) -> dict[str, int]:
    """Sequences of the ids already stored; their stored bodies go to ``payloads`` when given."""
    known: dict[str, int] = {}
    columns = [events.c.event_id, events.c.sequence] + ([events.c.payload] if payloads is not None else [])
    for start in range(0, len(ids), 500):
        found = conn.execute(sa.select(*columns).where(events.c.event_id.in_(ids[start : start + 500])))
        for row in found:
            known[row.event_id] = int(row.sequence)
            if payloads is not None:
                payloads[row.event_id] = row.payload
    return known


def _plan_group(
    items: Sequence[_Item], known: dict[str, int], known_payloads: dict[str, str] | None = None
) -> tuple[list[tuple[int, bool]], list[dict[str, Any]], list[int], list[tuple[int, int]]]:
    """Results so far, new rows (without received_at), result slot of each row, (repeat, first) slots."""
    results: list[tuple[int, bool]] = []
    rows: list[dict[str, Any]] = []
    slots: list[int] = []  # index into results of each new row, in insertion order
    pending: dict[str, int] = {}  # event id -> result index of its first occurrence in this group
    repeats: list[tuple[int, int]] = []  # (result index, result index of the first occurrence)
    first_raw: dict[str, bytes | str] = {}
    for item in items:
        raw, event = item[0], item[1]
        provenance = item[2] if len(item) > 2 else _DELIVERED  # type: ignore[misc]
        if event.id in known:
            if known_payloads is not None and event.id in known_payloads:
                _warn_if_body_differs(event.id, known_payloads[event.id], raw)
            results.append((known[event.id], False))
            continue
        if event.id in pending:
            _warn_if_body_differs(event.id, first_raw[event.id], raw)
            repeats.append((len(results), pending[event.id]))
            results.append((0, False))  # sequence filled in after the insert
            continue
        pending[event.id] = len(results)
        first_raw[event.id] = raw
        slots.append(len(results))
        results.append((0, True))
        rows.append(
            {
                "event_id": event.id,
                "type": event.type.lower(),
                "time": event.time,
                "tenant": event.tenant,
                "application_id": event.application_id,
                "webhook_id": event.webhook_id,
                "entity_id": _entity_id(event),
                "payload": raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw,
                "signature_verified": provenance.signature_verified,
                "recovered": provenance.recovered,
            }
        )
    return results, rows, slots, repeats


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _purged_replay(event: EventPayload, horizon: datetime) -> EventRejected:
    return EventRejected(
        f"time is before the store's purge horizon {horizon.isoformat()}: a replay of a purged event is not "
        "stored again",
        event.id,
        "time",
    )


def _with_refused(
    results: Sequence[tuple[int, bool]], refused: dict[int, EventRejected], count: int
) -> list[tuple[int, bool] | EventRejected]:
    """The results of the items kept, with the refused ones put back in their places."""
    if not refused:
        return list(results)
    done = iter(results)
    return [refused[i] if i in refused else next(done) for i in range(count)]


# The columns an insert writes, in the order of the SQLite fast path's parameters (``EventStore._insert_sqlite``).
_COLUMNS = (
    "event_id",
    "type",
    "time",
    "tenant",
    "application_id",
    "webhook_id",
    "entity_id",
    "received_at",
    "payload",
    "signature_verified",
    "recovered",
)
_SQLITE_COLUMNS = ", ".join(_COLUMNS)
_SQLITE_ROW = "(" + ",".join("?" * len(_COLUMNS)) + ")"


def _release_insert_lock(conn: Connection) -> None:
    """After a failed insert: the session-level lock outlives the rollback, so release it or drop the session."""
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        conn.rollback()
    except Exception:
        conn.invalidate()  # closing the session releases every lock it held


def _pg_connect_args(url: URL) -> dict[str, Any]:
    """``PG_SESSION_SETTINGS`` as libpq startup options, followed by any ``options`` given in the URL."""
    given = url.query.get("options")
    if isinstance(given, tuple):
        given = " ".join(given)
    ours = " ".join(f"-c {name}={value}" for name, value in PG_SESSION_SETTINGS.items())
    return {"options": f"{ours} {given}" if given else ours}


def _retry_on_disconnect(method: _F) -> _F:
    """Run once more when the failure was a dropped connection (e.g. PostgreSQL restarted since last use).

    Safe for inserts too: a group whose COMMIT was lost in flight is either absent (inserted now) or present
    (found by event id and reported as a duplicate), never stored twice. A failure a fresh connection may
    cure (read-only, I/O error) empties the pool, so the store recovers by itself once the cause is fixed.
    """

    @functools.wraps(method)
    def wrapper(self: EventStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, DBAPIError) and cause.connection_invalidated:
                return method(self, *args, **kwargs)
            if exc.cause in _REOPEN_CAUSES:
                self._reopen(exc.cause)
            raise

    return wrapper  # type: ignore[return-value]


def _unique_violation(orig: BaseException | None) -> bool:
    """Whether the database refused a row for a unique key (a concurrent writer's), by error code.

    psycopg carries the SQLSTATE (23505, unique_violation); sqlite3 the extended result code from Python
    3.11 on. Python 3.10's sqlite3 has no code, only the message, which SQLite has worded the same since 3.8.
    """
    if getattr(orig, "sqlstate", None) == "23505":
        return True
    code = getattr(orig, "sqlite_errorname", None)
    if code is not None:
        return code in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
    return isinstance(orig, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(orig)


def _stored_event(row: Any) -> StoredEvent:
    """One row of the events table as the readers see it."""
    return StoredEvent(
        sequence=row.sequence,
        event_id=row.event_id,
        type=row.type,
        time=row.time,
        tenant=row.tenant,
        application_id=row.application_id,
        webhook_id=row.webhook_id,
        entity_id=row.entity_id,
        received_at=row.received_at,
        payload=json.loads(row.payload),
        raw=row.payload,
        signature_verified=row.signature_verified,
        recovered=bool(row.recovered),
    )


class EventStore:
    """Thread-safe handle on the store; the schema is created or migrated on first use, not at construction.

    Lazy so that a receiver starts (and answers 503, which makes Carerix retry) while its database is down.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_store_url(url)
        parsed: URL = make_url(self.url)
        self.dialect: str = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported event store backend {self.dialect!r}: use sqlite or postgresql")
        self._engine = self._create_engine(parsed)
        # Tests switch this off to show that readers then skip events (the protection is not vacuous).
        self._pg_announce_in_flight = True
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._file_identity: tuple[int, int] | None = None
        self._encoders: dict[str, Callable[[Any], Any]] | None = None

    def __repr__(self) -> str:
        return f"EventStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- engine ---------------------------------------------------------------------------------------------

    def _create_engine(self, url: URL) -> Engine:
        if self.dialect == "sqlite":
            database = url.database or ""
            memory = database in ("", ":memory:") or database.startswith("file::memory:")
            kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
            if memory:
                kwargs["poolclass"] = sa.pool.StaticPool
            # hide_parameters: errors must never carry the payload (personal data) into a log.
            engine = sa.create_engine(url, hide_parameters=True, **kwargs)

            @sa_event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is possible.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                if not memory:
                    # A new, empty file only (before WAL and the first table; elsewhere the pragma may need
                    # the write lock): lets purge hand freed pages back to the file system in small steps.
                    if cur.execute("PRAGMA page_count").fetchone()[0] == 0:
                        cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    _enable_wal(cur)
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

            @sa_event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # Writers take the write lock up front: a deferred transaction that later upgrades can fail
                # with SQLITE_BUSY without waiting for busy_timeout.
                write = conn.get_execution_options().get("carerix_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        # No pool_pre_ping: it costs a round trip per checkout on the hot path. A connection that died (server
        # restart) fails its statement instead; the pool is invalidated and ``_retry_on_disconnect`` tries once
        # more on a fresh connection.
        # READ COMMITTED whatever the server default: readers rely on each statement taking a fresh snapshot.
        return sa.create_engine(
            url,
            pool_size=5,
            max_overflow=10,
            pool_recycle=1800,
            connect_args=_pg_connect_args(url),
            isolation_level="READ COMMITTED",
            hide_parameters=True,
        )

    def _prepare_sqlite_dir(self) -> None:
        database = make_url(self.url).database
        if (
            self.dialect == "sqlite"
            and database
            and database != ":memory:"
            and not database.startswith("file:")
        ):
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the directory of the event store: {exc}", unavailable_cause(exc)
                ) from exc

    def _write(self) -> Any:
        """A transaction that holds the write lock for its whole duration (see module docstring)."""
        return self._engine.execution_options(carerix_write=True).begin()

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._prepare_sqlite_dir()
            if self._schema_current():
                self._file_identity = self._stat_file()
                self._schema_ready = True
                return
            with self._guard(), self._write() as conn:
                if self.dialect == "postgresql":
                    # A migration may rewrite a large table: not bounded like the hot path. Receivers and
                    # triggers starting together wait for the first one's migration rather than fail after
                    # lock_timeout (a stalled migrator is still cut off by idle_in_transaction_session_timeout).
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
                    # Several receivers may start at once against one fresh database.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
                schema_version.create(conn, checkfirst=True)
                current = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
                if current is None:
                    conn.execute(schema_version.insert().values(id=1, version=0))
                    current = 0
                if current > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"event store schema version {current} is newer than this provider understands "
                        f"({SCHEMA_VERSION}); upgrade airflow-provider-carerix"
                    )
                for step in range(current, SCHEMA_VERSION):
                    log.info("Migrating the Carerix event store to schema version %d", step + 1)
                    _MIGRATIONS[step](conn)
                    conn.execute(schema_version.update().values(version=step + 1))
            self._file_identity = self._stat_file()
            self._schema_ready = True

    def _schema_current(self) -> bool:
        """A read, no lock: an up-to-date store is ready without waiting for the writers' lock (which a
        busy or stuck writer may hold; /health must then answer 503 quickly, not wait for it)."""
        with self._guard(), self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(schema_version.name):
                return False
            current = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
        return current == SCHEMA_VERSION

    class _guard:
        """Connection problems and lock timeouts become ``StoreUnavailable``; programming errors stay loud."""

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
            if exc is None:
                return False
            if isinstance(exc, sqlite3.Error):
                # The SQLite fast path talks to sqlite3 itself: its errors mean what SQLAlchemy's wrappers do.
                if isinstance(exc, sqlite3.IntegrityError):
                    if _unique_violation(exc):
                        raise StoreUnavailable(f"event store busy: {type(exc).__name__}") from None
                    raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
                if isinstance(exc, sqlite3.DataError):
                    raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
                if isinstance(exc, sqlite3.ProgrammingError):
                    return False  # a bug: stays loud
                raise _unavailable(exc) from exc
            if isinstance(exc, OperationalError) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            ):
                raise _unavailable(exc.orig) from exc
            if isinstance(exc, (OSError, sa.exc.InterfaceError)):
                raise _unavailable(exc) from exc
            # A unique key taken by a concurrent writer is a race, not the event's fault: retrying stores it
            # (or finds it as a duplicate), so it must be a 503 for Carerix, never a 4xx that drops the event.
            if isinstance(exc, sa.exc.IntegrityError) and _unique_violation(exc.orig):
                raise StoreUnavailable(f"event store busy: {type(exc.orig).__name__}") from None
            # The values themselves: a constraint or type the database refuses, or a value the driver cannot
            # bind. ``from None``: the database's own message may quote the row (personal data).
            if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
                raise EventRejected(f"event store refused the event: {type(exc.orig).__name__}") from None
            if isinstance(exc, sa.exc.StatementError) and isinstance(
                exc.orig, (ValueError, OverflowError, TypeError)
            ):
                raise EventRejected(f"event store refused the event: {type(exc.orig).__name__}") from None
            return False

    # -- writes ---------------------------------------------------------------------------------------------

    def insert(
        self, raw: bytes | str, event: EventPayload, provenance: Provenance | None = None
    ) -> tuple[int, bool]:
        """Store one delivery; returns (sequence, newly inserted). Committed and durable on return."""
        return self.insert_many([(raw, event, provenance or _DELIVERED)])[0]

    @_retry_on_disconnect
    def insert_many(
        self,
        items: Sequence[tuple[bytes | str, EventPayload] | tuple[bytes | str, EventPayload, Provenance]],
    ) -> list[tuple[int, bool]]:
        """Store a group of deliveries in one transaction (one fsync); results in the order given.

        A duplicate event id, already stored or earlier in the same group, returns the sequence of the row
        that holds it and ``False``. An item may carry a :class:`Provenance` as third element.
        """
        if not items:
            return []
        self._ensure_schema()
        self._check_file_identity()
        if self.dialect == "postgresql":
            return self._insert_many_pg(items, refuse_purged=False)  # type: ignore[return-value]
        return self._insert_sqlite(items, refuse_purged=False)  # type: ignore[return-value]

    @_retry_on_disconnect
    def insert_deliveries(self, items: Sequence[_Item]) -> list[tuple[int, bool] | EventRejected]:
        """``insert_many`` for what a receiver was sent: an event timed before the purge horizon whose id is not
        stored is refused (an :class:`EventRejected` in its place) rather than stored, since it may be a replay
        of a purged event (see :meth:`purge`). The horizon is read inside the insert's own transaction."""
        if not items:
            return []
        self._ensure_schema()
        self._check_file_identity()
        if self.dialect == "postgresql":
            return self._insert_many_pg(items, refuse_purged=True)
        return self._insert_sqlite(items, refuse_purged=True)

    def _insert_sqlite(
        self, items: Sequence[_Item], *, refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        """One ``BEGIN IMMEDIATE`` transaction on the pooled ``sqlite3`` connection itself.

        The receiver's hot path: SQLAlchemy's per-statement work (compiling, events, result processing) held
        the GIL the receiver's event loop needs for about a millisecond per group; here the same SQL runs with
        SQLAlchemy's own encodings of the values (its bind processors), so the rows are the rows it writes.
        """
        with self._guard():
            pooled = self._engine.raw_connection()
            try:
                db = pooled.driver_connection
                assert db is not None
                db.execute("BEGIN IMMEDIATE")  # the write lock: writers on this file are serialised
                try:
                    results = self._sqlite_group(db, items, refuse_purged)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            finally:
                pooled.close()
        # Committed, but to the file this store opened: if that is no longer the file at the path, the rows
        # live in an orphan and would vanish on restart. Not acknowledged, so Carerix delivers them again.
        self._check_file_identity()
        return results

    def _sqlite_group(
        self, db: sqlite3.Connection, items: Sequence[_Item], refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        encode = self._sqlite_encoders()
        # Stamped once the write lock is held, so received_at follows commit (and sequence) order.
        received_at = _utcnow()
        ids = list(dict.fromkeys(item[1].id for item in items))
        known: dict[str, int] = {}
        payloads: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT event_id, sequence, payload FROM {events.name} WHERE event_id IN ({marks})"
            for event_id, sequence, payload in db.execute(sql, chunk):
                known[event_id] = int(sequence)
                payloads[event_id] = payload
        refused: dict[int, EventRejected] = {}
        if refuse_purged:
            stamp = db.execute(f"SELECT max(horizon) FROM {purges.name}").fetchone()[0]
            horizon = None if stamp is None else self._sqlite_horizon(stamp)
            if horizon is not None:
                for i, item in enumerate(items):
                    if item[1].id not in known and _aware(item[1].time) < horizon:
                        refused[i] = _purged_replay(item[1], horizon)
        keep = [item for i, item in enumerate(items) if i not in refused] if refused else items
        results, rows, slots, repeats = _plan_group(keep, known, payloads)
        inserted: dict[str, int] = {}
        for start in range(0, len(rows), 500):
            chunk_rows = rows[start : start + 500]
            values = ",".join([_SQLITE_ROW] * len(chunk_rows))
            params: list[Any] = []
            for row in chunk_rows:
                row["received_at"] = received_at
                params.extend(encode[name](row[name]) if name in encode else row[name] for name in _COLUMNS)
            sql = (
                f"INSERT INTO {events.name} ({_SQLITE_COLUMNS}) VALUES {values} RETURNING event_id, sequence"
            )
            try:
                found = db.execute(sql, params).fetchall()
            except (ValueError, OverflowError, TypeError) as exc:
                # A value the driver cannot bind (the message may quote it: type only).
                raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
            inserted.update((event_id, int(sequence)) for event_id, sequence in found)
        for slot, row in zip(slots, rows, strict=True):
            results[slot] = (inserted[row["event_id"]], True)
        for index, first in repeats:
            results[index] = (results[first][0], False)
        return _with_refused(results, refused, len(items))

    def _sqlite_encoders(self) -> dict[str, Callable[[Any], Any]]:
        """SQLAlchemy's bind processors of the columns that have one (times as text, booleans as 0/1)."""
        if self._encoders is None:
            dialect = self._engine.dialect
            encoders = {}
            for column in events.c:
                processor = column.type.dialect_impl(dialect).bind_processor(dialect)
                if processor is not None:
                    encoders[column.name] = processor
            self._encoders = encoders
        return self._encoders

    def _sqlite_horizon(self, stamp: Any) -> datetime | None:
        dialect = self._engine.dialect
        decode = purges.c.horizon.type.dialect_impl(dialect).result_processor(dialect, None)
        value = decode(stamp) if decode is not None else stamp
        return None if value is None else _aware(value)

    def _insert_many_pg(
        self, items: Sequence[_Item], *, refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        """Hand out sequences one writer at a time, commit (and fsync) concurrently; module docstring."""
        ids = list(dict.fromkeys(item[1].id for item in items))
        refused: dict[int, EventRejected] = {}
        with self._guard(), self._engine.connect() as conn:
            try:
                with conn.begin():
                    # Before the lock: a plain read. An id stored by a writer still in flight is not seen here
                    # and is caught by ON CONFLICT below.
                    payloads: dict[str, str] = {}
                    known = _known_sequences(conn, ids, payloads)
                    if refuse_purged:
                        horizon = conn.execute(sa.select(sa.func.max(purges.c.horizon))).scalar()
                        if horizon is not None:
                            horizon = _aware(horizon)
                            for i, item in enumerate(items):
                                if item[1].id not in known and _aware(item[1].time) < horizon:
                                    refused[i] = _purged_replay(item[1], horizon)
                    keep = [item for i, item in enumerate(items) if i not in refused] if refused else items
                    results, rows, slots, repeats = _plan_group(keep, known, payloads)
                    if not rows:
                        return _with_refused(results, refused, len(items))
                    # received_at is the database clock under the lock: it follows sequence order fleet-wide.
                    params: dict[str, Any] = {name: [row[name] for row in rows] for name in rows[0]}
                    params["time"] = [_aware(t) for t in params["time"]]
                    params["announce"] = self._pg_announce_in_flight
                    found = conn.execute(_PG_INSERT_GROUP, params).one()
                    inserted = {event_id: int(sequence) for event_id, sequence in found.inserted or []}
                    # Stored meanwhile by another writer (committed by now: ON CONFLICT waited for it).
                    late = [row["event_id"] for row in rows if row["event_id"] not in inserted]
                    stored_by_others = _known_sequences(conn, late) if late else {}
                    for slot, row in zip(slots, rows, strict=True):
                        event_id = row["event_id"]
                        if event_id in inserted:
                            results[slot] = (inserted[event_id], True)
                        else:
                            results[slot] = (stored_by_others[event_id], False)
                    for index, first in repeats:
                        results[index] = (results[first][0], False)
                    if inserted:
                        # Inside the transaction: listeners wake exactly when the rows become visible.
                        conn.execute(
                            sa.text(
                                "SELECT pg_notify(:channel, s::text) FROM unnest(CAST(:seqs AS bigint[])) AS s"
                            ),
                            {"channel": NOTIFY_CHANNEL, "seqs": sorted(inserted.values())},
                        )
            except BaseException:
                _release_insert_lock(conn)
                raise
        return _with_refused(results, refused, len(items))

    def _pg_read_bound(self, conn: Connection) -> int:
        """The highest sequence readers may be shown now: below every insert that is still in flight.

        Read in this order, each by its own statement, before the caller's query takes its snapshot: the last
        sequence handed out (H), then the announced first sequences of inserts in flight. Any sequence <= H
        belongs to an insert that has committed or rolled back (settled in the caller's later snapshot), that
        is announced (everything from its first sequence on is held back), or that holds the insert lock
        right now (then no sequence above its own exists yet).
        """
        handed_out = conn.execute(_PG_LAST_HANDED_OUT).scalar()
        if handed_out is None:
            return 0
        bound = int(handed_out)
        for (key,) in conn.execute(_PG_IN_FLIGHT_KEYS):
            first = bound - ((bound - int(key)) % _IN_FLIGHT_MOD)  # in-flight sequences are recent
            bound = min(bound, first - 1)
        return bound

    @_retry_on_disconnect
    def advance_cursor(self, name: str, sequence: int) -> int:
        """Move a consumer's cursor forward (never backwards); returns the cursor's value afterwards."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            return int(conn.execute(self._advance_stmt(name, sequence)).scalar_one())

    def _upsert(self, table: sa.Table) -> Any:
        """An INSERT that can say ``ON CONFLICT DO UPDATE``: both dialects have one, SQLAlchemy's core has not."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _advance_stmt(self, name: str, sequence: int) -> Any:
        now = _utcnow()
        stmt = self._upsert(cursors).values(name=name, sequence=int(sequence), updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[cursors.c.name],
            set_={
                "sequence": sa.case(
                    (stmt.excluded.sequence > cursors.c.sequence, stmt.excluded.sequence),
                    else_=cursors.c.sequence,
                ),
                "updated_at": now,
            },
        ).returning(cursors.c.sequence)
        return stmt

    # -- consumer leases --------------------------------------------------------------------------------------
    #
    # A consumer (one DAG's processing of its events) is drained by one task at a time: the task takes the
    # lease, reads from the processed cursor, and commits the new cursor and releases the lease in one
    # transaction that first checks it still holds the lease. Concurrent runs wait; a crashed holder's lease
    # expires. SQLite serialises the write transactions (BEGIN IMMEDIATE); PostgreSQL locks the row.

    def _lease_now(self, conn: Connection) -> datetime:
        """One clock for every holder of a lease: the database's on PostgreSQL (workers on several machines)."""
        if self.dialect == "postgresql":
            return conn.execute(sa.select(sa.func.now())).scalar_one().astimezone(timezone.utc)
        return _utcnow()

    def _lock_consumer(self, conn: Connection, name: str) -> Any:
        stmt = sa.select(consumers).where(consumers.c.name == name)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    @_retry_on_disconnect
    def acquire_lease(self, name: str, *, owner: str | None, holder: str, ttl: float) -> Lease:
        """Take (or renew) the lease of consumer ``name`` for ``holder``; ``ConsumerOwned`` for another DAG."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            until = now + timedelta(seconds=ttl)
            if self.dialect == "postgresql":
                # Two first claims of a new name must not both insert.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(name.encode()))))
            row = self._lock_consumer(conn, name)
            if row is None:
                conn.execute(
                    consumers.insert().values(
                        name=name, owner=owner, holder=holder, lease_until=until, updated_at=now
                    )
                )
                return Lease(True, holder, until)
            if owner is not None and row.owner is not None and row.owner != owner:
                raise ConsumerOwned(name, row.owner, owner)
            if row.holder not in (None, holder) and row.lease_until is not None and row.lease_until > now:
                return Lease(False, row.holder, row.lease_until)
            conn.execute(
                consumers.update()
                .where(consumers.c.name == name)
                .values(owner=row.owner or owner, holder=holder, lease_until=until, updated_at=now)
            )
            return Lease(True, holder, until)

    @_retry_on_disconnect
    def describe_consumer(self, name: str, filter_json: str) -> None:
        """Record which events a consumer takes (JSON of its filter), for people looking at its lag."""
        self._ensure_schema()
        # One upsert: two runs claiming a new consumer at once must not both try to insert its row.
        stmt = self._upsert(consumers).values(name=name, filter=filter_json, updated_at=_utcnow())
        stmt = stmt.on_conflict_do_update(index_elements=[consumers.c.name], set_={"filter": filter_json})
        with self._guard(), self._write() as conn:
            conn.execute(stmt)

    @_retry_on_disconnect
    def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend a held lease; ``False`` if ``holder`` lost it (expired and taken by someone else)."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            result = conn.execute(
                consumers.update()
                .where(consumers.c.name == name, consumers.c.holder == holder)
                .values(lease_until=now + timedelta(seconds=ttl), updated_at=now)
            )
            return bool(result.rowcount)

    @_retry_on_disconnect
    def release_lease(self, name: str, holder: str, *, cursor: str | None = None, sequence: int = 0) -> bool:
        """Advance ``cursor`` to ``sequence`` (if given) and release, atomically, only while still holding.

        ``False`` (and nothing written) when the lease was lost: someone else may be processing the same
        events, so the caller must not report them as processed.
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            row = self._lock_consumer(conn, name)
            if row is None or row.holder != holder:
                return False
            if cursor is not None:
                conn.execute(self._advance_stmt(cursor, sequence))
            conn.execute(
                consumers.update()
                .where(consumers.c.name == name)
                .values(holder=None, lease_until=None, updated_at=now)
            )
            return True

    @_retry_on_disconnect
    def event_by_id(self, event_id: str) -> StoredEvent | None:
        """The stored event with this Carerix event id, or ``None``."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(sa.select(events).where(events.c.event_id == event_id)).first()
        if row is None:
            return None
        return _stored_event(row)

    @_retry_on_disconnect
    def consumer_owner(self, name: str) -> str | None:
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            return conn.execute(sa.select(consumers.c.owner).where(consumers.c.name == name)).scalar()

    @_retry_on_disconnect
    def purge(self, older_than: timedelta, *, batch_size: int = 2000, vacuum: bool = False) -> int:
        """Delete events received and timed before now - older_than; returns how many.

        * In batches of ``batch_size`` rows, each its own short transaction, so receivers keep committing
          between batches instead of stalling behind one long delete.
        * The newest event is always kept, so ``last_sequence()`` never goes backwards for a consumer that
          starts "from now".
        * The cutoff is recorded as the purge horizon (:meth:`purge_horizon`): a delivery timed before it
          whose id is not stored may be a replay of a purged event and is refused by the receiver. Rows are
          deleted only when both their receipt and their own ``time`` are before the cutoff, so every purged
          event is below the horizon whatever the clock skew between Carerix and this machine.
        * SQLite: freed pages are returned to the file system (incremental vacuum, in small steps). A store
          created before incremental vacuum existed needs one full ``VACUUM`` (``vacuum=True``), which locks
          the file for its duration.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._ensure_schema()
        self._check_file_identity()
        try:
            cutoff = _utcnow() - older_than
        except OverflowError:
            raise ValueError(
                f"retention {older_than} reaches before year 1: nothing could be purged"
            ) from None
        deleted = 0
        while True:
            with self._guard(), self._write() as conn:
                newest = conn.execute(sa.select(sa.func.max(events.c.sequence))).scalar()
                if newest is None:
                    break
                batch = (
                    sa.select(events.c.sequence)
                    .where(events.c.received_at < cutoff, events.c.time < cutoff, events.c.sequence < newest)
                    .order_by(events.c.sequence)
                    .limit(batch_size)
                    .scalar_subquery()
                )
                count = int(conn.execute(events.delete().where(events.c.sequence.in_(batch))).rowcount or 0)
                if deleted == 0:
                    conn.execute(purges.insert().values(purged_at=_utcnow(), horizon=cutoff, deleted=0))
                deleted += count
                if count < batch_size:
                    conn.execute(
                        purges.update()
                        .where(purges.c.id == sa.select(sa.func.max(purges.c.id)).scalar_subquery())
                        .values(deleted=deleted)
                    )
                    break
        if self.dialect == "sqlite":
            self._reclaim_sqlite_space(full=vacuum)
        return deleted

    def _reclaim_sqlite_space(self, *, full: bool) -> None:
        """Give freed pages back: small incremental steps (each a short write), or one full VACUUM."""
        with self._guard(), self._engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            mode = raw.execute("PRAGMA auto_vacuum").fetchone()[0]
            if full or mode != 2:
                if not full:
                    if raw.execute("PRAGMA freelist_count").fetchone()[0]:
                        log.warning(
                            "The Carerix event store keeps its freed space (created before incremental "
                            "vacuum): run `carerix-receiver purge --vacuum` once in a quiet moment"
                        )
                    return
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                raw.execute("VACUUM")
            else:
                while raw.execute("PRAGMA freelist_count").fetchone()[0]:
                    raw.execute("PRAGMA incremental_vacuum(512)").fetchall()
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @_retry_on_disconnect
    def stored_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids are stored."""
        self._ensure_schema()
        found: set[str] = set()
        with self._guard(), self._engine.connect() as conn:
            for start in range(0, len(event_ids), 500):
                chunk = list(event_ids[start : start + 500])
                found.update(
                    conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(chunk))).scalars()
                )
        return found

    @_retry_on_disconnect
    def purge_horizon(self) -> datetime | None:
        """Events timed before this were purged (None: never purged); one indexed read."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            horizon = conn.execute(sa.select(sa.func.max(purges.c.horizon))).scalar()
        if horizon is not None and horizon.tzinfo is None:
            horizon = horizon.replace(tzinfo=timezone.utc)
        return horizon

    # -- reads ----------------------------------------------------------------------------------------------

    @_retry_on_disconnect
    def events_after(
        self,
        sequence: int,
        *,
        event_types: Iterable[str] | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        received_after: datetime | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events with a sequence above ``sequence`` matching every given filter, oldest first."""
        self._ensure_schema()
        stmt = sa.select(events).where(events.c.sequence > int(sequence))
        if event_types is not None:
            if isinstance(event_types, str):
                event_types = [event_types]
            clause = _type_filter(event_types)
            if clause is not None:
                stmt = stmt.where(clause)
        if webhook_id is not None:
            stmt = stmt.where(events.c.webhook_id == webhook_id)
        if application_id is not None:
            stmt = stmt.where(events.c.application_id == application_id)
        if tenant is not None:
            stmt = stmt.where(events.c.tenant == tenant)
        if received_after is not None:
            stmt = stmt.where(events.c.received_at > received_after)
        stmt = stmt.order_by(events.c.sequence).limit(int(limit))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            rows = conn.execute(stmt).all()
        return [_stored_event(row) for row in rows]

    @_retry_on_disconnect
    def last_sequence(self) -> int:
        """The highest stored sequence (0 for an empty store): where a consumer "from now" starts."""
        self._ensure_schema()
        stmt = sa.select(sa.func.max(events.c.sequence))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                # Not past an insert in flight: a consumer starting here would never see it.
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            return int(conn.execute(stmt).scalar() or 0)

    @_retry_on_disconnect
    def last_sequence_before(self, when: datetime) -> int:
        """The highest sequence received before ``when`` (0 if none): where a consumer "from a time" starts.

        ``received_at`` follows sequence order, so every event after the answer was received at or after
        ``when``. On PostgreSQL never past an insert in flight, as :meth:`last_sequence`.
        """
        self._ensure_schema()
        stmt = sa.select(sa.func.max(events.c.sequence)).where(events.c.received_at < _aware(when))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            return int(conn.execute(stmt).scalar() or 0)

    @_retry_on_disconnect
    def get_cursor(self, name: str) -> int:
        """A consumer's last acknowledged sequence; 0 when the consumer is unknown."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            value = conn.execute(sa.select(cursors.c.sequence).where(cursors.c.name == name)).scalar()
        return int(value or 0)

    # -- signing keys ---------------------------------------------------------------------------------------

    @_retry_on_disconnect
    def record_signing_key(self, application_id: str, public_key: str, algorithm: str | None = None) -> bool:
        """Remember the key an application's deliveries are signed with now; True when it was not known yet.

        The key recorded last is the application's current one; any other key of the application becomes
        superseded now (and stays valid for the rotation window the reader asks for).
        """
        self._ensure_schema()
        fingerprint = key_fingerprint(public_key)
        now = _utcnow()
        with self._guard(), self._write() as conn:
            existing = conn.execute(
                sa.select(signing_keys.c.fingerprint).where(
                    signing_keys.c.application_id == application_id, signing_keys.c.fingerprint == fingerprint
                )
            ).scalar()
            conn.execute(
                signing_keys.update()
                .where(
                    signing_keys.c.application_id == application_id,
                    signing_keys.c.fingerprint != fingerprint,
                    signing_keys.c.superseded_at.is_(None),
                )
                .values(superseded_at=now)
            )
            if existing is None:
                conn.execute(
                    signing_keys.insert().values(
                        application_id=application_id,
                        fingerprint=fingerprint,
                        algorithm=algorithm,
                        public_key=public_key.strip() + "\n",
                        first_seen=now,
                        last_seen=now,
                        superseded_at=None,
                    )
                )
            else:
                conn.execute(
                    signing_keys.update()
                    .where(
                        signing_keys.c.application_id == application_id,
                        signing_keys.c.fingerprint == fingerprint,
                    )
                    .values(last_seen=now, superseded_at=None, algorithm=algorithm)
                )
        return existing is None

    @_retry_on_disconnect
    def signing_keys(self, application_id: str, *, rotation_window: timedelta) -> list[str]:
        """PEM public keys valid for the application now: the current one, then those superseded less than
        ``rotation_window`` ago (newest first). Empty when provisioning never recorded a key for it."""
        self._ensure_schema()
        cutoff = _utcnow() - rotation_window
        stmt = (
            sa.select(signing_keys.c.public_key)
            .where(
                signing_keys.c.application_id == application_id,
                sa.or_(signing_keys.c.superseded_at.is_(None), signing_keys.c.superseded_at > cutoff),
            )
            .order_by(signing_keys.c.superseded_at.is_not(None), signing_keys.c.last_seen.desc())
        )
        with self._guard(), self._engine.connect() as conn:
            return [row.public_key for row in conn.execute(stmt)]

    @_retry_on_disconnect
    def has_signing_keys(self) -> bool:
        """Whether provisioning ever recorded a signing key here (then receivers require signatures)."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            return conn.execute(sa.select(signing_keys.c.application_id).limit(1)).first() is not None

    @_retry_on_disconnect
    def record_webhooks(self, application_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace what is known of one application's webhooks with ``rows`` (one transaction).

        Each row: ``webhook_id``, ``application_name``, ``url``, ``filters`` (list of dicts), ``status``,
        ``sync_action``. Header values are never passed here: the snapshot is shown to people.
        """
        self._ensure_schema()
        now = _utcnow()
        values = [
            {
                "application_id": application_id,
                "webhook_id": str(row["webhook_id"]),
                "application_name": row.get("application_name"),
                "url": row.get("url"),
                "filters": json.dumps(row.get("filters") or [], separators=(",", ":")),
                "status": row.get("status"),
                "sync_action": row.get("sync_action"),
                "seen_at": now,
            }
            for row in rows
        ]
        with self._guard(), self._write() as conn:
            conn.execute(webhooks.delete().where(webhooks.c.application_id == application_id))
            if values:
                conn.execute(webhooks.insert(), values)

    # -- identity and receivers' heartbeats ------------------------------------------------------------------

    @_retry_on_disconnect
    def identity(self) -> StoreIdentity:
        """This store's random id (the same for every component that shares it) and its URL, password hidden."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(sa.select(store_info.c.store_id, store_info.c.created_at)).first()
        if row is None:  # created between two schema checks: cannot happen after migration 7, be safe
            raise StoreUnavailable("event store has no identity row yet")
        return StoreIdentity(row.store_id, row.created_at, settings.StoreLocation(self.url, "").display)

    @_retry_on_disconnect
    def record_heartbeat(
        self,
        receiver_id: str,
        *,
        kind: str,
        host: str | None,
        pid: int | None,
        version: str | None,
        started_at: datetime,
        keep: timedelta = timedelta(days=7),
    ) -> None:
        """Record that a receiver writing to this store is alive; drop receivers not seen for ``keep``."""
        self._ensure_schema()
        now = _utcnow()
        values = {
            "receiver_id": receiver_id[:_ID_MAX],
            "kind": kind[:64],
            "host": (host or "")[:_ID_MAX] or None,
            "pid": pid,
            "version": version,
            "started_at": started_at,
            "last_seen": now,
        }
        with self._guard(), self._write() as conn:
            stmt = self._upsert(receivers).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[receivers.c.receiver_id],
                    set_={
                        k: stmt.excluded[k]
                        for k in ("kind", "host", "pid", "version", "started_at", "last_seen")
                    },
                )
            )
            conn.execute(receivers.delete().where(receivers.c.last_seen < now - keep))

    @_retry_on_disconnect
    def receivers_seen(self, within: timedelta | None = None) -> list[ReceiverSeen]:
        """Receivers with a heartbeat (in the last ``within``), most recent first."""
        self._ensure_schema()
        query = sa.select(receivers).order_by(receivers.c.last_seen.desc())
        if within is not None:
            query = query.where(receivers.c.last_seen >= _utcnow() - within)
        with self._guard(), self._engine.connect() as conn:
            return [
                ReceiverSeen(r.receiver_id, r.kind, r.host, r.pid, r.version, r.started_at, r.last_seen)
                for r in conn.execute(query)
            ]

    @_retry_on_disconnect
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers a query (and its schema is in place)."""
        try:
            self._ensure_schema()
            self._check_file_identity()
            with self._guard(), self._engine.connect() as conn:
                conn.execute(sa.select(events.c.sequence).limit(1)).all()
        except StoreUnavailable:
            raise
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    @property
    def engine(self) -> Engine:
        """For read-only views that need their own queries (the UI page); writers use the methods above."""
        return self._engine

    @_retry_on_disconnect
    def probe_write(self, timeout: float = 1.0) -> None:
        """Raise ``StoreUnavailable`` (with its cause) unless a write reaches the disk now: one real, tiny commit.

        Takes the same write lock an insert takes (waiting at most ``timeout``), adds and removes a row of the
        schema version table and commits: on SQLite that appends a page to the WAL and flushes it
        (``synchronous=FULL``), on PostgreSQL it flushes a WAL record. So a full disk, a read-only or immutable
        file, a read-only database (a standby), a write lock held elsewhere or a replaced SQLite file fail here
        as they would fail an insert; a rolled-back change would not (it never reaches the disk). No event is
        written; readers are never blocked, writers wait at most for this one commit.
        """
        try:
            self._ensure_schema()
            self._check_file_identity()
            millis = max(1, int(timeout * 1000))
            with self._guard(), self._engine.execution_options(carerix_write=True).connect() as conn:
                raw = conn.connection.dbapi_connection
                if self.dialect == "sqlite":
                    raw.execute(f"PRAGMA busy_timeout={millis}")  # type: ignore[union-attr]
                try:
                    with conn.begin():  # BEGIN IMMEDIATE on SQLite: the writers' lock
                        if self.dialect == "postgresql":
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {millis}")
                            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_INSERT_LOCK)))
                        # A row added and taken away again: the page is written (an update to the same
                        # value would not be: SQLite skips rewriting a cell whose content is unchanged).
                        conn.execute(schema_version.insert().values(id=_PROBE_ROW, version=0))
                        conn.execute(schema_version.delete().where(schema_version.c.id == _PROBE_ROW))
                finally:
                    if self.dialect == "sqlite":
                        raw.execute("PRAGMA busy_timeout=30000")  # type: ignore[union-attr]
            self._check_file_identity()  # committed into the file at the path, not an orphan
        except StoreUnavailable:
            raise
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def restart_needed(self) -> StoreUnavailable | None:
        """Why only a restart brings this store back (its SQLite file replaced or removed), or ``None``.

        One ``stat``, no query: cheap enough for a liveness probe, which then fails so an orchestrator
        restarts the receiver (a new process opens the file now at the path).
        """
        try:
            self._check_file_identity()
        except StoreUnavailable as exc:
            return exc
        return None

    def _reopen(self, cause: str) -> None:
        """Empty the pool: connections opened read-only (or broken) stay so; the next use opens fresh ones."""
        if self.dialect == "sqlite" and self._sqlite_file() is None:
            return  # in memory: the pool's one connection is the database
        log.warning("Carerix event store %s: reopening its connections on next use", CAUSES[cause])
        self._engine.dispose()

    # -- SQLite file identity -------------------------------------------------------------------------------

    def _sqlite_file(self) -> Path | None:
        if self.dialect != "sqlite":
            return None
        database = make_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).expanduser()

    def _stat_file(self) -> tuple[int, int] | None:
        path = self._sqlite_file()
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _check_file_identity(self) -> None:
        """``StoreUnavailable`` when the SQLite file was removed or replaced since the store opened it.

        SQLite keeps writing to the file it has open, even once it is unlinked or renamed over: events would
        be acknowledged into a file nobody will read again (after a restart they are gone and sequences
        restart at 1). One ``stat`` per group of inserts detects it. Nothing reopens the new file by itself:
        a replaced store is an operator's decision (restore, then restart the receiver).
        """
        if self._file_identity is None:
            return
        current = self._stat_file()
        if current is None:
            raise StoreUnavailable(
                "the SQLite event store file was removed while in use; restore it and restart", "file_removed"
            )
        if current != self._file_identity:
            raise StoreUnavailable(
                "the SQLite event store file was replaced while in use (another file is at its path now); "
                "restart to use it",
                "file_replaced",
            )

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def key_fingerprint(public_key: str) -> str:
    """SHA-256 (hex) of a PEM's base64 body: the same key written with other line breaks has one fingerprint."""
    body = "".join(
        line.strip()
        for line in public_key.strip().splitlines()
        if line.strip() and not line.startswith("-----")
    )
    return hashlib.sha256(body.encode("ascii", "replace")).hexdigest()


def _digest(raw: bytes | str) -> str:
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    return hashlib.sha256(data).hexdigest()[:16]


def _warn_if_body_differs(event_id: str, stored: bytes | str, new: bytes | str) -> None:
    """Same id, different body: Carerix should never do that. Keep the first, say so (hashes, no values)."""
    stored_b = stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
    new_b = new.encode("utf-8") if isinstance(new, str) else bytes(new)
    if stored_b != new_b:
        log.warning(
            "Event %s delivered again with a different body (stored sha256 %s, new sha256 %s); keeping the "
            "stored one",
            event_id,
            _digest(stored_b),
            _digest(new_b),
        )
