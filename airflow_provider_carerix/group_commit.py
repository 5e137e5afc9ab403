"""Group commit in front of the event store: concurrent requests share one transaction (and one fsync).

Requests hand their event to one writer task which drains every request waiting at that moment and commits
them in one transaction, then wakes each request. Under load a group grows by itself while the previous commit
is in flight; alone, a request waits for one commit. Durability therefore costs one fsync per group, not per
event, and a 2xx still means "committed".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_provider_carerix.models import WebhookEvent
from airflow_provider_carerix.store import EventStore, Provenance, StoreUnavailable

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

_Item = tuple[bytes, WebhookEvent, Provenance]


class GroupCommitter:
    """One writer task per event loop, in front of one :class:`EventStore`.

    Started lazily on the first request because a FastAPI app mounted inside Airflow's API server does not
    receive lifespan events.
    """

    def __init__(self, store: EventStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self.committed = 0
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
                    await loop.run_in_executor(
                        self._executor, self.store.insert_many, [item for item, _ in batch]
                    )
                )
            except StoreUnavailable as exc:
                results = [exc] * len(batch)
            except Exception as exc:
                # Not the store being down: one odd item must not fail the requests it was grouped with.
                log.exception("Group commit of %d events failed; retrying them one by one", len(batch))
                results = [exc] if len(batch) == 1 else await self._one_by_one(batch)
            else:
                self.batches += 1
                self.committed += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(
                        StoreUnavailable(str(result)) if not isinstance(result, StoreUnavailable) else result
                    )
                else:
                    future.set_result(result)

    async def _one_by_one(self, batch: Sequence[tuple[_Item, Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        out: list[Any] = []
        for item, _ in batch:
            try:
                out.append(await loop.run_in_executor(self._executor, self.store.insert, *item))
            except Exception as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._executor.shutdown(wait=False)
