"""Group commit in front of the event store: concurrent requests share one transaction (and one fsync).

Requests hand their event to one writer thread, which takes every request waiting at that moment, commits
them in one transaction, hands each request its answer and at once takes the next group. Under load a group
grows by itself while the previous commit is in flight; alone, a request waits for one commit. Durability
therefore costs one fsync per group, not per event, and a 2xx still means "committed".

The writer is a thread that drains a thread-safe queue itself, not an asyncio task dispatching to an
executor: the next group starts the moment the last commit ends, without waiting for the event loop to get
round to it (under load the loop is busy reading requests, and every group waited behind them).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_carerix import metrics
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import (
    EventRejected,
    EventStore,
    Provenance,
    StoreUnavailable,
    unavailable_cause,
)

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

_Item = tuple[bytes, EventPayload, Provenance]
_Result = tuple[int, bool] | BaseException
_Waiting = tuple[_Item, "asyncio.Future[tuple[int, bool]]", asyncio.AbstractEventLoop]
_STOP = object()


class GroupCommitter:
    """One writer thread in front of one :class:`EventStore`, for requests of any event loop.

    Started lazily on the first request because a FastAPI app mounted inside Airflow's API server does not
    receive lifespan events.

    It remembers how its last write ended (:meth:`last_outcome`): a receiver under load knows from its own
    commits, without another probe, whether a write reaches the disk now.
    """

    def __init__(
        self, store: EventStore, *, max_batch: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self.committed = 0
        self.clock = clock
        self._outcome: tuple[float, StoreUnavailable | None] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def enqueue(
        self, raw: bytes, event: EventPayload, provenance: Provenance | None = None
    ) -> asyncio.Future[tuple[int, bool]]:
        """A future resolved once the event is committed (``StoreUnavailable`` when it could not be)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, bool]] = loop.create_future()
        if self._closed:
            future.set_exception(StoreUnavailable("the receiver is shutting down", "unavailable"))
            return future
        if self._thread is None:
            self._start()
        self._queue.put(((raw, event, provenance or Provenance()), future, loop))
        return future

    async def submit(
        self, raw: bytes, event: EventPayload, provenance: Provenance | None = None
    ) -> tuple[int, bool]:
        return await self.enqueue(raw, event, provenance)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="carerix-group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Waiting] = [first]
            while len(batch) < self.max_batch:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is _STOP:
                    self._queue.put(_STOP)  # after this group
                    break
                batch.append(waiting)
            started = time.perf_counter()
            results = self._commit([item for item, _, _ in batch])
            self._record(results)
            _count(results, (time.perf_counter() - started) * 1000.0)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Result]]] = {}
            for (_, future, loop), result in zip(batch, results, strict=True):
                by_loop.setdefault(loop, []).append((future, result))
            for loop, answers in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_answer, answers)
                except RuntimeError:
                    pass  # that loop is closed: nobody is left waiting

    def _commit(self, items: list[_Item]) -> list[_Result]:
        try:
            results: list[_Result] = list(self._insert(items))
        except StoreUnavailable as exc:
            return [exc] * len(items)
        except Exception as exc:
            if len(items) == 1:
                return [_classify(exc, items[0][1])]
            # Not the store being down: one odd item must not fail the requests it was grouped with.
            # Type name only: a database error message may quote the payload (personal data).
            log.warning(
                "Group commit of %d events failed (%s); storing them one by one",
                len(items),
                type(exc).__name__,
            )
            return self._one_by_one(items)
        self.batches += 1
        self.committed += len(items)
        return results

    def _record(self, results: Sequence[Any]) -> None:
        """A write that failed for the store's sake (not an event refused for its own) is the outcome."""
        failed = next((r for r in results if isinstance(r, StoreUnavailable)), None)
        self._outcome = (self.clock(), failed)

    def last_outcome(self, within: float) -> tuple[StoreUnavailable | None] | None:
        """``(None,)`` if the last write within ``within`` seconds committed, ``(error,)`` if it failed; ``None``
        when nothing was written that recently (then only a probe can tell)."""
        if self._outcome is None or self.clock() - self._outcome[0] > within:
            return None
        return (self._outcome[1],)

    def _insert(self, items: list[_Item]) -> list[tuple[int, bool] | BaseException]:
        """``insert_deliveries``: deliveries that may replay a purged event are refused (see ``purge``)."""
        return list(self.store.insert_deliveries(items))

    def _one_by_one(self, items: Sequence[_Item]) -> list[_Result]:
        out: list[_Result] = []
        for item in items:
            try:
                [result] = self._insert([item])
                out.append(_classify(result, item[1]) if isinstance(result, BaseException) else result)
            except Exception as exc:
                out.append(_classify(exc, item[1]))
        return out

    def close(self) -> None:
        """Stop the writer once the groups already queued are committed (it is a daemon: exit never waits)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)


def _count(results: Sequence[_Result], milliseconds: float) -> None:
    """One group's metrics, sent from the writer thread: the requests' event loop sends nothing on success."""
    stored = duplicates = 0
    for result in results:
        if isinstance(result, tuple):
            if result[1]:
                stored += 1
            else:
                duplicates += 1
    metrics.incr(metrics.RECEIVER_STORED, stored)
    metrics.incr(metrics.RECEIVER_DUPLICATES, duplicates)
    metrics.timing(metrics.RECEIVER_COMMIT, milliseconds)
    metrics.gauge(metrics.RECEIVER_GROUP_SIZE, len(results))


def _answer(answers: list[tuple[asyncio.Future[Any], _Result]]) -> None:
    """On the requests' event loop: wake each (a request that gave up waiting has a cancelled future)."""
    for future, result in answers:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _classify(exc: BaseException, event: EventPayload) -> BaseException:
    """What a request learns about its event: refused (4xx), or the store failed (503, Carerix retries).

    An unexpected error is treated as a store failure: a retry later may succeed, a 4xx would make Carerix
    drop the event. It is logged by type and event id only, never with its message (it may quote the payload).
    """
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, EventRejected):
        return exc if exc.event_id == event.id else EventRejected(str(exc), event.id, exc.field)
    log.error("Event %s could not be stored: unexpected %s", event.id, type(exc).__name__)
    return StoreUnavailable(f"event store failed: {type(exc).__name__}", unavailable_cause(exc))
