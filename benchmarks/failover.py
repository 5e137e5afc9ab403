"""Triggerer failover: how long events wait when the triggerer stops, graceful stop vs ``kill -9``.

One real stack (receiver, SQLite store, scheduler, dag-processor, triggerer, API server; the example DAG
``carerix_event_driven``). Per scenario, events are POSTed 2 s apart; between the 4th and the 5th the
triggerer running the watcher is stopped: with SIGTERM (waiting until it exited) or with SIGKILL of its
whole process group. Two deployments:

* restart in place: one triggerer; a new one is started as soon as the old one is gone (what systemd or a
  Kubernetes Deployment with one replica does);
* standby: a second triggerer is already running and takes the watcher over.

Printed per scenario: how long the stop took, when the watcher ran on the next triggerer (its trigger row
assigned to another triggerer job) counted from the stop, and POST -> processed (the task that handled the
event finished) for the events POSTed from the stop on; the events before the stop are the baseline.

Why kill -9 is slower: a triggerer holds its triggers while its job counts as alive, that is while the job
has no end date and its last heartbeat is younger than ``[triggerer] triggerer_health_check_threshold``
(default 30 s; heartbeats every ``[triggerer] job_heartbeat_sec``, default 5 s). A graceful stop ends the
job; after kill -9 the job looks alive until its heartbeat is that old. ``--health-check-threshold`` and
``--job-heartbeat-sec`` set both on the stack to show the effect.

    .venv/bin/python benchmarks/failover.py [--events 10] [--spacing 2] [--modes restart,standby]
        [--health-check-threshold 10 --job-heartbeat-sec 2] [--keep]
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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
CONSUMER = "carerix_cremployee_updated"  # the example DAG's CarerixEvents asset names its consumer
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
            for event_id in value or []:  # the task returns the ids of the events it processed
                done = finished[run_id]
                if event_id not in result or done < result[event_id]:
                    result[event_id] = done
    return result


def watcher_triggerer(stack: AirflowStack) -> int | None:
    """The triggerer job the Carerix watcher is assigned to."""
    rows = [r for r in stack.triggers("carerix") if r["triggerer_id"] is not None]
    return int(rows[0]["triggerer_id"]) if rows else None


def alive_triggerers(stack: AirflowStack, within: float = 15.0) -> int:
    rows = stack.query(
        "SELECT latest_heartbeat FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL"
    )
    recent = datetime.now(timezone.utc) - timedelta(seconds=within)
    return sum(1 for r in rows if r["latest_heartbeat"] and _utc(r["latest_heartbeat"]) > recent)


# name in the stack ("holder", "standby") -> the triggerer job id of that process
JOB_IDS: dict[str, int] = {}


def triggerer_job_ids(stack: AirflowStack) -> set[int]:
    return {int(r["id"]) for r in stack.query("SELECT id FROM job WHERE job_type = 'TriggererJob'")}


def start_triggerer(stack: AirflowStack, name: str) -> None:
    """Start one more triggerer, kept in the stack as ``name`` (a fresh log file each time)."""
    known = triggerer_job_ids(stack)
    stack.restarts["triggerer"] = stack.restarts.get("triggerer", 0) + 1
    stack.start_component("triggerer")
    stack.procs[name] = stack.procs.pop("triggerer")
    new = wait_for(lambda: triggerer_job_ids(stack) - known, f"the {name} triggerer's job", timeout=300)
    JOB_IDS[name] = max(new)


@dataclass
class Outcome:
    scenario: str
    stop_took: float
    moved_after: float | None
    before: list[float]
    after: list[float]
    taken_early: bool = False


def run_scenario(
    stack: AirflowStack,
    store: EventStore,
    post: Any,
    scenario: str,
    mode: str,
    sig: int,
    events: int,
    spacing: float,
) -> Outcome:
    bodies = [guide_event(10_000 + i) for i in range(events)]
    stop_after = min(4, events - 1)
    stopped = threading.Event()
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

    producer = threading.Thread(target=produce, name=f"producer-{scenario}")
    producer.start()
    stopped.wait(timeout=300)
    time.sleep(spacing / 2)  # half way between two POSTs
    holder = watcher_triggerer(stack)
    # On an overloaded machine a live triggerer's heartbeat can fall behind the health check threshold:
    # then another one has already taken the watcher and stopping "holder" measures nothing.
    taken_early = holder != JOB_IDS.get("holder")
    moved: list[float] = []
    began = time.monotonic()

    def watch_assignment() -> None:
        while time.monotonic() - began < 300:
            now = watcher_triggerer(stack)
            if now is not None and now != holder:
                moved.append(time.monotonic() - began)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_assignment, name=f"assignment-{scenario}")
    watcher.start()
    stack.stop_component("holder", sig=sig)
    stop_took = time.monotonic() - began
    if mode == "restart":
        start_triggerer(stack, "holder")
    producer.join(timeout=600)
    if errors:
        raise errors[0]
    ids = [b["id"] for b in bodies]
    done = wait_for(
        lambda: (p := processed_at(stack)) and all(i in p for i in ids) and p,
        f"every event of the {scenario} scenario processed",
        timeout=600,
        interval=1.0,
    )
    watcher.join(timeout=300)
    if mode == "standby":  # the standby holds the watcher now; start the next standby
        stack.procs["holder"] = stack.procs.pop("standby")
        JOB_IDS["holder"] = JOB_IDS.pop("standby")
        start_triggerer(stack, "standby")
        wait_for(lambda: alive_triggerers(stack) >= 2, "the new standby triggerer", timeout=300)
    received = {e.event_id: e.received_at for e in store.events_after(0, limit=100_000) if e.event_id in ids}
    delays = [(done[i] - _utc(received[i])).total_seconds() for i in ids]
    return Outcome(
        scenario,
        stop_took,
        moved[0] if moved else None,
        delays[:stop_after],
        delays[stop_after:],
        taken_early,
    )


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values):<2} p50 {statistics.median(values):5.1f} s  max {max(values):5.1f} s  "
        f"({', '.join(f'{v:.1f}' for v in values)})"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10, help="events per scenario")
    parser.add_argument("--spacing", type=float, default=2.0, help="seconds between two POSTs")
    parser.add_argument(
        "--modes", default="restart,standby", help="restart, standby or both (comma-separated)"
    )
    parser.add_argument(
        "--health-check-threshold", type=float, help="[triggerer] triggerer_health_check_threshold"
    )
    parser.add_argument("--job-heartbeat-sec", type=float, help="[triggerer] job_heartbeat_sec")
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory (logs) and print it")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack on the way out, as on Ctrl-C
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

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
    outcomes: list[Outcome] = []
    failed_tries = 0
    try:
        stack = AirflowStack.start(work / "airflow", env=env)
        stack.procs["holder"] = stack.procs.pop("triggerer")
        JOB_IDS["holder"] = max(
            wait_for(lambda: triggerer_job_ids(stack), "the triggerer's job", timeout=300)
        )
        stack.wait_healthy()
        wait_for(lambda: store.get_cursor(f"{CONSUMER}:origin") > 0, "the watcher to start", timeout=300)
        warm_up = guide_event(1)
        post(warm_up)
        wait_for(lambda: warm_up["id"] in processed_at(stack), "a warm-up event processed", timeout=300)
        for mode in modes:
            if mode == "standby":
                start_triggerer(stack, "standby")
                wait_for(lambda: alive_triggerers(stack) >= 2, "a standby triggerer", timeout=300)
            for how, sig in (("graceful stop", signal.SIGTERM), ("kill -9", signal.SIGKILL)):
                label = f"{'restart in place' if mode == 'restart' else 'standby takes over'}, {how}"
                outcomes.append(run_scenario(stack, store, post, label, mode, sig, args.events, args.spacing))
                time.sleep(3)
        failed_tries = len(
            stack.query(
                "SELECT 1 FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = 'failed'",
                DAG_ID,
                TASK_ID,
            )
        )
    finally:
        if stack is not None:
            stack.stop()
        client.close()
        stop_receiver()
        store.close()
        if args.keep:
            print(f"logs and databases kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    defaults = "defaults: job_heartbeat_sec=5, triggerer_health_check_threshold=30"
    print(
        f"\ntriggerer failover: {args.events} events {args.spacing:g} s apart, the triggerer running the watcher "
        f"stopped after the 4th\n(Airflow 3.3, SQLite, LocalExecutor; {', '.join(settings) or defaults})"
    )
    print(
        f"  {'scenario':<38} {'stop':>6} {'watcher moved':>14}   POST -> processed, events from the stop on"
    )
    for o in outcomes:
        moved = f"{o.moved_after:5.1f} s" if o.moved_after is not None else "never"
        print(f"  {o.scenario:<38} {o.stop_took:4.1f} s {moved:>14}   {summary(o.after)}")
        if o.taken_early:
            print(
                "    (another triggerer had taken the watcher before the stop: a late heartbeat; not a failover)"
            )
    baseline = [d for o in outcomes for d in o.before]
    print(f"  {'baseline: events before each stop':<38} {'':>6} {'':>14}   {summary(baseline)}")
    if failed_tries:
        print(
            f"  ({failed_tries} task tries failed, e.g. to start on an overloaded machine: their events waited)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
