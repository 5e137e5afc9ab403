"""Group commit in front of the event store: concurrent requests share one transaction (and one fsync).

Requests hand their event to one writer task which drains every request waiting at that moment and commits
them in one transaction, then wakes each request. Under load a group grows by itself while the previous commit
is in flight; alone, a request waits for one commit. Durability therefore costs one fsync per group, not per
event, and a 2xx still means "committed".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_provider_carerix.models import WebhookEvent
from airflow_provider_carerix.store import (
    EventRejected,
    EventStore,
    Provenance,
    StoreUnavailable,
    unavailable_cause,
)

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

_Item = tuple[bytes, WebhookEvent, Provenance]


class GroupCommitter:
    """One writer task per event loop, in front of one :class:`EventStore`.

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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carerix-commit")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[_Item, asyncio.Future[tuple[int, bool]]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def _ensure_started(self) -> asyncio.Queue[Any]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name="carerix-group-commit")
        return self._queue

    def enqueue(
        self, raw: bytes, event: WebhookEvent, provenance: Provenance | None = None
    ) -> asyncio.Future[tuple[int, bool]]:
        """A future resolved once the event is committed (``StoreUnavailable`` when it could not be)."""
        queue = self._ensure_started()
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        queue.put_nowait(((raw, event, provenance or Provenance()), future))
        return future

    async def submit(
        self, raw: bytes, event: WebhookEvent, provenance: Provenance | None = None
    ) -> tuple[int, bool]:
        return await self.enqueue(raw, event, provenance)

    async def _run(self, queue: asyncio.Queue[Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results: list[tuple[int, bool] | BaseException] = list(
                    await loop.run_in_executor(self._executor, self._insert, [item for item, _ in batch])
                )
            except StoreUnavailable as exc:
                results = [exc] * len(batch)
            except Exception as exc:
                if len(batch) == 1:
                    results = [_classify(exc, batch[0][0][1])]
                else:
                    # Not the store being down: one odd item must not fail the requests it was grouped with.
                    # Type name only: a database error message may quote the payload (personal data).
                    log.warning(
                        "Group commit of %d events failed (%s); storing them one by one",
                        len(batch),
                        type(exc).__name__,
                    )
                    results = await self._one_by_one(batch)
            else:
                self.batches += 1
                self.committed += len(batch)
            self._record(results)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

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

    async def _one_by_one(self, batch: Sequence[tuple[_Item, Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        out: list[Any] = []
        for item, _ in batch:
            try:
                [result] = await loop.run_in_executor(self._executor, self._insert, [item])
                out.append(_classify(result, item[1]) if isinstance(result, BaseException) else result)
            except Exception as exc:
                out.append(_classify(exc, item[1]))
        return out

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._executor.shutdown(wait=False)


def _classify(exc: BaseException, event: WebhookEvent) -> BaseException:
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
