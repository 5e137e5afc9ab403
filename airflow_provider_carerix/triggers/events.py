"""Triggers that turn rows of the Carerix event store into Airflow trigger events.

Two triggers, two jobs:

* :class:`CarerixEventTrigger` (a ``BaseEventTrigger``) drives ``AssetWatcher``\\ s: it follows a durable
  cursor (``consumer``) through the store and fires one ``TriggerEvent`` per matching event, forever.
* :class:`CarerixEventSensorTrigger` (a plain ``BaseTrigger``) serves :class:`CarerixEventSensor`: it fires
  exactly once, for the first matching event received after ``since``, or with a timeout at ``deadline``.

Payloads (JSON, never pickles)::

    {"status": "event", "sequence": 42, "event_id": "...", "type": "cremployee:updated",
     "received_at": "2024-02-14T14:24:41.123456+00:00", "event": {...exactly as Carerix sent it...}}
    {"status": "error", "message": "..."}
    {"status": "timeout", "message": "...", "deadline": "..."}            # sensor trigger only

Delivery design of the event trigger (the README's "Waiting for events" has the long version):

* **Cursors.** ``consumer`` names three cursors in the store: ``<consumer>`` (delivered: advanced only after
  Airflow persisted the asset events), ``<consumer>:processed`` (advanced by the DAG's task via
  :meth:`CarerixEventTrigger.commit_processed`) and ``<consumer>:origin`` (sequence + 1 where the consumer
  started; the store answers 0 for an unknown cursor, so a separate non-zero marker tells "new" from "at 0").
  A new consumer starts at the current end of the log: it fires for events received from then on, not for
  the history.
* **Airflow 3.3 shared streams, ack mode.** All event triggers on one store (and poll interval) share one
  poll loop: one query per interval, whatever the number of watchers. The loop broadcasts batches
  ``(after, upto, events)``; each watcher filters them, and the producer advances each watcher's cursor only
  after every trigger event it derived was confirmed persisted in Airflow's database. After a triggerer
  restart, unadvanced batches are read again; watchers skip everything at or below their cursor.
* **Airflow 3.0-3.2.** ``run()`` runs the same code with a private poll loop (filters pushed into the query)
  and advances the cursor when the triggerer resumes it after a batch, i.e. once the events were handed to the
  triggerer but before they were persisted: a crash in that window can lose asset events. The drain pattern
  (asset event = wake-up, the task reads the store) makes that harmless for the next run.
* **PostgreSQL.** The loop LISTENs on :data:`~airflow_provider_carerix.store.NOTIFY_CHANNEL` and queries as
  soon as the receiver commits; ``poll_interval`` is then only the safety net.

``store_url`` is a trigger kwarg, stored in Airflow's database and shown in the UI: URLs with a password are
rejected. Put credentials in ``CARERIX_EVENT_STORE_URL`` or ``[carerix] event_store_url`` on the triggerer
(and workers) and leave ``store_url`` unset, or use a password-less URL (peer/cert auth, ``.pgpass``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.store import EventStore, StoredEvent, StoreUnavailable, resolve_store_url
from airflow_provider_carerix.version_compat import (
    HAS_SHARED_STREAMS,
    AdvanceItem,
    BaseEventTrigger,
    BaseTrigger,
    SharedStreamProducer,
    TriggerEvent,
)

if TYPE_CHECKING:
    from airflow_provider_carerix.conditions import Condition

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "HAS_SHARED_STREAMS",
    "CarerixEventSensorTrigger",
    "CarerixEventTrigger",
    "CarerixStoreProducer",
    "EventFilter",
    "StoreBatch",
    "cursor_names",
    "event_payload",
]

log = logging.getLogger(__name__)

# Latency target for the polling path is p50 <= 200 ms; one indexed query per 0.25 s per store is cheap.
DEFAULT_POLL_INTERVAL = 0.25
PAGE_SIZE = 1000
# An idle watcher's cursor is written at most this often (seconds); one that fired is written every batch.
IDLE_CURSOR_REFRESH = 60.0
_RETRY_MAX = 30.0


# -- filters ----------------------------------------------------------------------------------------------


def normalise_event_types(event_types: str | Iterable[str] | None) -> list[str]:
    """Lowercase, deduplicated, sorted: equal watchers must serialise (and hash) equal."""
    if event_types is None:
        return ["*"]
    if isinstance(event_types, str):
        event_types = [event_types]
    result: set[str] = set()
    for item in event_types:
        text = str(item).strip().lower()
        if text in ("*", "*:*"):
            return ["*"]
        entity, sep, action = text.partition(":")
        if not sep or not entity or not action or " " in text:
            raise ValueError(
                f"invalid event type {item!r}: use <entity>:<action>, e.g. cremployee:updated, "
                "crmatch:*, *:created or *"
            )
        result.add(text)
    if not result:
        raise ValueError("event_types must not be empty (use ['*'] for every event)")
    return sorted(result)


def type_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Same rules as the store's query filter, for events that arrive unfiltered on a shared stream."""
    entity, _, action = event_type.strip().lower().partition(":")
    for pattern in patterns:
        if pattern in ("*", "*:*"):
            return True
        p_entity, _, p_action = pattern.partition(":")
        if p_entity in ("*", entity) and p_action in ("*", action):
            return True
    return False


