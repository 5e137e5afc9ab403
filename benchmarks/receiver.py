"""What durability costs: the receiver's ``POST /events`` against a no-op endpoint of the same app and process.

Scenarios, each with N concurrent senders (default 32) on loopback:

(a) ``no-op``: ``POST /_bench/noop`` reads the body and answers 204 (HTTP + framework floor),
(b) ``sqlite``: the real ``POST /events``, SQLite WAL, synchronous=FULL (same server process as (a)),
(c) ``postgresql``: the real ``POST /events`` on a throwaway PostgreSQL cluster (fsync on).

The server is ``uvicorn`` in a child process; this process is the load generator (async httpx), bounded by a
request count and a time limit. Prints events/s, p50 and p99 latency per scenario and durable/no-op ratios.

    .venv/bin/python benchmarks/receiver.py [--senders 32] [--requests 4000] [--seconds 30] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-" + uuid.uuid4().hex
PAYLOAD = {
    "time": "2024-02-14T14:24:40Z",
    "type": "cremployee:updated",
    "applicationId": "192e953d-1e3a-4513-b14c-a66bca4be005",
    "webhookId": "4c3174c9-deab-426a-8d26-23bbc89e461e",
    "tenant": "cxdev50streamer",
    "data": {
        "entityId": "1",
        "changedFields": [
            "touser.attributechanges",
            "touser",
            "touser.lastname",
            "modificationdate",
            "touser.modificationdate",
        ],
    },
}


def serve(store_url: str, port: int) -> None:
    """Child process: the receiver app plus the no-op endpoint, one uvicorn worker."""
    import uvicorn

    from airflow_provider_carerix.receiver import create_app

    app = create_app(store_url, secrets=[os.environ["CARERIX_RECEIVER_SECRET"]])

    @app.post("/_bench/noop", response_model=None)
    async def noop(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return Response(status_code=204)

    gc.collect()
    gc.freeze()  # as ``carerix-receiver serve`` does
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Result:
    name: str
    ok: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<11} {self.rate:9.0f} events/s   p50 {self.pct(0.50):6.1f} ms   "
            f"p99 {self.pct(0.99):6.1f} ms   ({self.ok} ok, {self.failed} failed, {self.seconds:.1f} s)"
        )


async def load(url: str, path: str, *, senders: int, requests: int, seconds: float, name: str) -> Result:
    import httpx

    headers = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}
    latencies: list[float] = []
    failed = 0
    issued = 0
    deadline = time.monotonic() + seconds
    # One client (one keep-alive connection) per sender: a shared httpx pool of 32 connections costs more
    # client CPU per request than the server spends, and would measure the load generator instead.
    clients = [
        httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30)
        for _ in range(senders)
    ]

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal issued, failed
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            body = json.dumps({"id": str(uuid.uuid4()), **PAYLOAD}).encode()
            start = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=headers)
                good = 200 <= response.status_code < 300
            except Exception:
                good = False
            if good:
                latencies.append(time.perf_counter() - start)
            else:
                failed += 1

    try:
        # Warm-up: connections open, code paths and caches hot; not measured.
        total = requests
        requests = min(200, total)
        await asyncio.gather(*(sender(c) for c in clients))
        latencies.clear()
        failed, issued, requests = 0, 0, total
        # The load generator's own collector pauses would show up as server latency: keep them short.
        gc.collect()
        gc.freeze()
        deadline = time.monotonic() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(sender(c) for c in clients))
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()
    return Result(name, len(latencies), failed, elapsed, latencies)


def start_server(store_url: str) -> tuple[subprocess.Popen[bytes], str]:
    from tests.fixtures.receiver import free_port, wait_for_port

    port = free_port()
    env = {**os.environ, "CARERIX_RECEIVER_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", store_url, "--port", str(port)], env=env, cwd=ROOT
    )
    wait_for_port(port, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> None:
    results: list[Result] = []
    kwargs = {"senders": args.senders, "requests": args.requests, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="carerix-bench-") as tmp:
        proc, url = start_server(f"sqlite:///{Path(tmp) / 'events.db'}")
        try:
            results.append(asyncio.run(load(url, "/_bench/noop", name="no-op", **kwargs)))
            results.append(asyncio.run(load(url, "/events", name="sqlite", **kwargs)))
        finally:
            stop_server(proc)
    if not args.no_postgres:
        from tests.fixtures.postgres import PostgresCluster

        with PostgresCluster(fsync=True) as cluster:
            proc, url = start_server(cluster.create_database())
            try:
                results.append(asyncio.run(load(url, "/events", name="postgresql", **kwargs)))
            finally:
                stop_server(proc)

    print(f"\nreceiver benchmark: {args.senders} concurrent senders, {os.cpu_count()} CPUs, loopback")
    for result in results:
        print(result.line())
    noop = results[0]
    for result in results[1:]:
        ratio = result.rate / noop.rate if noop.rate else float("nan")
        verdict = "ok" if ratio >= 0.6 and result.pct(0.99) < 50 else "MISSED"
        print(f"ratio {result.name}/no-op: {ratio:.2f}  (target >= 0.60 and p99 < 50 ms: {verdict})")
    median = statistics.median(noop.latencies) * 1000 if noop.latencies else float("nan")
    print(f"(no-op median {median:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="per scenario (after 200 warm-up)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time limit per scenario")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--serve", metavar="STORE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
    else:
        run(args)


if __name__ == "__main__":
    main()
