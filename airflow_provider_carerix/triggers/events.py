"""Triggers that turn rows of the Carerix event store into Airflow trigger events.

* :class:`CarerixEventTrigger` (a ``BaseEventTrigger``) drives ``AssetWatcher``\\ s: it follows its consumer's
  delivered cursor through the store and fires one ``TriggerEvent`` per matching event, forever. DAG authors
  normally get it from :class:`~airflow_provider_carerix.events.CarerixEvents` rather than build it.
* :class:`CarerixEventSensorTrigger` (a plain ``BaseTrigger``) serves
  :class:`~airflow_provider_carerix.sensors.events.CarerixEventSensor`: it fires exactly once, for the first
  matching event received after ``since``, or with a timeout at ``deadline``.

Trigger events carry a reference, never the payload (Airflow logs fired events and keeps them as asset-event
extra); the task reads the payload from the store::

    {"status": "event", "event_id": "...", "type": "cremployee:updated", "entity_id": "1234",
     "sequence": 42, "received_at": "2024-02-14T14:24:41.123456+00:00"}
    {"status": "timeout", "message": "...", "deadline": "..."}            # sensor trigger only
    {"status": "error", "message": "..."}                                 # sensor trigger only

Delivery (the docs' "Waiting for events" page has the long version): on Airflow >= 3.3 every watcher of one
store shares one poll loop in ack mode (:mod:`~airflow_provider_carerix.triggers.shared_stream`); a
watcher's delivered cursor moves only after Airflow persisted the asset events it fired, and after a
triggerer restart a watcher skips everything at or below its cursor. On 3.1/3.2 ``run()`` polls on its own
and moves the cursor when the triggerer resumes it after a batch. A store outage never becomes an event:
watchers retry with backoff and continue from their cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Hashable, Iterable
from datetime import datetime, timezone
from typing import Any

from airflow_provider_carerix import metrics
from airflow_provider_carerix.hooks.event_store import (
    DEFAULT_CONN_ID,
    DEFAULT_START_FROM,
    CarerixEventStoreHook,
    check_url_has_no_password,
    normalise_start_from,
)
from airflow_provider_carerix.store import StoreUnavailable
from airflow_provider_carerix.store.filters import (
    EventFilter,
    clean_id,
    error_payload,
    event_payload,
    iso,
    parse_time,
)
from airflow_provider_carerix.triggers.shared_stream import (
    HAS_SHARED_STREAMS,
    RETRY_MAX,
    CarerixStoreProducer,
    NotifyListener,
    StoreBatch,
    StorePoller,
    retry_while_unavailable,
    stream_key,
)
from airflow_provider_carerix.version_compat import BaseEventTrigger, BaseTrigger, TriggerEvent

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "HAS_SHARED_STREAMS",
    "CarerixEventSensorTrigger",
    "CarerixEventTrigger",
]

log = logging.getLogger(__name__)

# Latency target for the polling path is p50 <= 200 ms; one indexed query per 0.25 s per store is cheap.
DEFAULT_POLL_INTERVAL = 0.25
# An idle watcher's cursor is written at most this often (seconds); one that fired is written every batch.
IDLE_CURSOR_REFRESH = 60.0


def _classpath(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class CarerixEventTrigger(BaseEventTrigger):
    """Fire once per stored Carerix event that matches, for ``AssetWatcher``\\ s (event-driven DAGs).

    :param event_types: ``entity:action`` patterns; ``crmatch:*``, ``*:created`` and ``*`` are allowed.
    :param condition: Carerix condition language, evaluated on the stored payload (``data.statusinfo eq '1'``).
    :param webhook_id: only events Carerix delivered for this webhook.
    :param application_id: only events of this webhook application.
    :param tenant: only events of this tenant.
    :param consumer: name of this watcher's durable cursors; unique per watcher. Default: derived from the
        filters, so changing a filter starts a new consumer.
    :param start_from: where a new consumer starts (see :class:`~airflow_provider_carerix.events.CarerixEvents`).
    :param poll_interval: seconds between queries (on PostgreSQL a safety net behind LISTEN/NOTIFY).
    :param store_conn_id: Airflow connection of the event store (default ``carerix_event_store``; without
        that connection, ``[carerix] event_store_url``, then ``$AIRFLOW_HOME``).
    :param store_url: a password-less store URL instead (kwargs are visible in the UI).
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
        store_conn_id: str | None = DEFAULT_CONN_ID,
        store_url: str | None = None,
        start_from: str = DEFAULT_START_FROM,
    ) -> None:
        super().__init__()
        self.filter = EventFilter.build(event_types, condition, webhook_id, application_id, tenant)
        self.start_from = normalise_start_from(start_from)
        self.poll_interval = float(poll_interval)
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.store_conn_id = clean_id(store_conn_id)
        self.store_url = check_url_has_no_password(store_url)
        self.consumer = clean_id(consumer) or f"watcher-{self.filter.fingerprint()}"
        # Where this watcher stands in the log (in memory; the store holds the committed value).
        self._position: int | None = None
        self._last_done_at = 0.0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            _classpath(self),
            {
                **self.filter.serialize(),
                "consumer": self.consumer,
                "poll_interval": self.poll_interval,
                "store_conn_id": self.store_conn_id,
                "store_url": self.store_url,
                "start_from": self.start_from,
            },
        )

    def _hook(self) -> CarerixEventStoreHook:
        return CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.store_url)

    # shared stream (Airflow >= 3.3) ----------------------------------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        return (
            stream_key(self.store_conn_id, self.store_url, self.poll_interval) if HAS_SHARED_STREAMS else None
        )

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> Any:
        hook = CarerixEventStoreHook(
            store_conn_id=kwargs.get("store_conn_id", DEFAULT_CONN_ID), store_url=kwargs.get("store_url")
        )
        return CarerixStoreProducer(hook, poll_interval=kwargs["poll_interval"])

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Fast path (unused while ack mode is on); kept so the stream works without a producer."""
        producer = cls.create_shared_stream_producer(kwargs)
        try:
            async for raw, _ in producer.open_stream():
                yield raw
        finally:
            await producer.aclose()

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        try:
            await self._start(hook)
            async for batch in shared_stream:
                async for event in self._handle(batch, hook):
                    yield event
        finally:
            await asyncio.to_thread(hook.close)

    # standalone (Airflow 3.1/3.2, or shared streams off) -----------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        await self._start(hook)
        poller = StorePoller(
            self._hook(),
            poll_interval=self.poll_interval,
            query=self.filter.query_kwargs(),
            head_interval=None,
        )
        try:
            async for batch, _ in poller.open_stream():
                async for event in self._handle(batch, hook):
                    yield event
                # Resumed: the triggerer has taken every event of this batch.
                await poller.commit(dict(batch.done))
        finally:
            await poller.aclose()
            await asyncio.to_thread(hook.close)

    # shared by both paths ---------------------------------------------------------------------------------

    async def _start(self, hook: CarerixEventStoreHook) -> None:
        # Permanent problems (bad URL, unknown connection, bad condition) raise: the trigger fails with a
        # message naming the setting. A store that is down is waited for.
        self.filter.parsed_condition()
        await hook.astore()
        self._position = await retry_while_unavailable(
            f"starting Carerix watcher {self.consumer!r}",
            functools.partial(hook.ensure_consumer, self.consumer, start_from=self.start_from),
        )

    async def _handle(self, batch: StoreBatch, hook: CarerixEventStoreHook) -> AsyncIterator[TriggerEvent]:
        """Yield this watcher's events of one batch, catching up from its cursor first if it is behind."""
        assert self._position is not None
        fired = 0
        oldest: datetime | None = None
        try:
            position = self._position
            assert position is not None  # set by _start, before the first batch
            if batch.after > position:
                # Joined late, or restarted: events between the cursor and the batch were broadcast before this
                # watcher subscribed. Read them with this watcher's own filters, inside this batch's ack window.
                rows = await retry_while_unavailable(
                    f"catching up Carerix watcher {self.consumer!r}",
                    lambda: list(hook.matching_after(self.filter, position, upto=batch.after)),
                )
                for stored, matched in rows:
                    if matched:
                        fired += 1
                        oldest = oldest or stored.received_at
                        yield TriggerEvent(event_payload(stored))
                    self._position = stored.sequence
                self._position = max(self._position, batch.after)
            for stored in batch.events:
                if stored.sequence <= self._position:
                    continue  # redelivery after a restart: already fired
                if self.filter.matches(stored):
                    fired += 1
                    oldest = oldest or stored.received_at
                    yield TriggerEvent(event_payload(stored))
                self._position = stored.sequence
            self._position = max(self._position, batch.upto)
        finally:
            # Also when the triggerer stops taking events in the middle of the batch.
            if fired:
                metrics.incr(metrics.WATCHER_FIRED, fired, consumer=self.consumer)
                if oldest is not None:
                    lag = (datetime.now(timezone.utc) - oldest).total_seconds() * 1000.0
                    metrics.timing(metrics.WATCHER_LAG, max(lag, 0.0), consumer=self.consumer)
        now = asyncio.get_running_loop().time()
        if fired or now - self._last_done_at >= IDLE_CURSOR_REFRESH:
            self._last_done_at = now
            batch.done[self.consumer] = max(batch.done.get(self.consumer, 0), self._position)