def _clean_id(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_condition(text: str) -> Condition:
    from airflow_provider_carerix.conditions import parse

    return parse(text)


@dataclass(frozen=True)
class EventFilter:
    """What a watcher or sensor wants; pushed into the store query where possible, the rest checked here."""

    event_types: tuple[str, ...] = ("*",)
    condition: str | None = None
    webhook_id: str | None = None
    application_id: str | None = None
    tenant: str | None = None
    _parsed: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        event_types: str | Iterable[str] | None,
        condition: str | None,
        webhook_id: str | None,
        application_id: str | None,
        tenant: str | None,
    ) -> EventFilter:
        """Normalised filters, so that equal watchers serialise (and so hash) equal."""
        return cls(
            event_types=tuple(normalise_event_types(event_types)),
            condition=_validate_condition(condition),
            webhook_id=_clean_id(webhook_id),
            application_id=_clean_id(application_id),
            tenant=_clean_id(tenant),
        )

    def serialize(self) -> dict[str, Any]:
        """The filter part of a trigger's kwargs: primitives only."""
        return {
            "event_types": list(self.event_types),
            "condition": self.condition,
            "webhook_id": self.webhook_id,
            "application_id": self.application_id,
            "tenant": self.tenant,
        }

    def parsed_condition(self) -> Condition | None:
        if self.condition is None:
            return None
        if self._parsed is None:
            object.__setattr__(self, "_parsed", _parse_condition(self.condition))
        return self._parsed

    def query_kwargs(self) -> dict[str, Any]:
        return {
            "event_types": None if self.event_types == ("*",) else list(self.event_types),
            "webhook_id": self.webhook_id,
            "application_id": self.application_id,
            "tenant": self.tenant,
        }

    def matches(self, stored: StoredEvent) -> bool:
        if not type_matches(self.event_types, stored.type):
            return False
        if self.webhook_id is not None and stored.webhook_id != self.webhook_id:
            return False
        if self.application_id is not None and stored.application_id != self.application_id:
            return False
        if self.tenant is not None and stored.tenant != self.tenant:
            return False
        condition = self.parsed_condition()
        return condition is None or bool(condition.matches(stored.payload))


def _validate_store_url(store_url: str | None) -> str | None:
    if store_url is None or not str(store_url).strip():
        return None
    from sqlalchemy.engine import make_url

    url = str(store_url).strip()
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"invalid store_url: {exc}") from None
    if parsed.password:
        raise ValueError(
            "store_url must not contain a password: trigger kwargs are stored in Airflow's database and shown "
            "in the UI. Set CARERIX_EVENT_STORE_URL or [carerix] event_store_url on the triggerer and workers "
            "instead and leave store_url unset."
        )
    return url


def _validate_condition(condition: str | None) -> str | None:
    if condition is None or not str(condition).strip():
        return None
    text = str(condition).strip()
    try:
        _parse_condition(text)
    except ImportError:  # pragma: no cover - conditions module not installed yet
        pass
    return text


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def event_payload(stored: StoredEvent) -> dict[str, Any]:
    """The trigger event / XCom payload of one stored event: Carerix's JSON untouched, plus where it sits."""
    return {
        "status": "event",
        "sequence": stored.sequence,
        "event_id": stored.event_id,
        "type": stored.type,
        "received_at": _iso(stored.received_at),
        "event": stored.payload,
    }


