"""Several receivers on one PostgreSQL: do more ``carerix-receiver serve`` processes store more events?

One throwaway PostgreSQL cluster (fsync on), a fresh database per scenario, then 1, 2 and 3 receiver processes
in the same run under the same load: ``wrk`` with a fixed number of keep-alive connections (default 36) spread
evenly over the receivers, each request a new event id. Printed per scenario: stored events/s, p50/p99 latency,
non-2xx answers, CPU seconds used by the receivers, by PostgreSQL and by wrk (so a saturated load generator or
a saturated machine is visible) and how often the store's insert lock was held when sampled (every 50 ms).
Ratios are against the one-receiver scenario of the same run.

Needs ``wrk`` (``apt-get install wrk``) and PostgreSQL's ``initdb``/``pg_ctl``.

    .venv/bin/python benchmarks/fleet.py [--seconds 15] [--connections 36] [--receivers 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_provider_carerix.store import EventStore  # noqa: E402
from airflow_provider_carerix.store.sessions import _PG_INSERT_LOCK  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402
from tests.fixtures.receiver import free_port, wait_for_port  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex
THREADS = 6  # divisible by 1, 2 and 3: every receiver gets the same number of wrk threads and connections

# Each wrk thread talks to one receiver (setup() hands out addresses round robin) and numbers its own events.
WRK_SCRIPT = r"""
local addrs = {}
local counter = 1

