"""Triggerer failover: how long events wait when the triggerer goes away, graceful stop vs ``kill -9``.

One real stack (receiver, SQLite store, scheduler, dag-processor, triggerer, API server; the example DAG
``carerix_event_driven``). Per scenario, events are POSTed ~2 s apart; after the fourth one the triggerer is
stopped (SIGTERM, waiting for it to exit, or SIGKILL of its whole process group) and a new one is started
at once, as a supervisor (systemd, Kubernetes) would. Printed per scenario: POST -> processed (the task that
handled the event finished) for the events before the stop (the baseline of the same run) and for those
POSTed from the stop on.

Why kill -9 is slower: a triggerer holds its triggers until its job ends. A graceful stop ends the job, so
the new triggerer takes the watchers at its first load. After kill -9 the job stays "running" and Airflow
reassigns its triggers only once its last heartbeat is older than ``[triggerer]
triggerer_health_check_threshold`` (default 30 s; heartbeats every ``[triggerer] job_heartbeat_sec``,
default 5 s). ``--health-check-threshold``/``--job-heartbeat-sec`` set both on the stack to show the effect.

    .venv/bin/python benchmarks/failover.py [--events 10] [--spacing 2] [--health-check-threshold 10 --job-heartbeat-sec 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_provider_carerix.store import EventStore  # noqa: E402
from tests.fixtures.airflow_stack import AirflowStack, wait_for  # noqa: E402
from tests.fixtures.receiver import SECRET_HEADER, start_receiver  # noqa: E402
from tests.guide import guide_event  # noqa: E402

DAG_ID = "carerix_event_driven"
TASK_ID = "process_employee_updates"
CONSUMER = "carerix_event_driven"
SECRET = "failover-" + uuid.uuid4().hex


def _utc(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def processed_at(stack: AirflowStack) -> dict[str, datetime]:
    """event id -> when the task run that handled it finished (first successful one)."""
    rows = stack.query(
        "SELECT run_id, end_date FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = 'success'",
        DAG_ID,
        TASK_ID,
    )
    finished = {r["run_id"]: _utc(r["end_date"]) for r in rows}
    result: dict[str, datetime] = {}
    for run_id, value in stack.xcoms(DAG_ID, TASK_ID).items():
        if run_id in finished:
            for event in value or []:
                done = finished[run_id]
                if event["event_id"] not in result or done < result[event["event_id"]]:
                    result[event["event_id"]] = done
    return result


def run_scenario(
    stack: AirflowStack, store: EventStore, post: Any, name: str, sig: int, events: int, spacing: float
) -> tuple[list[float], list[float], float]:
    """Returns (delays before the stop, delays from the stop on, seconds the stop itself took)."""
    bodies = [guide_event(10_000 + i) for i in range(events)]
    stop_after = min(4, events - 1)
    stopped = threading.Event()
    stop_took: list[float] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for n, body in enumerate(bodies, 1):
                post(body)
                if n == stop_after:
                    stopped.set()
                time.sleep(spacing)
        except BaseException as exc:  # reported below
            errors.append(exc)
            stopped.set()

    producer = threading.Thread(target=produce, name=f"producer-{name}")
    producer.start()
    stopped.wait(timeout=300)
    time.sleep(spacing / 2)  # between two POSTs
    began = time.monotonic()
    stack.stop_component("triggerer", sig=sig)
    stop_took.append(time.monotonic() - began)
    stack.restarts["triggerer"] = stack.restarts.get("triggerer", 0) + 1
    stack.start_component("triggerer")
    producer.join(timeout=600)
    if errors:
        raise errors[0]
    ids = [b["id"] for b in bodies]
    done = wait_for(
        lambda: (p := processed_at(stack)) and all(i in p for i in ids) and p,
        f"every event of the {name} scenario processed",
        timeout=600,
        interval=1.0,
    )
    received = {e.event_id: e.received_at for e in store.events_after(0, limit=100_000) if e.event_id in ids}
    delays = [(done[i] - _utc(received[i])).total_seconds() for i in ids]
    return delays[:stop_after], delays[stop_after:], stop_took[0]


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values):<2} p50 {statistics.median(values):5.1f} s  max {max(values):5.1f} s  "
        f"({', '.join(f'{v:.1f}' for v in values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10, help="events per scenario")
    parser.add_argument("--spacing", type=float, default=2.0, help="seconds between two POSTs")
    parser.add_argument(
        "--health-check-threshold", type=float, help="[triggerer] triggerer_health_check_threshold"
    )
    parser.add_argument("--job-heartbeat-sec", type=float, help="[triggerer] job_heartbeat_sec")
    parser.add_argument("--only", choices=["graceful", "kill"], help="run one scenario")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="carerix-failover-"))
    store_url = f"sqlite:///{work / 'carerix_events.db'}"
    env = {"CARERIX_EVENT_STORE_URL": store_url}
    settings = []
    if args.health_check_threshold is not None:
        env["AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD"] = str(args.health_check_threshold)
        settings.append(f"triggerer_health_check_threshold={args.health_check_threshold:g}")
    if args.job_heartbeat_sec is not None:
        env["AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC"] = str(args.job_heartbeat_sec)
        settings.append(f"job_heartbeat_sec={args.job_heartbeat_sec:g}")
    store = EventStore(store_url)
    receiver_url, stop_receiver = start_receiver(store_url, SECRET)
    client = httpx.Client(timeout=30)

    def post(body: dict[str, Any]) -> None:
        response = client.post(
            f"{receiver_url}/events",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
        )
        response.raise_for_status()

    stack: AirflowStack | None = None
    results: list[tuple[str, tuple[list[float], list[float], float]]] = []
    try:
        stack = AirflowStack.start(work / "airflow", env=env)
        stack.wait_healthy()
        wait_for(lambda: store.get_cursor(f"{CONSUMER}:origin") > 0, "the watcher to start", timeout=300)
        scenarios = [("graceful", signal.SIGTERM), ("kill", signal.SIGKILL)]
        for name, sig in scenarios:
            if args.only and args.only != name:
                continue
            results.append((name, run_scenario(stack, store, post, name, sig, args.events, args.spacing)))
            time.sleep(5)  # let the new triggerer settle before the next scenario
    finally:
        if stack is not None:
            stack.stop()
        client.close()
        stop_receiver()
        store.close()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ntriggerer failover: {args.events} events {args.spacing:g} s apart, triggerer stopped after the 4th "
        f"and started again at once\n(Airflow 3.3, SQLite, LocalExecutor; "
        f"{', '.join(settings) or 'default triggerer settings: job_heartbeat_sec=5, triggerer_health_check_threshold=30'})"
    )
    labels = {"graceful": "graceful stop (SIGTERM)", "kill": "kill -9 (SIGKILL)"}
    for name, (before, after, took) in results:
        print(f"  {labels[name]:<24} stop took {took:4.1f} s")
        print(f"    before the stop        POST -> processed {summary(before)}")
        print(f"    from the stop on       POST -> processed {summary(after)}")
    if len(results) == 2:
        graceful_max, kill_max = max(results[0][1][1]), max(results[1][1][1])
        print(f"  worst wait after kill -9 vs graceful stop: {kill_max:.1f} s vs {graceful_max:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
