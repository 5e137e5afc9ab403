"""The Carerix page with a big store: every API call of the page against 100,000 stored events.

Fills a store (SQLite, and a throwaway PostgreSQL cluster unless ``--no-postgres``) with N events spread over
the last 24 hours (8 types, 5,000 entities), serves the page's routes with uvicorn in this process's child
thread, and times each call the page makes over HTTP (median and max of ``--repeat`` calls). The baseline,
measured in the same run, is a route of the same app that answers without touching the store: the ratio says
what the store work costs on top of HTTP. Target: every call under 500 ms.

    .venv/bin/python benchmarks/ui.py [--events 100000] [--repeat 7] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_provider_carerix.store import EventStore  # noqa: E402
from airflow_provider_carerix.store import schema as store_module  # noqa: E402
from airflow_provider_carerix.ui.app import create_ui_router  # noqa: E402
from airflow_provider_carerix.ui.sections import page_sections  # noqa: E402

TYPES = [
    "cremployee:updated",
    "cremployee:created",
    "crmatch:updated",
    "crmatch:created",
    "crvacancy:updated",
    "crpublication:created",
    "crplacement:created",
    "crcontact:updated",
]


def fill(store: EventStore, count: int) -> None:
    store.ping()
    now = datetime.now(timezone.utc)
    rng = random.Random(7)
    batch: list[dict[str, object]] = []
    with store.engine.begin() as conn:
        for i in range(count):
            received = now - timedelta(seconds=86_000 * (count - i) / count)
            event_type = rng.choice(TYPES)
            entity = str(rng.randint(1, 5000))
            event_id = str(uuid.UUID(int=rng.getrandbits(128)))
            payload = {
                "id": event_id,
                "time": received.isoformat(),
                "type": event_type,
                "applicationId": "app-1",
                "webhookId": f"wh-{TYPES.index(event_type)}",
                "tenant": "bench",
                "data": {"entityId": entity, "changedFields": ["touser.lastname", "modificationdate"]},
            }
            batch.append(
                {
                    "event_id": event_id,
                    "type": event_type,
                    "time": received,
                    "tenant": "bench",
                    "application_id": "app-1",
                    "webhook_id": payload["webhookId"],
                    "entity_id": entity,
                    "received_at": received,
                    "payload": json.dumps(payload),
                }
            )
            if len(batch) == 5000:
                conn.execute(store_module.events.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(store_module.events.insert(), batch)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(store: EventStore) -> tuple[uvicorn.Server, int]:
    app = FastAPI()
    app.include_router(
        create_ui_router(store, authorize=lambda: None, extra=page_sections(store)), prefix="/carerix/ui"
    )

    @app.get("/baseline")
    async def baseline() -> dict[str, str]:
        return {"status": "ok"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def measure(client: httpx.Client, path: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return statistics.median(times), max(times)


def run(label: str, store: EventStore, count: int, repeat: int) -> None:
    started = time.perf_counter()
    fill(store, count)
    print(f"\n{label}: {count} events stored in {time.perf_counter() - started:.1f} s")
    server, port = serve(store)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            first = client.get("/carerix/ui/api/events?limit=25").json()["items"]
            older = first[-1]["sequence"]
            some_entity = first[0]["entity_id"]
            day_ago = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat()
            calls = [
                ("page HTML", "/carerix/ui/"),
                ("events, first page", "/carerix/ui/api/events?limit=25"),
                ("events, next page", f"/carerix/ui/api/events?limit=25&before={older}"),
                ("events by type", "/carerix/ui/api/events?limit=25&type=crmatch:updated"),
                ("events by entity", f"/carerix/ui/api/events?limit=25&entity_id={some_entity}"),
                (
                    "events by time range",
                    f"/carerix/ui/api/events?limit=25&since={day_ago}&until={datetime.now(timezone.utc).isoformat()}",
                ),
                ("rare type (scan)", "/carerix/ui/api/events?limit=25&type=nothing:here"),
                ("one payload", f"/carerix/ui/api/events/{older}"),
                ("types", "/carerix/ui/api/types"),
                ("chart, later calls", "/carerix/ui/api/chart"),
                ("consumers (with lag)", "/carerix/ui/api/consumers"),
                ("webhooks", "/carerix/ui/api/webhooks"),
                ("health", "/carerix/ui/api/health"),
            ]
            base, _ = measure(client, "/baseline", repeat)
            cold, _ = measure(client, "/carerix/ui/api/chart", 1)  # the day counted once per API server
            print(f"  {'call':<26} {'median ms':>10} {'max ms':>8} {'x baseline':>11}")
            print(f"  {'baseline (no store)':<26} {base:>10.1f}")
            print(f"  {'chart, first call':<26} {cold:>10.1f} {cold:>8.1f} {cold / base:>11.1f}")
            worst = cold
            for name, path in calls:
                median, most = measure(client, path.replace("+00:00", "Z"), repeat)
                worst = max(worst, most)
                print(f"  {name:<26} {median:>10.1f} {most:>8.1f} {median / base:>11.1f}")
            print(f"  slowest call: {worst:.1f} ms (target < 500 ms): {'OK' if worst < 500 else 'MISSED'}")
    finally:
        server.should_exit = True
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite", EventStore(f"sqlite:///{Path(tmp) / 'events.db'}"), args.events, args.repeat)
        if not args.no_postgres:
            sys.path.insert(0, str(ROOT / "tests"))
            from tests.fixtures.postgres import PostgresCluster

            cluster = PostgresCluster().start()
            try:
                run("PostgreSQL", EventStore(cluster.create_database()), args.events, args.repeat)
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
