"""The event store as Airflow sees it: where it is, what matches, and which events a consumer has processed.

Triggers, the sensor and tasks reach the store only through :class:`CarerixEventStoreHook` (the way the SQS
and Kafka providers' triggers build their hook from a connection id). The hook owns:

* **Where the store is.** An Airflow connection (default ``carerix_event_store``) holds the URL and, for
  PostgreSQL, the password; only the connection id travels in trigger kwargs. Without that connection the
  store is found as the receiver finds it: ``CARERIX_EVENT_STORE_URL``, ``[carerix] event_store_url``, then
  ``$AIRFLOW_HOME/carerix_events.db``.
* **Consumers.** A consumer is one DAG's progress through the log: ``<name>`` (what the watcher has turned
  into asset events), ``<name>:processed`` (what the DAG's task finished) and ``<name>:origin`` (where the
  consumer started; a new consumer starts at the end of the log, not at the history).
* **Claims.** :meth:`CarerixEventStoreHook.claim` takes the consumer's lease in the store, hands over every
  unprocessed matching event oldest first, and on a clean exit records them processed and releases the lease
  in one transaction that first checks the lease is still held. A concurrent run of the same consumer waits;
  a crashed holder's lease expires. So exactly once per consumer needs no ``max_active_runs=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy.engine import URL, make_url

from airflow_provider_carerix.store import (
    ConsumerOwned,
    EventStore,
    StoredEvent,
    resolve_store_url,
)
from airflow_provider_carerix.utils.event_filter import EventFilter, iso
from airflow_provider_carerix.version_compat import BaseHook

__all__ = [
    "DEFAULT_CONN_ID",
    "CarerixEvent",
    "CarerixEventStoreHook",
    "Claim",
    "ConsumerBusy",
    "ConsumerOwned",
    "LeaseLost",
    "cursor_names",
    "store_url_from_connection",
]

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "carerix_event_store"
PAGE_SIZE = 1000
# Long enough that a busy worker's renewals (every third of it) never miss; short enough that the retry of a
# task killed mid-batch (kill -9, OOM) takes over within a minute.
DEFAULT_LEASE_SECONDS = 60.0
_BUSY_LOG_EVERY = 30.0


class ConsumerBusy(Exception):
    """Another run holds the consumer's lease and did not release it within the wait."""


class LeaseLost(Exception):
    """The lease expired while processing (the task stalled longer than the lease): nothing was recorded."""


def cursor_names(consumer: str) -> tuple[str, str, str]:
    """(delivered, processed, origin) cursor names of one consumer."""
    return consumer, f"{consumer}:processed", f"{consumer}:origin"


def check_url_has_no_password(store_url: str | None, setting: str = "store_url") -> str | None:
    """``store_url`` travels in trigger kwargs (Airflow's database, the UI): a password must not."""
    if store_url is None or not str(store_url).strip():
        return None
    url = str(store_url).strip()
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"invalid {setting} {url!r}: {exc}") from None
    if parsed.password:
        raise ValueError(
            f"{setting} must not contain a password: trigger kwargs are stored in Airflow's database and shown "
            f"in the UI. Put the URL with its password in the Airflow connection {DEFAULT_CONN_ID!r} (or "
            "CARERIX_EVENT_STORE_URL on the triggerer and workers) and leave store_url unset."
        )
    return url


def store_url_from_connection(conn: Any) -> str:
    """SQLAlchemy URL of the store described by an Airflow connection (password included: never log it).

    ``extra: {"url": "postgresql://host/db"}`` with login/password in their fields, or a ``postgres``
    connection (host, port, schema = database, login, password), or a ``sqlite`` connection (host = file).
    """
    extra = conn.extra_dejson or {}
    conn_type = (conn.conn_type or "").lower()
    if extra.get("url"):
        url = make_url(resolve_store_url(str(extra["url"])))
        if conn.login:
            url = url.set(username=conn.login)
        if conn.password:
            url = url.set(password=conn.password)
        return url.render_as_string(hide_password=False)
    if conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    if conn_type == "sqlite" and (conn.host or conn.schema):
        return f"sqlite:///{conn.host or conn.schema}"
    raise ValueError(
        f"Airflow connection {conn.conn_id!r} does not describe a Carerix event store: use connection type "
        "postgres (host, port, schema, login, password) or sqlite (host = database file), or put the URL in "
        'its extra as {"url": "..."}'
    )