def error_payload(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def cursor_names(consumer: str) -> tuple[str, str, str]:
    """(delivered, processed, origin) cursor names of one consumer."""
    return consumer, f"{consumer}:processed", f"{consumer}:origin"


def ensure_consumer(store: EventStore, consumer: str) -> int:
    """The consumer's delivered cursor, creating the consumer at the current end of the log if it is new.

    Sync (call it in a thread). Creation writes delivered and processed first and the origin marker last, so
    an interrupted creation is simply redone.
    """
    delivered, processed, origin = cursor_names(consumer)
    if store.get_cursor(origin) > 0:
        return store.get_cursor(delivered)
    start = store.last_sequence()
    store.advance_cursor(delivered, start)
    store.advance_cursor(processed, start)
    store.advance_cursor(origin, start + 1)
    return store.get_cursor(delivered)


# -- the shared stream ------------------------------------------------------------------------------------


@dataclass(eq=False)
class StoreBatch:
    """One raw item of the shared stream: every stored event with ``after < sequence <= upto``.

    ``events`` may be pre-filtered (standalone ``run()``); on a shared stream it is every event in the range.
    ``done`` is written by the subscribers (consumer -> cursor value to commit) and read by the producer's
    ``advance`` once every subscriber resolved the batch: a shared in-memory object is how the broker-side
    half learns which consumers it may advance, since ``AdvanceItem`` only carries counts.
    """

    after: int
    upto: int
    events: tuple[StoredEvent, ...] = ()
    error: str | None = None
    done: dict[str, int] = field(default_factory=dict)


@dataclass
class _Signal:
    """Per (event loop, stream key): wakes the poll loop early when a watcher joins or a NOTIFY arrives."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    head_requested: bool = False


_SIGNALS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _Signal]] = (
    weakref.WeakKeyDictionary()
)


def _signal_for(key: Hashable) -> _Signal:
    loop = asyncio.get_running_loop()
    per_loop = _SIGNALS.setdefault(loop, {})
    signal = per_loop.get(key)
    if signal is None:
        signal = per_loop[key] = _Signal()
    return signal


def stream_key(store_url: str | None, poll_interval: float) -> tuple[str, str, float]:
    """One poll loop per store and interval; the password never enters the key."""
    from sqlalchemy.engine import make_url

    resolved = resolve_store_url(store_url)
    safe = make_url(resolved).render_as_string(hide_password=True)
    return ("carerix-event-store", safe, float(poll_interval))


class _Listener:
    """LISTEN on the store's NOTIFY channel (PostgreSQL only); failures degrade to plain polling."""

    def __init__(self, url: str, signal: _Signal) -> None:
        self._url = url
        self._signal = signal
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    async def ensure(self) -> None:
        if self.active:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return
        await self.close()
        try:
            import psycopg
            from sqlalchemy.engine import make_url

            from airflow_provider_carerix.store import NOTIFY_CHANNEL

            conninfo = make_url(self._url).set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            await self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._task = asyncio.create_task(self._read(), name="carerix-notify-listener")
        except Exception as exc:
            log.warning("Cannot LISTEN on the Carerix event store (%s); polling only", type(exc).__name__)
            self._retry_at = loop.time() + 30.0
            await self.close()

    async def _read(self) -> None:
        async for _ in self._conn.notifies():
            self._signal.wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


class CarerixStoreProducer(SharedStreamProducer):
    """Reads the store once per interval (or on NOTIFY) for every watcher of one stream; commits cursors.

    Also drives the standalone ``run()`` of one trigger, with that trigger's filters pushed into the query.
    """

    def __init__(
        self,
        *,
        store_url: str | None,
        poll_interval: float,
        key: Hashable | None = None,
        query: dict[str, Any] | None = None,
    ) -> None:
        self.store_url = store_url
        self.poll_interval = float(poll_interval)
        self.key = key if key is not None else stream_key(store_url, poll_interval)
        self.query = query or {}
        self.store: EventStore | None = None
        self.queries = 0
        self._committed: dict[str, int] = {}
        self._committed_at: dict[str, float] = {}
        self._listener: _Listener | None = None

    async def _store(self) -> EventStore:
        if self.store is None:
            self.store = await asyncio.to_thread(EventStore, self.store_url)
        return self.store

    async def open_stream(self) -> AsyncIterator[tuple[StoreBatch, StoreBatch]]:
        signal = _signal_for(self.key)
        loop = asyncio.get_running_loop()
        pos: int | None = None
        failing_since: float | None = None
        delay = min(self.poll_interval, 1.0)
        while True:
            try:
                store = await self._store()
                if store.dialect == "postgresql":
                    if self._listener is None:
                        self._listener = _Listener(store.url, signal)
                    await self._listener.ensure()
                if pos is None:
                    pos = await asyncio.to_thread(store.last_sequence)
                    self.queries += 1
                    signal.head_requested = False
                    head = StoreBatch(after=pos, upto=pos)
                    yield head, head
                signal.wake.clear()
                rows = await asyncio.to_thread(store.events_after, pos, limit=PAGE_SIZE, **self.query)
                self.queries += 1
                failing_since = None
                delay = min(self.poll_interval, 1.0)
            except StoreUnavailable as exc:
                # Transient (database down, locked): say so once per outage, keep retrying with backoff.
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                    err = StoreBatch(
                        after=pos or 0, upto=pos or 0, error=f"Carerix event store unavailable: {exc}"
                    )
                    yield err, err
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if rows:
                batch = StoreBatch(after=pos, upto=rows[-1].sequence, events=tuple(rows))
                pos = batch.upto
                yield batch, batch
                if len(rows) >= PAGE_SIZE:
                    continue
            elif signal.head_requested:
                # A watcher joined after the last batch: give it a window to catch up from its cursor now,
                # instead of when the next event happens to arrive.
                signal.head_requested = False
                head = StoreBatch(after=pos, upto=pos)
                yield head, head
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signal.wake.wait(), timeout=self.poll_interval)

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        """Commit the cursors of the consumers that finished these batches (all persisted by now)."""
        updates: dict[str, int] = {}
        for item in batch:
            outcome = item.outcome
            if outcome.failed:
                # A cursor is a high-water mark: committing a later batch would skip this one for whoever
                # failed it. Ending the group makes every watcher restart and re-read from its cursor.
                raise RuntimeError(
                    f"{outcome.failed} Carerix watcher(s) failed to persist events of sequences "
                    f"{item.broker_payload.after + 1}..{item.broker_payload.upto}; re-reading from the cursors"
                )
            if not outcome.is_clean:
                continue
            for consumer, value in item.broker_payload.done.items():
                updates[consumer] = max(updates.get(consumer, 0), value)
        await self.commit(updates)

    async def commit(self, updates: dict[str, int]) -> None:
        todo = {c: v for c, v in updates.items() if v > self._committed.get(c, -1)}
        if not todo:
            return
        store = await self._store()

        def write() -> None:
            for consumer, value in todo.items():
                store.advance_cursor(consumer, value)

        await asyncio.to_thread(write)
        now = asyncio.get_running_loop().time()
        for consumer, value in todo.items():
            self._committed[consumer] = value
            self._committed_at[consumer] = now

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)
        per_loop = _SIGNALS.get(asyncio.get_running_loop())
        if per_loop is not None:
            per_loop.pop(self.key, None)


