"""The receiver against what a user would write instead, measured with a load generator that is not the bottleneck.

Each scenario runs in its own server process, loaded by ``wrk`` with 1 thread and 32 keep-alive connections
posting the guide's payload with a new event id per request:

(a) ``bare``: a FastAPI endpoint that reads and parses the body and answers 201, on uvicorn's defaults
    (httptools, uvloop, no limits): the HTTP + framework floor,
(b) ``handwritten``: the same endpoint committing each event to SQLite itself (``sqlite3``, WAL,
    ``synchronous=FULL``, one INSERT and one commit per request), on uvicorn's defaults: what a user would
    write instead of the receiver,
(c) ``no-op``: the receiver's own app and server (every check, group commit) on a store that keeps nothing,
(d) ``sqlite``: ``carerix-receiver serve``'s app and server, SQLite WAL, synchronous=FULL (durable on 2xx),
    with every limit in force (head size and deadline, body deadline and minimum rate, connection cap,
    strict input, signature lookup),
(e) ``postgresql`` (``--postgres``): the receiver on a throwaway PostgreSQL cluster, fsync on,
(f) ``sqlite-metrics``: (d) with Airflow's metrics on (``[metrics] statsd_on``), sending to a StatsD listener
    in this process, which counts the packets (every other scenario runs with metrics off, Airflow's default).

Printed per scenario: events/s, p50/p99 latency, non-2xx answers, CPU seconds of the server and of wrk (so a
saturated load generator or machine is visible), the load average; then the ratios. The targets: the durable
receiver >= 1.0x the hand-written durable handler and >= 0.5x the bare endpoint, with p99 < 50 ms.
``--rounds N`` runs every scenario N times, every other round in reverse order, and adds the medians (on a
shared machine, load that comes or goes during a run then does not always fall on the same scenario).
``--profile`` adds a cProfile of the sqlite server (top functions), ``--only`` picks scenarios.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``).

    .venv/bin/python benchmarks/receiver.py [--seconds 15] [--rounds 3] [--connections 32] [--postgres] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Request, Response  # noqa: E402

from tests.guide import GUIDE_EVENT  # noqa: E402

# Measured on uvicorn's defaults, as a user would run them; the receiver runs on its own server settings.
BASELINES = ("bare", "handwritten")
SCENARIOS = ("bare", "handwritten", "no-op", "sqlite", "sqlite-metrics", "postgresql")
# Where the sqlite-metrics server sends its StatsD packets (set by run()).
STATSD: dict[str, Any] = {}
# The server processes inherit it through the environment.
SECRET = os.environ.setdefault("CARERIX_BENCH_SECRET", "bench-" + uuid.uuid4().hex)

# One wrk thread, so one Lua state: a run prefix plus a counter gives every request a new event id.
WRK_SCRIPT = r"""
local seq = 0
local run = os.getenv("BENCH_RUN")
local template = os.getenv("BENCH_TEMPLATE")
local headers = {["Content-Type"] = "application/json", ["X-Carerix-Secret"] = os.getenv("BENCH_SECRET")}

function request()
  seq = seq + 1
  return wrk.format("POST", "/events", headers, string.format(template, run .. "-" .. seq))
end