class CarerixEventSensorTrigger(BaseTrigger):
    """Fire once: the first matching event received after ``since``, a timeout at ``deadline``, or an error.

    Stateless on purpose: after a triggerer restart it scans from ``since`` again, which finds the same first
    event, so a deferred sensor needs no cursor. A store outage is waited out (the deadline still holds).
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
        store_conn_id: str | None = DEFAULT_CONN_ID,
        store_url: str | None = None,
    ) -> None:
        super().__init__()
        self.filter = EventFilter.build(event_types, condition, webhook_id, application_id, tenant)
        self.since = iso(parse_time(since))
        self.deadline = iso(parse_time(deadline))
        self.poll_interval = float(poll_interval)
        self.store_conn_id = clean_id(store_conn_id)
        self.store_url = check_url_has_no_password(store_url)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            _classpath(self),
            {
                **self.filter.serialize(),
                "since": self.since,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "store_conn_id": self.store_conn_id,
                "store_url": self.store_url,
            },
        )

    def _timeout(self) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": "timeout",
                "message": f"no matching Carerix event before {self.deadline}",
                "deadline": self.deadline,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        since = parse_time(self.since)
        deadline = parse_time(self.deadline)
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.store_url)
        wake = asyncio.Event()
        listener: NotifyListener | None = None
        position = 0
        failures = 0
        try:
            self.filter.parsed_condition()
            store = await hook.astore()
            with contextlib.suppress(StoreUnavailable):
                await asyncio.to_thread(hook.check_receivers)
            if store.dialect == "postgresql":
                listener = NotifyListener(store.url, wake)
            while True:
                if listener is not None:
                    await listener.ensure()
                wake.clear()
                try:
                    found, position = await asyncio.to_thread(
                        hook.find_first, self.filter, after=position, since=since
                    )
                    failures = 0
                except StoreUnavailable as exc:
                    if failures == 0:
                        log.warning("Carerix event store unavailable, retrying: %s", exc)
                    failures += 1
                    found = None
                if found is not None:
                    yield TriggerEvent(event_payload(found))
                    return
                wait = min(self.poll_interval * (2 ** min(failures, 7)), RETRY_MAX)
                if deadline is not None:
                    left = (deadline - datetime.now(timezone.utc)).total_seconds()
                    if left <= 0:
                        yield self._timeout()
                        return
                    wait = min(wait, left)
                try:
                    await asyncio.wait_for(wake.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
        except Exception as exc:
            log.exception("Carerix event sensor trigger failed")
            yield TriggerEvent(error_payload(f"{type(exc).__name__}: {exc}"))
        finally:
            if listener is not None:
                await listener.close()
            await asyncio.to_thread(hook.close)
