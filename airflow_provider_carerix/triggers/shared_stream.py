"""One poll loop per event store for every Carerix watcher in a triggerer.

The event trigger's delivery machinery, kept beside the thin triggers the way the Kafka provider keeps its
3.3 ``shared_stream.py`` beside ``await_message.py``:

* :class:`StorePoller` reads "events after the last sequence" once per ``poll_interval`` (at once on a
  PostgreSQL NOTIFY) and yields :class:`StoreBatch`\\ es; it also commits watchers' delivered cursors. The
  standalone ``run()`` of a trigger (Airflow 3.1/3.2) drives a private one with its filter in the query.
* :class:`CarerixStoreProducer` (Airflow >= 3.3 only, ``None`` before) is the same loop as a shared-stream
  producer in ack mode: Airflow broadcasts each batch to every watcher of the store and calls
  :meth:`CarerixStoreProducer.advance` only once every trigger event derived from it is persisted in
  Airflow's database; only then are cursors committed.

A store that is down is not an event: the poller logs once per outage, backs off and retries from the same
position, so nothing stored is skipped when the store returns. Errors that retrying cannot fix (a bad URL,
an unknown connection) end the stream with an exception naming the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_carerix import metrics
from airflow_provider_carerix.store import StoredEvent, StoreUnavailable
from airflow_provider_carerix.version_compat import HAS_SHARED_STREAMS, AdvanceItem, SharedStreamProducer

if TYPE_CHECKING:
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook

__all__ = [
    "HAS_SHARED_STREAMS",
    "CarerixStoreProducer",
    "NotifyListener",
    "StoreBatch",
    "StorePoller",
]

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# How often one poll loop asks whether a receiver still writes to its store (warns, never fails).
RECEIVERS_CHECK_INTERVAL = 300.0
# While idle, a head batch this often lets a watcher that joined (or restarted) behind the head catch up from
# its cursor without waiting for the next stored event. Costs no query.
HEAD_INTERVAL = 1.0
RETRY_MAX = 30.0

_T = TypeVar("_T")


async def retry_while_unavailable(what: str, call: Callable[..., _T], *args: Any) -> _T:
    """Run a sync store call in a thread, retrying with backoff while the store is unavailable.

    An outage is no event (so no DAG run) and no failed trigger: the call is made again, from the same
    position, until the store answers. Logged once per call, naming ``what`` was being done.
    """
    loop = asyncio.get_running_loop()
    delay = 0.25
    outage_since: float | None = None
    while True:
        try:
            result = await asyncio.to_thread(call, *args)
        except StoreUnavailable as exc:
            if outage_since is None:
                outage_since = loop.time()
                log.warning("Carerix event store unavailable while %s, retrying: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            continue
        if outage_since is not None:
            log.info("Carerix event store available again after %.1f s", loop.time() - outage_since)
        return result


@dataclass(eq=False)
class StoreBatch:
    """One raw item of the stream: every stored event with ``after < sequence <= upto``.

    ``events`` may be pre-filtered (standalone ``run()``); on a shared stream it is every event in the range.
    ``done`` is written by the watchers (consumer -> delivered cursor to commit) and read by the producer's
    ``advance`` once every watcher resolved the batch: Airflow's ``AdvanceItem`` only carries counts, so the
    shared in-memory batch is how the producer learns which cursors it may move.
    """

    after: int
    upto: int
    events: tuple[StoredEvent, ...] = ()
    done: dict[str, int] = field(default_factory=dict)


class NotifyListener:
    """LISTEN on the store's NOTIFY channel (PostgreSQL only); failures degrade to plain polling."""

    def __init__(self, url: str, wake: asyncio.Event) -> None:
        self._url = url
        self._wake = wake
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

            self._conn = await psycopg.AsyncConnection.connect(
                _conninfo(make_url(self._url)), autocommit=True
            )
            await self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._task = asyncio.create_task(self._read(), name="carerix-notify-listener")
        except Exception as exc:
            log.warning("Cannot LISTEN on the Carerix event store (%s); polling only", type(exc).__name__)
            self._retry_at = loop.time() + 30.0
            await self.close()

    async def _read(self) -> None:
        async for _ in self._conn.notifies():
            self._wake.set()

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


def _conninfo(url: Any) -> str:
    """libpq connection string from the store's URL, each part quoted by psycopg: a URL rendered back to text
    keeps a password's spaces unencoded, which libpq refuses (and LISTEN would silently fall back to polling)."""
    from psycopg.conninfo import make_conninfo

    parts = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    for key, value in url.query.items():
        parts[key] = " ".join(value) if isinstance(value, tuple) else value
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