# -- the watcher trigger ----------------------------------------------------------------------------------


class CarerixEventTrigger(BaseEventTrigger):
    """Fire once per stored Carerix event that matches, for ``AssetWatcher``\\ s (event-driven DAGs).

    :param event_types: ``entity:action`` patterns; ``crmatch:*``, ``*:created`` and ``*`` are allowed.
    :param condition: Carerix condition language, evaluated on the stored payload (``data.statusinfo eq '1'``).
    :param webhook_id: only events Carerix delivered for this webhook.
    :param application_id: only events of this webhook application.
    :param tenant: only events of this tenant.
    :param consumer: name of this watcher's durable cursors; unique per watcher. Default: derived from the
        filters, so changing a filter starts a new consumer (at the end of the log).
    :param poll_interval: seconds between queries (on PostgreSQL a safety net behind LISTEN/NOTIFY).
    :param store_url: SQLAlchemy URL of the event store without a password; default: resolved on the
        triggerer (``CARERIX_EVENT_STORE_URL``, ``[carerix] event_store_url``, ``$AIRFLOW_HOME``).
    """

    def __init__(
        self,
        *,
        event_types: str | Iterable[str] | None = None,
        condition: str | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        consumer: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        store_url: str | None = None,
    ) -> None:
        super().__init__()
        self.filter = EventFilter.build(event_types, condition, webhook_id, application_id, tenant)
        self.event_types = list(self.filter.event_types)
        self.condition = self.filter.condition
        self.webhook_id = self.filter.webhook_id
        self.application_id = self.filter.application_id
        self.tenant = self.filter.tenant
        self.poll_interval = float(poll_interval)
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.store_url = _validate_store_url(store_url)
        self.consumer = _clean_id(consumer) or self._default_consumer()
        # Where this subscriber stands in the log (in memory; the store holds the committed value).
        self._position: int | None = None
        self._last_done_at = 0.0

    def _default_consumer(self) -> str:
        spec = json.dumps(
            [self.event_types, self.condition, self.webhook_id, self.application_id, self.tenant],
            separators=(",", ":"),
        )
        return "watcher-" + hashlib.sha256(spec.encode()).hexdigest()[:16]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self.filter.serialize(),
                "consumer": self.consumer,
                "poll_interval": self.poll_interval,
                "store_url": self.store_url,
            },
        )

    # shared stream (Airflow >= 3.3) ----------------------------------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        return stream_key(self.store_url, self.poll_interval)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> CarerixStoreProducer:
        return CarerixStoreProducer(store_url=kwargs.get("store_url"), poll_interval=kwargs["poll_interval"])

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Fast path (not used while ack mode is on); kept so the stream works without a producer."""
        producer = cls.create_shared_stream_producer(kwargs)
        try:
            async for raw, _ in producer.open_stream():
                yield raw
        finally:
            await producer.aclose()

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        try:
            await self._start()
        except Exception as exc:
            yield TriggerEvent(error_payload(f"cannot start Carerix watcher {self.consumer!r}: {exc}"))
            return
        signal = _signal_for(self.shared_stream_key())
        signal.head_requested = True
        signal.wake.set()
        async for batch in shared_stream:
            async for event in self._handle(batch):
                yield event

    # standalone (Airflow 3.0-3.2, or shared streams off) -----------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            await self._start()
        except Exception as exc:
            yield TriggerEvent(error_payload(f"cannot start Carerix watcher {self.consumer!r}: {exc}"))
            return
        producer = CarerixStoreProducer(
            store_url=self.store_url,
            poll_interval=self.poll_interval,
            key=("standalone", id(self)),
            query=self.filter.query_kwargs(),
        )
        try:
            async for batch, _ in producer.open_stream():
                async for event in self._handle(batch):
                    yield event
                # Resumed: the triggerer has taken every event of this batch.
                await producer.commit(dict(batch.done))
        finally:
            await producer.aclose()

    # shared by both paths ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        self.filter.parsed_condition()  # a bad condition is an error event, not a silent non-match
        store = await asyncio.to_thread(EventStore, self.store_url)
        try:
            self._position = await asyncio.to_thread(ensure_consumer, store, self.consumer)
        finally:
            await asyncio.to_thread(store.close)

    def _matches(self, stored: StoredEvent) -> bool:
        try:
            return self.filter.matches(stored)
        except Exception:  # conditions never raise by contract; a bug must not stop the watcher
            log.exception("Carerix condition failed on event %s; skipped", stored.event_id)
            return False

    async def _handle(self, batch: StoreBatch) -> AsyncIterator[TriggerEvent]:
        """Yield this watcher's events of one batch, catching up from its cursor first if it is behind."""
        if batch.error is not None:
            yield TriggerEvent(error_payload(batch.error))
            return
        assert self._position is not None
        fired = False
        if batch.after > self._position:
            # Joined late, or restarted: events between the cursor and the batch were broadcast before this
            # watcher subscribed. Read them with this watcher's own filters, inside this batch's ack window.
            async for event in self._catch_up(batch.after):
                fired = True
                yield event
        for stored in batch.events:
            if stored.sequence <= self._position:
                continue  # redelivery after a restart: already fired (idempotent by sequence/event id)
            if self._matches(stored):
                fired = True
                yield TriggerEvent(event_payload(stored))
            self._position = stored.sequence
        self._position = max(self._position, batch.upto)
        now = asyncio.get_running_loop().time()
        if fired or now - self._last_done_at >= IDLE_CURSOR_REFRESH:
            self._last_done_at = now
            batch.done[self.consumer] = max(batch.done.get(self.consumer, 0), self._position)

    async def _catch_up(self, upto: int) -> AsyncIterator[TriggerEvent]:
        assert self._position is not None
        store = await asyncio.to_thread(EventStore, self.store_url)
        try:
            while self._position < upto:
                rows = await asyncio.to_thread(
                    store.events_after, self._position, limit=PAGE_SIZE, **self.filter.query_kwargs()
                )
                rows = [r for r in rows if r.sequence <= upto]
                for stored in rows:
                    if self._matches(stored):
                        yield TriggerEvent(event_payload(stored))
                    self._position = stored.sequence
                if len(rows) < PAGE_SIZE:
                    break
            self._position = max(self._position, upto)
        finally:
            await asyncio.to_thread(store.close)

    # for the DAG's task: drain what is not processed yet (README, "Bursts") ------------------

    def unprocessed_events(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Every matching event after this consumer's processing cursor, oldest first (sync, for tasks).

        Asset-triggered runs can miss asset events that arrive while a run is being created (issue 8 of this
        provider); the store does not. So a task treats its triggering asset events as a wake-up, takes
        everything not processed yet from here, and calls :meth:`commit_processed` when done.
        """
        _, processed, _ = cursor_names(self.consumer)
        result: list[dict[str, Any]] = []
        with EventStore(self.store_url) as store:
            position = store.get_cursor(processed)
            while limit is None or len(result) < limit:
                rows = store.events_after(position, limit=PAGE_SIZE, **self.filter.query_kwargs())
                for stored in rows:
                    position = stored.sequence
                    if self._matches(stored):
                        result.append(event_payload(stored))
                if len(rows) < PAGE_SIZE:
                    break
        return result if limit is None else result[:limit]

    def commit_processed(self, sequence: int) -> int:
        """Move the processing cursor to ``sequence`` (never backwards); returns the cursor afterwards."""
        _, processed, _ = cursor_names(self.consumer)
        with EventStore(self.store_url) as store:
            return store.advance_cursor(processed, int(sequence))


# -- the sensor's trigger ---------------------------------------------------------------------------------


def find_first(
    store: EventStore, flt: EventFilter, *, after: int, since: datetime | None
) -> tuple[StoredEvent | None, int]:
    """First matching event after sequence ``after`` received after ``since``; also the last sequence read."""
    position = after
    while True:
        rows = store.events_after(position, limit=PAGE_SIZE, received_after=since, **flt.query_kwargs())
        for stored in rows:
            position = stored.sequence
            if flt.matches(stored):
                return stored, position
        if len(rows) < PAGE_SIZE:
            return None, position


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class CarerixEventSensorTrigger(BaseTrigger):
    """Fire once: the first matching event received after ``since``, a timeout at ``deadline``, or an error.

    Stateless on purpose: after a triggerer restart it scans from ``since`` again, which finds the same first
    event, so a deferred sensor needs no cursor.
    """

    def __init__(
        self,
        *,
        event_types: str | Iterable[str] | None = None,
        condition: str | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        since: str | None = None,
        deadline: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        store_url: str | None = None,
    ) -> None:
        super().__init__()
        self.filter = EventFilter.build(event_types, condition, webhook_id, application_id, tenant)
        self.event_types = list(self.filter.event_types)
        self.condition = self.filter.condition
        self.webhook_id = self.filter.webhook_id
        self.application_id = self.filter.application_id
        self.tenant = self.filter.tenant
        self.since = _iso(parse_time(since))
        self.deadline = _iso(parse_time(deadline))
        self.poll_interval = float(poll_interval)
        self.store_url = _validate_store_url(store_url)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self.filter.serialize(),
                "since": self.since,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "store_url": self.store_url,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        since = parse_time(self.since)
        deadline = parse_time(self.deadline)
        signal = _Signal()
        listener: _Listener | None = None
        store: EventStore | None = None
        position = 0
        failures = 0
        try:
            self.filter.parsed_condition()
            store = await asyncio.to_thread(EventStore, self.store_url)
            if store.dialect == "postgresql":
                listener = _Listener(store.url, signal)
            while True:
                if listener is not None:
                    await listener.ensure()
                signal.wake.clear()
                try:
                    found, position = await asyncio.to_thread(
                        find_first, store, self.filter, after=position, since=since
                    )
                    failures = 0
                except StoreUnavailable as exc:
                    failures += 1
                    if failures >= 5:
                        yield TriggerEvent(error_payload(f"Carerix event store unavailable: {exc}"))
                        return
                    found = None
                if found is not None:
                    yield TriggerEvent(event_payload(found))
                    return
                wait = self.poll_interval * (2 ** min(failures, 5))
                if deadline is not None:
                    left = (deadline - datetime.now(timezone.utc)).total_seconds()
                    if left <= 0:
                        yield TriggerEvent(
                            {
                                "status": "timeout",
                                "message": f"no matching Carerix event before {self.deadline}",
                                "deadline": self.deadline,
                            }
                        )
                        return
                    wait = min(wait, left)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(signal.wake.wait(), timeout=wait)
        except Exception as exc:
            log.exception("Carerix event sensor trigger failed")
            yield TriggerEvent(error_payload(f"{type(exc).__name__}: {exc}"))
        finally:
            if listener is not None:
                await listener.close()
            if store is not None:
                await asyncio.to_thread(store.close)