function done(summary, latency, requests)
  io.write(string.format("BENCH requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _template() -> str:
    body = json.dumps({**GUIDE_EVENT, "id": "@ID@"}, separators=(",", ":"))
    return body.replace("%", "%%").replace("@ID@", "%s")


# -- server side (child process) ---------------------------------------------------------------------------------


def _bare_app() -> Any:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/events", response_model=None)
    async def events(request: Request) -> Response:
        json.loads(await request.body())
        return Response(b'{"ok":true}', status_code=201, media_type="application/json")

    return app


def _handwritten_app(path: str) -> Any:
    """What a user would write instead of the receiver: parse, one INSERT, one commit (and fsync) per request.

    SQLite in WAL mode with ``synchronous=FULL`` (durable on 2xx, like the receiver); the commit runs on the
    event loop, the fastest way to write it by hand (a thread pool adds a hop per request and serialises on
    the same write lock).
    """
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/events", response_model=None)
    async def events(request: Request) -> Response:
        body = await request.body()
        event = json.loads(body)
        conn.execute("INSERT OR IGNORE INTO events (id, body) VALUES (?, ?)", (event["id"], body.decode()))
        return Response(b'{"ok":true}', status_code=201, media_type="application/json")

    return app


def _noop_store(url: str) -> Any:
    from airflow_provider_carerix.store import EventStore

    class NoopStore(EventStore):
        """Everything the receiver reads is real; inserts keep nothing."""

        counter = 0

        def insert_deliveries(self, items: Sequence[Any]) -> list[tuple[int, bool]]:
            out = []
            for _ in items:
                self.counter += 1
                out.append((self.counter, True))
            return out

    return NoopStore(url)


def serve(kind: str, store_url: str, port: int, profile: Path | None) -> None:
    import uvicorn

    from airflow_provider_carerix.receiver.app import create_app
    from airflow_provider_carerix.receiver.server import ServerLimits, build_config
    from airflow_provider_carerix.store import EventStore

    if kind in BASELINES:
        # What a user would run: uvicorn's defaults (httptools, no limits of our own).
        app = _bare_app() if kind == "bare" else _handwritten_app(store_url.removeprefix("sqlite:///"))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    else:
        store = _noop_store(store_url) if kind == "no-op" else EventStore(store_url)
        store.ping()
        app = create_app(store, secrets=[SECRET])
        from airflow_provider_carerix import metrics

        print(f"{kind}: metrics {metrics.describe()}", file=sys.stderr)  # set up at start, as serve does
        config = build_config(
            app, host="127.0.0.1", port=port, limits=ServerLimits(), log_level="warning", access_log=False
        )
    gc.collect()
    gc.freeze()  # as ``carerix-receiver serve`` does
    server = uvicorn.Server(config)
    if profile is None:
        server.run()
        return
    import cProfile
    import pstats

    # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exit the finally survives.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server.run()
    finally:
        profiler.disable()
        pstats.Stats(profiler, stream=open(profile, "w")).sort_stats("cumulative").print_stats(40)  # noqa: SIM115


# -- load side ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: int
    non2xx: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_server: float
    cpu_wrk: float
    load: float  # 1-minute load average when the scenario ended

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.name:<15} {self.rate:8.0f} {self.p50_ms:8.1f} {self.p99_ms:8.1f} {self.non2xx:8d}"
            f"   {self.cpu_server:6.1f} ({self.cpu_server / self.seconds:4.0%})"
            f"   {self.cpu_wrk:5.1f} ({self.cpu_wrk / self.seconds:4.0%})   {self.load:4.1f}"
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk(script: Path, port: int, seconds: float, connections: int, run_id: str) -> dict[str, int]:
    env = {**os.environ, "BENCH_RUN": run_id, "BENCH_SECRET": SECRET, "BENCH_TEMPLATE": _template()}
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "20s"]
    args += ["-s", str(script), f"http://127.0.0.1:{port}/events"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH (.*)$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}