def _is_not_found(exc: BaseException) -> bool:
    return type(exc).__name__ in ("AirflowNotFoundException", "ConnectionNotFound") or (
        "isn't defined" in str(exc)
    )


@dataclass(frozen=True)
class CarerixEvent(Mapping[str, Any]):
    """One stored event handed to a task: the payload exactly as Carerix sent it, plus where it sits.

    Reads like the payload (``event["data"]["entityId"]``); the store's bookkeeping is in attributes.
    """

    event_id: str
    type: str
    entity_id: str | None
    sequence: int
    received_at: datetime
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stored(cls, stored: StoredEvent) -> CarerixEvent:
        return cls(
            event_id=stored.event_id,
            type=stored.type,
            entity_id=stored.entity_id,
            sequence=stored.sequence,
            received_at=stored.received_at,
            payload=stored.payload,
        )

    def __getitem__(self, key: str) -> Any:
        return self.payload[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.payload)

    def __len__(self) -> int:
        return len(self.payload)

    def reference(self) -> dict[str, Any]:
        """JSON-safe, payload-free summary (for XCom or logs)."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "entity_id": self.entity_id,
            "sequence": self.sequence,
            "received_at": iso(self.received_at),
        }


@dataclass
class Claim:
    """The events of one claim, oldest first; ``has_more`` when ``limit`` left newer ones for later."""

    consumer: str
    events: list[CarerixEvent]
    has_more: bool = False
    upto: int = 0

    def __iter__(self) -> Iterator[CarerixEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:
        return bool(self.events)


class CarerixEventStoreHook(BaseHook):
    """Open the Carerix event store and read it as filters and consumers need.

    :param store_conn_id: Airflow connection of the store (default ``carerix_event_store``; if that
        connection does not exist, the receiver's default store is used).
    :param store_url: a password-less URL instead of a connection (kept for existing triggers).
    """

    conn_name_attr = "store_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "carerix_event_store"
    hook_name = "Carerix event store"

    def __init__(self, store_conn_id: str | None = DEFAULT_CONN_ID, store_url: str | None = None) -> None:
        super().__init__()
        self.store_conn_id = store_conn_id or None
        self.store_url = check_url_has_no_password(store_url)
        self._url: str | None = None
        self._store: EventStore | None = None

    # -- where the store is ---------------------------------------------------------------------------------

    def _url_from(self, conn: Any) -> str:
        return store_url_from_connection(conn)

    def _fallback(self, exc: BaseException) -> str:
        if self.store_conn_id != DEFAULT_CONN_ID:
            raise ValueError(
                f"store_conn_id {self.store_conn_id!r}: no such Airflow connection ({type(exc).__name__})"
            ) from None
        return resolve_store_url(None)

    def get_store_url(self) -> str:
        """The store's URL, password included (never log it; ``EventStore`` repr hides it)."""
        if self._url is None:
            if self.store_url or not self.store_conn_id:
                self._url = resolve_store_url(self.store_url)
            else:
                try:
                    self._url = self._url_from(self.get_connection(self.store_conn_id))
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise
                    self._url = self._fallback(exc)
        return self._url

    async def aget_store_url(self) -> str:
        """:meth:`get_store_url` for triggers: the connection lookup must not block the event loop."""
        if self._url is None:
            if self.store_url or not self.store_conn_id:
                self._url = resolve_store_url(self.store_url)
            else:
                getter = getattr(BaseHook, "aget_connection", None)
                try:
                    if getter is not None:
                        conn = await getter(self.store_conn_id)
                    else:  # Airflow < 3.2
                        from asgiref.sync import sync_to_async

                        conn = await sync_to_async(self.get_connection)(self.store_conn_id)
                    self._url = self._url_from(conn)
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise
                    self._url = self._fallback(exc)
        return self._url

    @cached_property
    def store(self) -> EventStore:
        """The store (lazy: connecting happens on first query, so a down database is a retryable error)."""
        self._store = EventStore(self.get_store_url())
        return self._store

    async def astore(self) -> EventStore:
        if self._store is None:
            url = await self.aget_store_url()
            self._store = await asyncio.to_thread(EventStore, url)
            self.__dict__["store"] = self._store
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self.__dict__.pop("store", None)

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.store.ping()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"event store reachable: {self.store!r}"

    # -- queries --------------------------------------------------------------------------------------------

    def matching_after(
        self,
        flt: EventFilter,
        after: int,
        *,
        upto: int | None = None,
        received_after: datetime | None = None,
    ) -> Iterator[tuple[StoredEvent, bool]]:
        """Every event after ``after`` (up to ``upto``) that the query part of ``flt`` selects, with whether
        the whole filter matches, oldest first, page by page."""
        position = after
        while True:
            rows = self.store.events_after(
                position, limit=PAGE_SIZE, received_after=received_after, **flt.query_kwargs()
            )
            for stored in rows:
                if upto is not None and stored.sequence > upto:
                    return
                position = stored.sequence
                yield stored, flt.matches(stored)
            if len(rows) < PAGE_SIZE:
                return

    def find_first(
        self, flt: EventFilter, *, after: int, since: datetime | None
    ) -> tuple[StoredEvent | None, int]:
        """First matching event after sequence ``after`` received after ``since``; also the last sequence read."""
        position = after
        for stored, matched in self.matching_after(flt, after, received_after=since):
            position = stored.sequence
            if matched:
                return stored, position
        return None, position

    def get_event(self, event_id: str) -> CarerixEvent | None:
        """The stored event with this id (e.g. the payload behind a sensor's XCom), or ``None``."""
        stored = self.store.event_by_id(event_id)
        return None if stored is None else CarerixEvent.from_stored(stored)

    # -- consumers ------------------------------------------------------------------------------------------

    def ensure_consumer(self, consumer: str, flt: EventFilter | None = None) -> int:
        """The consumer's delivered cursor, creating the consumer at the current end of the log if new.

        Creation writes delivered and processed first and the origin marker last, so an interrupted creation is
        simply redone. With ``flt`` (a claim), the consumer's filter is recorded too, for the lag the Carerix
        page shows; watchers do not pass it, so a thousand starting watchers cost no extra write.
        """
        store = self.store
        if flt is not None:
            store.describe_consumer(
                consumer, json.dumps(flt.serialize(), sort_keys=True, separators=(",", ":"))
            )
        delivered, processed, origin = cursor_names(consumer)
        if store.get_cursor(origin) > 0:
            return store.get_cursor(delivered)
        start = store.last_sequence()
        store.advance_cursor(delivered, start)
        store.advance_cursor(processed, start)
        store.advance_cursor(origin, start + 1)
        return store.get_cursor(delivered)

    def processed_position(self, consumer: str) -> int:
        return self.store.get_cursor(cursor_names(consumer)[1])

    def unprocessed(
        self, consumer: str, flt: EventFilter, *, limit: int | None = None
    ) -> tuple[list[StoredEvent], int, bool]:
        """(matching events after the processed cursor, sequence to record when done, more left?)."""
        after = self.processed_position(consumer)
        events: list[StoredEvent] = []
        upto = after
        for stored, matched in self.matching_after(flt, after):
            if matched:
                if limit is not None and len(events) >= limit:
                    return events, upto, True
                events.append(stored)
            upto = stored.sequence
        return events, upto, False

    @contextlib.contextmanager
    def claim(
        self,
        consumer: str,
        flt: EventFilter,
        *,
        owner: str | None = None,
        limit: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        wait_timeout: float | None = None,
        holder: str | None = None,
    ) -> Iterator[Claim]:
        """Lease the consumer, yield its unprocessed events, record them processed only on a clean exit.

        :param owner: the claiming DAG's id; a consumer used by another DAG raises ``ConsumerOwned``.
        :param wait_timeout: seconds to wait while another run holds the lease (``None``: as long as it takes;
            the lease of a crashed holder expires after ``lease_seconds``).
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be a positive number of events (or None for all)")
        holder = holder or f"{owner or 'task'}/{uuid.uuid4().hex[:12]}"
        self.ensure_consumer(consumer, flt)
        self._acquire(consumer, owner=owner, holder=holder, ttl=lease_seconds, wait_timeout=wait_timeout)
        stop = threading.Event()
        lost = threading.Event()
        renewer = threading.Thread(
            target=self._renew,
            args=(consumer, holder, lease_seconds, stop, lost),
            name=f"carerix-lease-{consumer}",
            daemon=True,
        )
        renewer.start()
        released = False
        try:
            rows, upto, more = self.unprocessed(consumer, flt, limit=limit)
            claim = Claim(consumer, [CarerixEvent.from_stored(r) for r in rows], has_more=more, upto=upto)
            log.info(
                "Carerix consumer %r: %d unprocessed event(s) claimed%s",
                consumer,
                len(claim),
                " (more left for the next claim)" if more else "",
            )
            yield claim
            stop.set()
            renewer.join()
            if lost.is_set() or not self.store.release_lease(
                consumer, holder, cursor=cursor_names(consumer)[1], sequence=upto
            ):
                released = True  # nothing of ours left to release
                raise LeaseLost(
                    f"Carerix consumer {consumer!r}: the lease expired while processing (longer than "
                    f"lease_seconds={lease_seconds:g} without a renewal); nothing was recorded as processed, "
                    "the events will be handed out again"
                )
            released = True
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join()
            if not released:
                # Failed block: release without recording anything; the retry gets the same events.
                with contextlib.suppress(Exception):
                    self.store.release_lease(consumer, holder)

    def _acquire(
        self, consumer: str, *, owner: str | None, holder: str, ttl: float, wait_timeout: float | None
    ) -> None:
        started = time.monotonic()
        logged_at: float | None = None
        while True:
            lease = self.store.acquire_lease(consumer, owner=owner, holder=holder, ttl=ttl)
            if lease.acquired:
                if logged_at is not None:
                    log.info(
                        "Carerix consumer %r: lease taken after waiting %.1f s",
                        consumer,
                        time.monotonic() - started,
                    )
                return
            now = time.monotonic()
            if wait_timeout is not None and now - started >= wait_timeout:
                raise ConsumerBusy(
                    f"Carerix consumer {consumer!r} is busy: {lease.holder} holds its lease until "
                    f"{iso(lease.until)}; gave up after wait_timeout={wait_timeout:g} s"
                )
            if logged_at is None or now - logged_at >= _BUSY_LOG_EVERY:
                logged_at = now
                log.info(
                    "Carerix consumer %r is busy: %s is processing it (lease until %s); waiting for it to finish",
                    consumer,
                    lease.holder,
                    iso(lease.until),
                )
            time.sleep(0.5)

    def _renew(
        self, consumer: str, holder: str, ttl: float, stop: threading.Event, lost: threading.Event
    ) -> None:
        while not stop.wait(ttl / 3):
            try:
                if not self.store.renew_lease(consumer, holder, ttl):
                    lost.set()
                    return
            except Exception as exc:  # a blip: the next renewal (or the release) decides
                log.warning("Carerix consumer %r: lease renewal failed: %s", consumer, type(exc).__name__)
