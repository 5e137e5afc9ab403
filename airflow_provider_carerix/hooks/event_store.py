"""The event store as Airflow sees it: where it is, what matches, and which events a consumer has processed.

Triggers, the sensor and tasks reach the store only through :class:`CarerixEventStoreHook` (the way the SQS
and Kafka providers' triggers build their hook from a connection id). The hook owns:

* **Where the store is.** One order for every component (:mod:`airflow_provider_carerix.settings`): the
  Airflow connection ``carerix_event_store`` (or ``[carerix] event_store_conn_id``) first, which holds the URL
  and, for PostgreSQL, the password (only the connection id travels in trigger kwargs); then an explicit URL,
  ``[carerix] event_store_url`` (``AIRFLOW__CARERIX__EVENT_STORE_URL``, or the older
  ``CARERIX_EVENT_STORE_URL``), then ``$AIRFLOW_HOME/carerix_events.db``. A connection and another source that
  name different stores is an error. The store chosen, and why, is logged once per hook.
* **Is anybody writing?** Receivers record heartbeats in the store they write to; :meth:`check_receivers`
  warns when none is recent, naming the store this reader uses: a receiver writing elsewhere is a split
  deployment, and no event would ever reach this reader.
* **Consumers.** A consumer is one DAG's progress through the log: ``<name>`` (what the watcher has turned
  into asset events), ``<name>:processed`` (what the DAG's task finished) and ``<name>:origin`` (where the
  consumer started). Where a new consumer starts is its ``start_from`` (:func:`start_sequence`): by default
  where the log ended when the DAG was deployed (registered by the provider's listener when Airflow first
  records the DAG's asset, paused or not), else the earliest event still stored, a time, or only new events.
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
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

from sqlalchemy.engine import URL, make_url

from airflow_provider_carerix import metrics, settings
from airflow_provider_carerix.definitions.changes import EntityChange, group_changes
from airflow_provider_carerix.durations import parse_duration
from airflow_provider_carerix.settings import ConfigurationError, StoreLocation
from airflow_provider_carerix.store import (
    ConsumerOwned,
    EventStore,
    StoredEvent,
    StoreUnavailable,
)
from airflow_provider_carerix.store.filters import EventFilter, iso
from airflow_provider_carerix.store.reservations import Alive
from airflow_provider_carerix.version_compat import (
    AIRFLOW_V_3_2_PLUS,
    BaseHook,
    connection_form_widgets,
    ui_field_behaviour,
)

__all__ = [
    "DEFAULT_CONN_ID",
    "DEFAULT_START_FROM",
    "START_FROM_CHOICES",
    "CarerixEvent",
    "CarerixEventStoreHook",
    "Claim",
    "ClaimedEvent",
    "ConsumerBusy",
    "ConsumerOwned",
    "LeaseLost",
    "cursor_names",
    "locate_store",
    "normalise_start_from",
    "store_url_from_connection",
]

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "carerix_event_store"
#: This provider's connection type for the store (``airflow connections add --conn-type carerix_event_store``).
STORE_CONN_TYPE = "carerix_event_store"
PAGE_SIZE = 1000
# Long enough that a busy worker's renewals (every third of it) never miss; short enough that the retry of a
# task killed mid-batch (kill -9, OOM) takes over within a minute.
DEFAULT_LEASE_SECONDS = 60.0
_BUSY_LOG_EVERY = 30.0
#: Where a new consumer starts: where the log ended when the DAG was deployed (its asset first recorded by
#: Airflow, even paused), the earliest event still stored, or where it ends when the consumer first runs.
DEFAULT_START_FROM = "deployed"
START_FROM_CHOICES = ("deployed", "earliest", "new")


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
            "AIRFLOW__CARERIX__EVENT_STORE_URL on every component) and leave store_url unset."
        )
    return url


def store_url_from_connection(conn: Any) -> str:
    """SQLAlchemy URL of the store described by an Airflow connection (password included: never log it).

    ``extra: {"url": "postgresql://host/db"}`` (login and password may be in their fields), or PostgreSQL as
    host, port, schema (= database), login, password: connection type ``carerix_event_store`` (this provider's),
    ``postgres``, or ``generic`` (what ``airflow connections add --conn-type postgres`` stores when the postgres
    provider is not installed); or SQLite, ``sqlite`` with host = the file, or ``carerix_event_store`` /
    ``generic`` with only a file path in host.
    """
    extra = conn.extra_dejson or {}
    conn_type = (conn.conn_type or "").lower()
    if extra.get("url"):
        url = make_url(settings.normalise_store_url(str(extra["url"])))
        if conn.login:
            url = url.set(username=conn.login)
        if conn.password:
            url = url.set(password=conn.password)
        return url.render_as_string(hide_password=False)
    host = (conn.host or "").strip()
    file_only = host.startswith(("/", "~", ".")) and not (conn.schema or conn.port or conn.login)
    if conn_type == "sqlite" or (conn_type in (STORE_CONN_TYPE, "generic") and file_only):
        if host or conn.schema:
            return f"sqlite:///{host or conn.schema}"
    elif conn_type in ("postgres", "postgresql", STORE_CONN_TYPE, "generic") and host:
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=host,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    raise ValueError(
        f"Airflow connection {conn.conn_id!r} (type {conn_type or 'none'}) does not describe a Carerix event "
        f"store: use connection type {STORE_CONN_TYPE} or postgres with host, port, schema (the database), "
        "login and password, or sqlite with host = the database file, or put the URL in its extra as "
        '{"url": "..."}'
    )


def normalise_start_from(value: str | datetime | timedelta | None) -> str:
    """``start_from`` as trigger kwargs hold it (plain text): a choice, an ISO 8601 time or a duration.

    Checked here, where the DAG is parsed, so a typo fails the DAG file rather than the watcher later.
    """
    if value is None:
        return DEFAULT_START_FROM
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"start_from: a duration back from now must be positive, got {value}")
        return f"{int(value.total_seconds())}s"
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return aware.isoformat()
    text = str(value).strip()
    if text.lower() in START_FROM_CHOICES:
        return text.lower()
    try:
        parse_duration(text)
        return text
    except ValueError:
        pass
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"start_from: expected one of {', '.join(START_FROM_CHOICES)}, an ISO 8601 time "
            f"(2026-01-31T08:00:00Z) or a duration back from now (12h, 7d), got {text!r}"
        ) from None
    return text


def start_sequence(store: EventStore, start_from: str, *, now: datetime | None = None) -> int:
    """The delivered/processed position of a new consumer: events after it are the consumer's."""
    choice = normalise_start_from(start_from)
    if choice == "earliest":
        return 0
    if choice in ("deployed", "new"):
        return store.last_sequence()
    from airflow_provider_carerix.durations import parse_since

    since = parse_since(choice, now=now)
    assert since is not None
    return store.last_sequence_before(since)


def _is_not_found(exc: BaseException) -> bool:
    return type(exc).__name__ in ("AirflowNotFoundException", "ConnectionNotFound") or (
        "isn't defined" in str(exc)
    )


def locate_store(
    store_url: str | None = None, *, store_conn_id: str | None = DEFAULT_CONN_ID
) -> StoreLocation:
    """Where the store is, for code outside triggers (the receiver, the CLIs, the API server, tasks).

    The same order as everywhere (the connection first); :class:`ConfigurationError` names the conflict.
    """
    return CarerixEventStoreHook(store_conn_id=store_conn_id, store_url=store_url).get_store_location()


def _reason(exc: BaseException) -> str:
    """An exception for a start-up error: its type, and the first line of its message unless it comes from
    the database driver (which may quote connection details)."""
    if isinstance(exc, ImportError) or type(exc).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
        return type(exc).__name__
    if type(exc).__name__ == "InvalidToken" or "InvalidToken" in repr(exc.__cause__ or exc.__context__):
        return f"{type(exc).__name__}: the connection cannot be decrypted; [core] fernet_key must be the same on every component"
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _metastore_failure(conn_id: str | None) -> BaseException | None:
    """Why Airflow's metadata database could not be asked for ``conn_id`` (None: it was asked, or not used).

    Airflow's own lookup treats a backend that fails like one that has no such connection; for the store's
    connection that difference decides between the right store and a silent split. A metadata database
    without Airflow's tables (``airflow db migrate`` never ran) holds no connection: that is not a failure.
    """
    if not conn_id or not settings.reads_metadata_db():
        return None
    try:
        from airflow.secrets.metastore import MetastoreBackend

        MetastoreBackend().get_connection(conn_id)
    except Exception as exc:
        try:
            import sqlalchemy as sa
            from airflow import settings as airflow_settings

            engine = airflow_settings.engine
            if engine is not None and not sa.inspect(engine).has_table("connection"):
                return None
        except Exception:
            pass
        return exc
    return None


@dataclass(frozen=True)
class ClaimedEvent(Mapping[str, Any]):
    """One stored event handed to a task (by ``claim()``, or by id after the sensor): the payload exactly as
    Carerix sent it, plus where it sits.

    Reads like the payload (``event["data"]["entityId"]``); the store's bookkeeping is in attributes.
    """

    event_id: str
    type: str
    entity_id: str | None
    sequence: int
    received_at: datetime
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stored(cls, stored: StoredEvent) -> ClaimedEvent:
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

    @property
    def swept(self) -> bool:
        """Stored by the coverage sweep (a change Carerix sent no webhook for), not delivered by Carerix."""
        return isinstance(self.payload.get("sweep"), dict)

    def reference(self) -> dict[str, Any]:
        """JSON-safe, payload-free summary (for XCom or logs)."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "entity_id": self.entity_id,
            "sequence": self.sequence,
            "received_at": iso(self.received_at),
        }


#: The name this class had before 0.1.0 (kept for code written against it).
CarerixEvent = ClaimedEvent


@dataclass
class Claim:
    """The events of one claim, oldest first; ``has_more`` when ``limit`` left newer ones for later."""

    consumer: str
    events: list[ClaimedEvent]
    has_more: bool = False
    upto: int = 0

    def __iter__(self) -> Iterator[ClaimedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:
        return bool(self.events)

    def entities(self, entity: str | None = None) -> list[EntityChange]:
        """The claimed events grouped per record (optionally of one entity), by their latest event.

        50 updates to 5 candidates are 5 changes; fetch their records in one call:
        ``CarerixHook().get_entities("cremployee", [c.entity_id for c in claim.entities("cremployee")])``.
        """
        return group_changes(self.events, entity)

    def entity_ids(self, entity: str) -> list[str]:
        """The ids of the records of ``entity`` the claimed events name, each once."""
        return [change.entity_id for change in group_changes(self.events, entity)]


class CarerixEventStoreHook(BaseHook):
    """Open the Carerix event store and read it as filters and consumers need.

    :param store_conn_id: Airflow connection of the store (default ``carerix_event_store``, or
        ``[carerix] event_store_conn_id``; if that connection does not exist, ``[carerix] event_store_url``,
        then the default store). ``None`` or ``""``: do not look for a connection.
    :param store_url: an explicit URL. It must not name another store than the connection; triggers and the
        sensor refuse one with a password (their arguments are stored in Airflow's database).
    """

    conn_name_attr = "store_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = STORE_CONN_TYPE
    hook_name = "Carerix event store"

    if not AIRFLOW_V_3_2_PLUS:
        # Airflow 3.1 builds the connection form from the hook; 3.2+ reads the same from provider info.
        get_connection_form_widgets: Any = classmethod(connection_form_widgets)
        get_ui_field_behaviour: Any = classmethod(ui_field_behaviour)

    def __init__(self, store_conn_id: str | None = DEFAULT_CONN_ID, store_url: str | None = None) -> None:
        super().__init__()
        if store_conn_id == DEFAULT_CONN_ID:
            # The deployment may name another connection ([carerix] event_store_conn_id); "" turns it off.
            store_conn_id = settings.get("event_store_conn_id").value
        self.store_conn_id = store_conn_id or None
        self.store_url = store_url.strip() if store_url and store_url.strip() else None
        self._location: StoreLocation | None = None
        self._store: EventStore | None = None
        self._receivers_silent: bool | None = None

    # -- where the store is ---------------------------------------------------------------------------------

    def _not_found(self, exc: BaseException) -> None:
        """A missing connection is normal for the default id; for another id, or when the metadata database
        could not be read, falling back to another store would split the deployment: raise."""
        if self.store_conn_id != settings.get("event_store_conn_id").value:
            raise ConfigurationError(
                f"store_conn_id {self.store_conn_id!r}: no such Airflow connection ({type(exc).__name__})"
            ) from None
        failure = _metastore_failure(self.store_conn_id)
        if failure is not None:
            raise ConfigurationError(
                f"cannot tell whether the Airflow connection {self.store_conn_id!r} (the event store) exists: "
                f"reading Airflow's metadata database failed ({_reason(failure)}). Not falling back to "
                "another store: events could go where no reader looks"
            ) from None

    def _resolved(self, connection: tuple[str, str] | None) -> StoreLocation:
        self._location = settings.resolve_store(self.store_url, connection=connection)
        log.info("Carerix event store: %s", self._location.describe())
        return self._location

    def get_store_location(self) -> StoreLocation:
        """The store this hook uses and where that choice came from (see the module docstring)."""
        if self._location is not None:
            return self._location
        connection = None
        if self.store_conn_id:
            try:
                connection = (
                    store_url_from_connection(self.get_connection(self.store_conn_id)),
                    self.store_conn_id,
                )
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
                self._not_found(exc)
        return self._resolved(connection)

    async def aget_store_location(self) -> StoreLocation:
        """:meth:`get_store_location` for triggers: the connection lookup must not block the event loop."""
        if self._location is not None:
            return self._location
        connection = None
        if self.store_conn_id:
            getter = getattr(BaseHook, "aget_connection", None)
            try:
                if getter is not None:
                    conn = await getter(self.store_conn_id)
                else:  # Airflow < 3.2
                    from asgiref.sync import sync_to_async

                    conn = await sync_to_async(self.get_connection)(self.store_conn_id)
                connection = (store_url_from_connection(conn), self.store_conn_id)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
                await asyncio.to_thread(self._not_found, exc)
        return self._resolved(connection)

    def get_store_url(self) -> str:
        """The store's URL, password included (never log it; ``EventStore`` repr hides it)."""
        return self.get_store_location().url

    async def aget_store_url(self) -> str:
        return (await self.aget_store_location()).url

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

    def get_event(self, event_id: str) -> ClaimedEvent | None:
        """The stored event with this id (e.g. the payload behind a sensor's XCom), or ``None``."""
        stored = self.store.event_by_id(event_id)
        return None if stored is None else ClaimedEvent.from_stored(stored)

    # -- consumers ------------------------------------------------------------------------------------------

    def ensure_consumer(
        self, consumer: str, flt: EventFilter | None = None, *, start_from: str = DEFAULT_START_FROM
    ) -> int:
        """The consumer's delivered cursor, creating the consumer at ``start_from`` if it is new.

        Creation writes delivered and processed first and the origin marker last, so an interrupted creation is
        simply redone. With ``flt`` (a claim), the consumer's filter is recorded too, for the lag the Carerix
        page shows; watchers do not pass it, so a thousand starting watchers cost no extra write.
        ``start_from`` only matters for a new consumer: an existing one keeps its position.
        """
        store = self.store
        if flt is not None:
            store.describe_consumer(
                consumer, json.dumps(flt.serialize(), sort_keys=True, separators=(",", ":"))
            )
        delivered, processed, origin = cursor_names(consumer)
        if store.get_cursor(origin) > 0:
            return store.get_cursor(delivered)
        start = start_sequence(store, start_from)
        store.advance_cursor(delivered, start)
        store.advance_cursor(processed, start)
        store.advance_cursor(origin, start + 1)
        log.info(
            "Carerix consumer %r created in %s: start_from=%s, events after sequence %d are its own",
            consumer,
            self.get_store_location().display,
            start_from,
            start,
        )
        return store.get_cursor(delivered)

    def check_receivers(self, *, now: datetime | None = None) -> bool:
        """Warn (once per change) when no receiver recorded a heartbeat in this store recently; True if one did.

        A receiver writes a heartbeat into the store it writes events to. None here for longer than
        ``[carerix] receiver_silence_warning`` means either that no receiver runs, or that it writes to another
        store: this reader would then never see an event. The warning names the store and where its choice
        came from, so the two components' logs can be compared.
        """
        window_text = settings.get("receiver_silence_warning").value
        if window_text.strip() in ("0", ""):
            return True
        try:
            window = parse_duration(window_text)
        except ValueError as exc:
            raise ConfigurationError(f"[carerix] receiver_silence_warning: {exc}") from None
        now = now or datetime.now(timezone.utc)
        seen = self.store.receivers_seen()
        latest = seen[0].last_seen if seen else None
        healthy = latest is not None and now - latest <= window
        if not healthy and self._receivers_silent is not True:
            log.warning(
                "No Carerix receiver has recorded a heartbeat in the event store %s for %s (last: %s). If a "
                "receiver runs, it writes to another store and no event will reach this reader: give every "
                "component the same store (docs/configuration.md)",
                self.get_store_location().describe(),
                window_text,
                iso(latest) if latest else "never",
            )
        elif healthy and self._receivers_silent:
            log.info(
                "A Carerix receiver writes to the event store %s again", self.get_store_location().display
            )
        self._receivers_silent = not healthy
        return healthy

    def processed_position(self, consumer: str) -> int:
        return self.store.get_cursor(cursor_names(consumer)[1])

    def unprocessed(
        self, consumer: str, flt: EventFilter, *, limit: int | None = None
    ) -> tuple[list[StoredEvent], int, bool]:
        """(matching events after the processed cursor, sequence to record when done, more left?).

        Events a run reserved (one task per event: ``CarerixEvents.reserve()``) or recorded out of order are
        not handed out; events a run gave back are.
        """
        after = self.processed_position(consumer)
        taken = {
            sequence
            for sequence, state in self.store.event_states(consumer, after=after).items()
            if state.processed or state.reserved_by is not None
        }
        events: list[StoredEvent] = []
        upto = after
        for stored, matched in self.matching_after(flt, after):
            if matched and stored.sequence not in taken:
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
        start_from: str = DEFAULT_START_FROM,
        alive: Alive | None = None,
    ) -> Iterator[Claim]:
        """Lease the consumer, yield its unprocessed events, record them processed only on a clean exit.

        :param owner: the claiming DAG's id; a consumer used by another DAG raises ``ConsumerOwned``.
        :param wait_timeout: seconds to wait while another run holds the lease (``None``: as long as it takes;
            the lease of a crashed holder expires after ``lease_seconds``).
        :param alive: whether a run that reserved events of this consumer is still running (see
            :mod:`~airflow_provider_carerix.hooks.reservations`); the events of runs that are over are claimed.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be a positive number of events (or None for all)")
        holder = holder or f"{owner or 'task'}/{uuid.uuid4().hex[:12]}"
        self.ensure_consumer(consumer, flt, start_from=start_from)
        with contextlib.suppress(StoreUnavailable):
            self.check_receivers()
        self._acquire(consumer, owner=owner, holder=holder, ttl=lease_seconds, wait_timeout=wait_timeout)
        leased_at = time.monotonic()
        outcome = "failed"
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
            self.store.give_back_dead(consumer, alive)
            rows, upto, more = self.unprocessed(consumer, flt, limit=limit)
            claim = Claim(consumer, [ClaimedEvent.from_stored(r) for r in rows], has_more=more, upto=upto)
            metrics.incr(metrics.CLAIM_EVENTS, len(claim), consumer=consumer)
            log.info(
                "Carerix consumer %r: %d unprocessed event(s) claimed%s",
                consumer,
                len(claim),
                " (more left for the next claim)" if more else "",
            )
            yield claim
            stop.set()
            renewer.join()
            if lost.is_set() or not self.store.finish_claim(
                consumer, holder, sequence=upto, events=[(e.sequence, e.event_id) for e in claim]
            ):
                released = True  # nothing of ours left to release
                outcome = "lease_lost"
                raise LeaseLost(
                    f"Carerix consumer {consumer!r}: the lease expired while processing (longer than "
                    f"lease_seconds={lease_seconds:g} without a renewal); nothing was recorded as processed, "
                    "the events will be handed out again"
                )
            released = True
            outcome = "processed"
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join()
            metrics.timing(
                metrics.CLAIM_DURATION,
                (time.monotonic() - leased_at) * 1000.0,
                consumer=consumer,
                outcome=outcome,
            )
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
                metrics.timing(
                    metrics.CLAIM_LEASE_WAIT, (time.monotonic() - started) * 1000.0, consumer=consumer
                )
                if logged_at is not None:
                    log.info(
                        "Carerix consumer %r: lease taken after waiting %.1f s",
                        consumer,
                        time.monotonic() - started,
                    )
                return
            now = time.monotonic()
            if wait_timeout is not None and now - started >= wait_timeout:
                metrics.incr(metrics.CLAIM_BUSY, consumer=consumer)
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

    # -- freshness (issue 30) -------------------------------------------------------------------------------

    def consumer_exists(self, consumer: str) -> bool:
        """Whether a watcher or a claim created this consumer in the store (its origin marker is set)."""
        return self.store.get_cursor(cursor_names(consumer)[2]) > 0

    def recorded_filter(self, consumer: str) -> EventFilter | None:
        """The filter the consumer's claims recorded (``None``: no claim ran yet)."""
        raw = self.store.consumer_filter(consumer)
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        return EventFilter.build(
            value.get("event_types"),
            value.get("condition"),
            value.get("webhook_id"),
            value.get("application_id"),
            value.get("tenant"),
        )

    def backlog(self, consumer: str, flt: EventFilter | None = None) -> tuple[StoredEvent | None, int]:
        """The consumer's oldest matching event not processed yet (``None``: nothing waits) and how many wait
        (counted up to 1,000). ``flt``: the consumer's filter; by default the one its claims recorded."""
        if flt is None:
            flt = self.recorded_filter(consumer) or EventFilter.build(None, None, None, None, None)
        events, _, more = self.unprocessed(consumer, flt, limit=1000)
        return (events[0] if events else None), len(events) + (1 if more else 0)

    def last_event(self, event_types: str | list[str] | None = None) -> StoredEvent | None:
        """The newest stored event of these types (patterns as in filters; ``None``: any type)."""
        return self.store.last_event(event_types)