function setup(thread)
  if #addrs == 0 then
    for port in string.gmatch(os.getenv("FLEET_PORTS"), "%d+") do
      table.insert(addrs, wrk.lookup("127.0.0.1", port)[1])
    end
  end
  thread.addr = addrs[(counter - 1) % #addrs + 1]
  thread:set("thread_no", counter)
  counter = counter + 1
end

local seq = 0
local run = os.getenv("FLEET_RUN")
local headers = {["Content-Type"] = "application/json", ["X-Carerix-Secret"] = os.getenv("FLEET_SECRET")}

function request()
  seq = seq + 1
  local body = string.format(
    '{"id":"%s-%d-%d","time":"2024-02-14T14:24:40Z","type":"cremployee:updated",' ..
    '"applicationId":"192e953d-1e3a-4513-b14c-a66bca4be005","webhookId":"4c3174c9-deab-426a-8d26-23bbc89e461e",' ..
    '"tenant":"cxdev50streamer","data":{"entityId":"1","changedFields":["touser","touser.lastname"]}}',
    run, thread_no, seq)
  return wrk.format("POST", "/events", headers, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("FLEET requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Scenario:
    receivers: int
    stored: int
    seconds: float
    requests: int
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_receivers: float
    cpu_postgres: float
    cpu_wrk: float
    lock_held: float

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def postgres_processes(cluster: PostgresCluster) -> list[psutil.Process]:
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def start_receivers(store_url: str, count: int, log_dir: Path) -> list[tuple[subprocess.Popen[bytes], int]]:
    env = {**os.environ, "CARERIX_RECEIVER_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    started = []
    for _ in range(count):
        port = free_port()
        args = [sys.executable, "-m", "airflow_provider_carerix.receiver", "serve", "--port", str(port)]
        args += ["--store", store_url, "--log-level", "warning"]
        with open(log_dir / f"receiver-{port}.log", "wb") as log:
            proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, port))
    for proc, port in started:
        wait_for_port(port, proc=proc)
    return started


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(
    script: Path, ports: list[int], *, seconds: float, connections: int, run_id: str
) -> dict[str, int]:
    env = {
        **os.environ,
        "FLEET_PORTS": ",".join(map(str, ports)),
        "FLEET_SECRET": SECRET,
        "FLEET_RUN": run_id,
    }
    args = ["wrk", "-t", str(THREADS), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "20s"]
    args += ["-s", str(script), f"http://127.0.0.1:{ports[0]}/events"]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    match = re.search(r"^FLEET (.*)$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}


class LockSampler:
    """Fraction of samples in which some session held the store's insert lock."""

    def __init__(self, dsn: str, interval: float = 0.05) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)
        self.interval = interval
        self.samples = 0
        self.held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = %s"
        while not self._stop.wait(self.interval):
            (count,) = self._conn.execute(query, [_PG_INSERT_LOCK]).fetchone()  # type: ignore[misc]
            self.samples += 1
            self.held += 1 if count else 0

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._conn.close()
        return self.held / self.samples if self.samples else 0.0


def scenario(
    cluster: PostgresCluster, script: Path, count: int, args: argparse.Namespace, log_dir: Path
) -> Scenario:
    url = cluster.create_database()
    EventStore(url).ping()  # schema in place before several processes start against it
    receivers = start_receivers(url, count, log_dir)
    procs = [proc for proc, _ in receivers]
    ports = [port for _, port in receivers]
    try:
        # Warm-up: connections open, pools filled, code paths hot; not measured.
        run_wrk(script, ports, seconds=2, connections=args.connections, run_id=f"warm{count}")
        watched = [psutil.Process(p.pid) for p in procs]
        pg = postgres_processes(cluster)
        before_receivers, before_pg = cpu_seconds(watched), cpu_seconds(pg)
        before_wrk = resource_children()
        before_rows = count_rows(url)
        sampler = LockSampler(url.replace("postgresql+psycopg://", "postgresql://"))
        figures = run_wrk(
            script, ports, seconds=args.seconds, connections=args.connections, run_id=f"run{count}"
        )
        lock_held = sampler.stop()
        cpu_wrk = resource_children() - before_wrk
        cpu_receivers = cpu_seconds(watched) - before_receivers
        # Backends that started during the run are counted from zero; ones that ended are missed (none should).
        cpu_pg = cpu_seconds(postgres_processes(cluster)) - before_pg
    finally:
        stop(procs)
    ok = figures["requests"] - figures["non2xx"]
    stored = count_rows(url) - before_rows
    if stored < ok:
        raise RuntimeError(f"{ok} events acknowledged but only {stored} stored")
    return Scenario(
        receivers=count,
        stored=ok,
        seconds=figures["duration_us"] / 1e6,
        requests=figures["requests"],
        non2xx=figures["non2xx"],
        socket_errors=figures["socket_errors"],
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        cpu_receivers=cpu_receivers,
        cpu_postgres=cpu_pg,
        cpu_wrk=cpu_wrk,
        lock_held=lock_held,
    )


def count_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        (count,) = conn.execute("SELECT count(*) FROM carerix_events").fetchone()  # type: ignore[misc]
    return int(count)


def resource_children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per scenario")
    parser.add_argument("--connections", type=int, default=36, help="wrk keep-alive connections in total")
    parser.add_argument("--receivers", default="1,2,3", help="receiver counts to run, e.g. 1,2,3")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    counts = [int(c) for c in args.receivers.split(",")]
    results: list[Scenario] = []
    with tempfile.TemporaryDirectory(prefix="carerix-fleet-") as tmp:
        script = Path(tmp) / "fleet.lua"
        script.write_text(WRK_SCRIPT)
        with PostgresCluster(fsync=True) as cluster:
            for count in counts:
                results.append(scenario(cluster, script, count, args, Path(tmp)))
    load = os.getloadavg()[0]
    print(
        f"\nfleet benchmark: {args.connections} connections, {args.seconds:g} s per scenario, "
        f"{os.cpu_count()} CPUs (load average {load:.1f} at the end), PostgreSQL fsync on"
    )
    print(
        "receivers  events/s   p50 ms   p99 ms  non-2xx  CPU s: receivers  postgres  wrk   insert lock held"
    )
    for r in results:
        print(
            f"{r.receivers:>9} {r.rate:9.0f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.non2xx + r.socket_errors:8d}"
            f"  {r.cpu_receivers:16.1f} {r.cpu_postgres:9.1f} {r.cpu_wrk:5.1f}   {r.lock_held:6.0%}"
        )
    base = results[0]
    for r in results[1:]:
        print(f"ratio {r.receivers} receivers / {base.receivers}: {r.rate / base.rate:.2f}")


if __name__ == "__main__":
    main()