def scenario(
    kind: str, store_url: str, script: Path, args: argparse.Namespace, profile: Path | None = None
) -> Result:
    import psutil

    from tests.fixtures.receiver import free_port, wait_for_port

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--store", store_url, "--port", str(port)]
    if profile is not None:
        cmd += ["--profile-to", str(profile)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kind == "sqlite-metrics":
        env.update(
            AIRFLOW__METRICS__STATSD_ON="True",
            AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
            AIRFLOW__METRICS__STATSD_PORT=str(STATSD["port"]),
        )
    packets_before = STATSD.get("packets", 0)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        wait_for_port(port, proc=proc)
        _wrk(script, port, 2, args.connections, f"warm-{kind}-{uuid.uuid4().hex[:6]}")  # not measured
        server = psutil.Process(proc.pid)
        before_server, before_wrk = sum(server.cpu_times()[:2]), _children_cpu()
        figures = _wrk(script, port, args.seconds, args.connections, f"{kind}-{uuid.uuid4().hex[:6]}")
        cpu_server = sum(server.cpu_times()[:2]) - before_server
        cpu_wrk = _children_cpu() - before_wrk
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if kind == "sqlite-metrics":
        print(
            f"sqlite-metrics: {STATSD['packets'] - packets_before} StatsD packets received", file=sys.stderr
        )
    return Result(
        name=kind,
        ok=figures["requests"] - figures["non2xx"],
        non2xx=figures["non2xx"] + figures["socket_errors"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        cpu_server=cpu_server,
        cpu_wrk=cpu_wrk,
        load=os.getloadavg()[0],
    )


def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk (Debian/Ubuntu)")
    rounds: list[list[Result]] = []
    _statsd_listener()
    with tempfile.TemporaryDirectory(prefix="carerix-bench-") as tmp:
        script = Path(tmp) / "receiver.lua"
        script.write_text(WRK_SCRIPT)
        wanted = [
            k
            for k in (args.only.split(",") if args.only else SCENARIOS)
            if k != "postgresql" or args.postgres
        ]
        profile = Path(tmp) / "sqlite.prof.txt" if args.profile else None
        for number in range(args.rounds):
            # Every other round backwards: on a shared machine, load that comes or goes during a round does
            # not always fall on the same scenario.
            order = wanted if number % 2 == 0 else list(reversed(wanted))
            results: list[Result] = []
            for kind in order:
                if kind == "postgresql":
                    from tests.fixtures.postgres import PostgresCluster

                    with PostgresCluster(fsync=True) as cluster:
                        results.append(scenario(kind, cluster.create_database(), script, args))
                    continue
                store_url = "" if kind == "bare" else f"sqlite:///{Path(tmp) / f'{kind}-{number}.db'}"
                profiled = profile if kind == "sqlite" and number == 0 else None
                results.append(scenario(kind, store_url, script, args, profiled))
            rounds.append(sorted(results, key=lambda r: wanted.index(r.name)))
        profile_text = profile.read_text() if profile is not None and profile.exists() else ""
    print(
        f"\nreceiver benchmark: wrk 1 thread, {args.connections} connections, {args.seconds:g} s per scenario, "
        f"{args.rounds} round(s), {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end)"
    )
    header = "scenario        events/s   p50 ms   p99 ms  non-2xx   CPU s server      CPU s wrk   load"
    for number, results in enumerate(rounds):
        print(f"round {number + 1}" + ("" if number % 2 == 0 else " (backwards)"))
        print(header)
        for result in results:
            print(result.line())
        _ratios(results)
    if len(rounds) > 1:
        medians = [_median([r[i] for r in rounds]) for i in range(len(rounds[0]))]
        print(f"median of {len(rounds)} rounds (events/s, p50, p99 and CPU each the median)")
        print(header)
        for result in medians:
            print(result.line())
        _ratios(medians)
    if profile_text:
        print("\nsqlite server profile (cumulative, top 40):\n" + profile_text)


def _statsd_listener() -> None:
    """A UDP socket that drains and counts StatsD packets, as a StatsD daemon would take them."""
    import socket
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    STATSD.update(port=sock.getsockname()[1], packets=0)

    def drain() -> None:
        while True:
            sock.recv(65536)
            STATSD["packets"] += 1

    threading.Thread(target=drain, daemon=True, name="statsd-listener").start()


def _median(results: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        values = sorted(values)
        half = len(values) // 2
        return values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2

    seconds = mid([r.seconds for r in results])
    return Result(
        name=results[0].name,
        ok=round(mid([r.rate for r in results]) * seconds),
        non2xx=max(r.non2xx for r in results),
        seconds=seconds,
        p50_ms=mid([r.p50_ms for r in results]),
        p99_ms=mid([r.p99_ms for r in results]),
        cpu_server=mid([r.cpu_server for r in results]),
        cpu_wrk=mid([r.cpu_wrk for r in results]),
        load=mid([r.load for r in results]),
    )


def _ratios(results: list[Result]) -> None:
    by_name = {r.name: r for r in results}
    bare, handwritten = by_name.get("bare"), by_name.get("handwritten")
    noop = by_name.get("no-op")
    if noop is not None and bare is not None:
        print(f"ratio no-op/bare: {noop.rate / bare.rate:.2f}")
    sqlite, with_metrics = by_name.get("sqlite"), by_name.get("sqlite-metrics")
    if sqlite is not None and with_metrics is not None:
        print(
            f"ratio sqlite-metrics/sqlite: {with_metrics.rate / sqlite.rate:.2f} "
            f"(p99 {with_metrics.p99_ms:.1f} vs {sqlite.p99_ms:.1f} ms)"
        )
    for name in ("sqlite", "sqlite-metrics", "postgresql"):
        durable = by_name.get(name)
        if durable is None:
            continue
        if noop is not None:
            print(f"ratio {name}/no-op: {durable.rate / noop.rate:.2f}")
        if handwritten is not None and bare is not None:
            vs_hand, vs_bare = durable.rate / handwritten.rate, durable.rate / bare.rate
            verdict = "ok" if vs_hand >= 1.0 and vs_bare >= 0.5 and durable.p99_ms < 50 else "MISSED"
            print(
                f"ratio {name}/handwritten: {vs_hand:.2f}, {name}/bare: {vs_bare:.2f}  "
                f"(target >= 1.00 and >= 0.50, p99 < 50 ms: {verdict})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every scenario this often (every other round backwards)"
    )
    parser.add_argument("--postgres", action="store_true", help="also run on a throwaway PostgreSQL")
    parser.add_argument("--profile", action="store_true", help="cProfile the sqlite server")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios (default: all of " + ", ".join(SCENARIOS) + ")"
    )
    parser.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.store, args.port, args.profile_to)
    else:
        run(args)


if __name__ == "__main__":
    main()