class StorePoller:
    """The poll loop over one store; owns its hook, its NOTIFY listener and its wake-up event."""

    def __init__(
        self,
        hook: CarerixEventStoreHook,
        *,
        poll_interval: float,
        query: dict[str, Any] | None = None,
        head_interval: float | None = HEAD_INTERVAL,
    ) -> None:
        self.hook = hook
        self.poll_interval = float(poll_interval)
        self.query = query or {}
        self.head_interval = head_interval
        self.queries = 0
        self._committed: dict[str, int] = {}
        self._listener: NotifyListener | None = None
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        """Query now instead of at the end of the current interval."""
        if self._wake is not None:
            self._wake.set()

    async def open_stream(self) -> AsyncIterator[tuple[StoreBatch, StoreBatch]]:
        self._wake = wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        pos: int | None = None
        outage_since: float | None = None
        delay = min(self.poll_interval, 1.0)
        last_yield = loop.time()
        receivers_checked: float | None = None
        while True:
            try:
                store = await self.hook.astore()
                if store.dialect == "postgresql":
                    if self._listener is None:
                        self._listener = NotifyListener(store.url, wake)
                    await self._listener.ensure()
                if receivers_checked is None or loop.time() - receivers_checked >= RECEIVERS_CHECK_INTERVAL:
                    receivers_checked = loop.time()
                    await asyncio.to_thread(self.hook.check_receivers)
                if pos is None:
                    pos = await asyncio.to_thread(store.last_sequence)
                    self.queries += 1
                    metrics.incr(metrics.WATCHER_POLLS, outcome="ok")
                    head = StoreBatch(after=pos, upto=pos)
                    last_yield = loop.time()
                    yield head, head
                wake.clear()
                rows = await asyncio.to_thread(store.events_after, pos, limit=PAGE_SIZE, **self.query)
                self.queries += 1
                metrics.incr(metrics.WATCHER_POLLS, outcome="ok")
            except StoreUnavailable as exc:
                metrics.incr(metrics.WATCHER_POLLS, outcome="unavailable")
                # Transient (database down, locked): no event, no DAG run. Log once per outage, retry from the
                # same position with backoff, so nothing stored is skipped when the store returns.
                if outage_since is None:
                    outage_since = loop.time()
                    log.warning("Carerix event store unavailable, retrying with backoff: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if outage_since is not None:
                log.info("Carerix event store available again after %.1f s", loop.time() - outage_since)
                outage_since = None
                delay = min(self.poll_interval, 1.0)
            if rows:
                batch = StoreBatch(after=pos, upto=rows[-1].sequence, events=tuple(rows))
                pos = batch.upto
                last_yield = loop.time()
                yield batch, batch
                if len(rows) >= PAGE_SIZE:
                    continue
            elif self.head_interval is not None and loop.time() - last_yield >= self.head_interval:
                head = StoreBatch(after=pos, upto=pos)
                last_yield = loop.time()
                yield head, head
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.poll_interval)

    async def commit(self, updates: dict[str, int]) -> None:
        """Write delivered cursors that moved (never backwards).

        An outage here comes right after the watchers fired the batch: the write is retried until the store
        is back, because giving up would re-fire the whole batch after a restart (and failing would end the
        watcher). Writing a cursor again is harmless: a cursor never moves backwards.
        """
        todo = {c: v for c, v in updates.items() if v > self._committed.get(c, -1)}
        if not todo:
            return
        store = await self.hook.astore()

        def write() -> None:
            for consumer, value in todo.items():
                store.advance_cursor(consumer, value)

        await retry_while_unavailable(f"committing the cursors of {len(todo)} Carerix watcher(s)", write)
        self._committed.update(todo)

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await asyncio.to_thread(self.hook.close)


if HAS_SHARED_STREAMS:

    class CarerixStoreProducer(StorePoller, SharedStreamProducer):
        """The poll loop as an ack-mode shared-stream producer: cursors move only after Airflow persisted."""

        async def advance(self, batch: Sequence[AdvanceItem]) -> None:
            """Commit the cursors of the watchers that finished these batches (persisted by now)."""
            updates: dict[str, int] = {}
            for item in batch:
                outcome = item.outcome
                if outcome.failed:
                    # A cursor is a high-water mark: committing a later batch would skip this one for the
                    # watcher that failed it. Ending the group makes every watcher re-read from its cursor.
                    raise RuntimeError(
                        f"{outcome.failed} Carerix watcher(s) failed to persist events of sequences "
                        f"{item.broker_payload.after + 1}..{item.broker_payload.upto}; re-reading from the "
                        "cursors"
                    )
                if not outcome.is_clean:
                    continue
                for consumer, value in item.broker_payload.done.items():
                    updates[consumer] = max(updates.get(consumer, 0), value)
            await self.commit(updates)

else:  # pragma: no cover - Airflow 3.1/3.2
    CarerixStoreProducer = None  # type: ignore[assignment,misc]


def stream_key(store_conn_id: str | None, store_url: str | None, poll_interval: float) -> Hashable:
    """One poll loop per store setting and interval; built from kwargs only (no password, no lookup)."""
    return ("carerix-event-store", store_conn_id, store_url, float(poll_interval))
