"""How fast a Carerix delivery becomes a TriggerEvent, and what idle watchers cost.

* Latency: an event POSTed to a real receiver (``carerix-receiver serve`` subprocess) -> the
  ``CarerixEventTrigger`` yields its ``TriggerEvent``, through Airflow 3.3's ``SharedStreamManager`` in ack mode
  (persist confirmations given at once, like a triggerer round). p50/p99 over 200 events spaced 50-150 ms
  apart (random, so the spacing does not phase-lock with the poll), on SQLite (polling) and on PostgreSQL
  (LISTEN/NOTIFY; a throwaway cluster, skipped when initdb is missing).
* Idle cost: 1,000 watchers with different filters on one store, no events: store queries per second and CPU
  of this process (the triggerer side).

Targets: p50 <= 200 ms polling, <= 50 ms with NOTIFY; 1,000 watchers <= one query per poll interval.

    .venv/bin/python benchmarks/latency.py [--events 200] [--idle-seconds 10] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_provider_carerix.store import EventStore  # noqa: E402
from airflow_provider_carerix.triggers import events as trig  # noqa: E402
from airflow_provider_carerix.triggers.events import CarerixEventTrigger  # noqa: E402
from tests.fixtures.receiver import SECRET_HEADER, start_receiver_process  # noqa: E402
from tests.guide import guide_event  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def body(i: int) -> dict[str, Any]:
    return guide_event(i, ["touser.lastname"])


class Harness:
    """Airflow 3.3's shared-stream manager driving watchers, confirming persistence immediately."""

    def __init__(self) -> None:
        from airflow.triggers.shared_stream import SharedStreamManager

        self.manager = SharedStreamManager(ack_timeout=120)
        self.tasks: list[asyncio.Task[None]] = []
        self.on_event: Any = None

    def add(self, trigger_id: int, trigger: CarerixEventTrigger) -> None:
        self.tasks.append(asyncio.ensure_future(self._run(trigger_id, trigger)))

    async def _run(self, trigger_id: int, trigger: CarerixEventTrigger) -> None:
        key = trigger.shared_stream_key()
        stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
        try:
            async for event in trigger.filter_shared_stream(stream):
                now = time.perf_counter()
                seq = self.manager.bind_pending_event(trigger_id=trigger_id, key=key)
                if self.on_event is not None:
                    self.on_event(event.payload, now)
                if seq is not None:
                    self.manager.confirm_persisted([seq])
        finally:
            await self.manager.unsubscribe(trigger_id, key)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.manager.stop_all()


async def measure_latency(store_url: str, receiver_url: str, count: int) -> list[float]:
    import httpx

    store = EventStore(store_url)
    consumer = "bench-" + uuid.uuid4().hex[:8]
    harness = Harness()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_event(payload: dict[str, Any], at: float) -> None:
        if payload.get("status") != "event":
            print("  trigger reported:", payload, file=sys.stderr)
            return
        started = sent.get(payload["event_id"])
        if started is not None:
            latencies.append(at - started)
            if len(latencies) >= count:
                done.set()

    harness.on_event = on_event
    harness.add(
        1, CarerixEventTrigger(event_types=["cremployee:updated"], consumer=consumer, store_url=store_url)
    )
    while store.get_cursor(f"{consumer}:origin") == 0:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)

    def produce() -> None:
        rng = random.Random(42)
        with httpx.Client(timeout=30) as client:
            for i in range(count):
                event = body(i)
                content = json.dumps(event).encode()
                sent[event["id"]] = time.perf_counter()
                response = client.post(
                    f"{receiver_url}/events",
                    content=content,
                    headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
                )
                if response.status_code >= 300:
                    print("  receiver answered", response.status_code, response.text, file=sys.stderr)
                time.sleep(rng.uniform(0.05, 0.15))

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=count * 2 + 60)
    finally:
        await loop.run_in_executor(None, producer.join)
        await harness.stop()
        store.close()
    return latencies


def report(label: str, latencies: list[float]) -> None:
    ms = [v * 1000 for v in latencies]
    print(
        f"  {label:<38} n={len(ms)}  p50 = {percentile(ms, 50):6.1f} ms  p99 = {percentile(ms, 99):6.1f} ms"
        f"  mean = {statistics.fmean(ms):6.1f} ms  max = {max(ms):6.1f} ms"
    )


async def measure_idle(store_url: str, watchers: int, seconds: float) -> tuple[float, float, int, float]:
    created: list[trig.CarerixStoreProducer] = []
    original = trig.CarerixEventTrigger.create_shared_stream_producer.__func__  # type: ignore[attr-defined]

    def spy(cls: type, kwargs: dict[str, Any]) -> trig.CarerixStoreProducer:
        producer = original(cls, kwargs)
        created.append(producer)
        return producer

    trig.CarerixEventTrigger.create_shared_stream_producer = classmethod(spy)  # type: ignore[method-assign,assignment]
    store = EventStore(store_url)
    harness = Harness()
    try:
        for i in range(watchers):
            harness.add(
                i,
                CarerixEventTrigger(
                    event_types=["crjob:updated"] if i % 2 else ["crmatch:*"],
                    condition=f"data.statusinfo eq '{i}'",
                    consumer=f"idle-{i}",
                    store_url=store_url,
                ),
            )
        while store.get_cursor(f"idle-{watchers - 1}:origin") == 0:
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # let the joins' catch-up windows settle
        queries = sum(p.queries for p in created)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        queries = sum(p.queries for p in created) - queries
        return queries / wall, cpu / wall * 100, len(created), created[0].poll_interval
    finally:
        await harness.stop()
        trig.CarerixEventTrigger.create_shared_stream_producer = classmethod(original)  # type: ignore[method-assign]
        store.close()


def run_backend(label: str, store_url: str, tmp: Path, count: int) -> None:
    EventStore(store_url).ping()
    proc = start_receiver_process(store_url, secrets=[SECRET], log_dir=tmp)
    try:
        latencies = asyncio.run(measure_latency(store_url, proc.url, count))
    finally:
        proc.stop()
    report(label, latencies)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="carerix-bench-"))
    print(f"POST to receiver -> TriggerEvent yielded, {args.events} events, shared stream in ack mode")
    run_backend(
        f"SQLite, polling every {trig.DEFAULT_POLL_INTERVAL:g} s",
        f"sqlite:///{tmp / 'events.db'}",
        tmp,
        args.events,
    )
    if not args.skip_postgres:
        from tests.fixtures.postgres import PostgresCluster, find_pg_bin

        if find_pg_bin("initdb"):
            with PostgresCluster() as cluster:
                run_backend("PostgreSQL, LISTEN/NOTIFY", cluster.create_database(), tmp, args.events)
        else:
            print("  PostgreSQL: skipped (initdb not found)")

    qps, cpu, loops, interval = asyncio.run(
        measure_idle(f"sqlite:///{tmp / 'idle.db'}", args.watchers, args.idle_seconds)
    )
    print(
        f"Idle: {args.watchers} watchers, {args.idle_seconds:g} s: {loops} poll loop(s), {qps:.2f} store queries/s "
        f"(one per poll interval = {1 / interval:.2f}/s), CPU {cpu:.1f}% of one core"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
