"""CarerixEvents end to end on real Airflow: receiver -> PostgreSQL store -> watcher -> DAG runs -> claims.

One module-scoped stack (scheduler, dag-processor, triggerer, API server; LocalExecutor), a private
PostgreSQL cluster the test can stop and start (an outage), and a DAG written for the test: its task claims
the events, optionally fails or kills itself (SIGKILL) once in the middle of a batch, and returns the ids it
processed (payloads stay in the store). The store is reached through the Airflow connection
``carerix_event_store``, as a deployment with a password would. Checked:

(a) a burst of 50 events in waves, the DAG allowed concurrent runs: several runs, each event processed once;
(b) a try that fails mid-batch and one killed with SIGKILL mid-batch are retried: nothing lost or doubled;
(c) a store outage of a few seconds with a triggerer restart in it: no DAG run from the outage, nothing
    stored before or after it is missed.

Bounds are "never happens" limits, not performance targets; the latencies are printed.
"""

from __future__ import annotations

import collections
import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from airflow_provider_carerix.store import EventStore
from tests.fixtures.airflow_stack import AirflowStack, wait_for
from tests.fixtures.postgres import SUPERUSER, PostgresCluster, _require_postgres
from tests.fixtures.receiver import SECRET_HEADER, start_receiver
from tests.guide import guide_event

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.postgres]

DAG_ID = "carerix_events_e2e"
TASK_ID = "process"
CONSUMER = "carerix_events_e2e"
SECRET = "e2e-" + uuid.uuid4().hex

DAG_FILE = """
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

from airflow.sdk import DAG, task

from airflow_provider_carerix.events import CarerixEvents

MARKERS = {markers!r}
events = CarerixEvents({consumer!r}, event_types=["cremployee:updated"], lease_seconds=6)

with DAG({dag_id!r}, schedule=[events], default_args={{"retries": 3, "retry_delay": timedelta(seconds=1)}}):

    @task
    def process() -> list[str]:
        done = []
        with events.claim() as batch:
            for event in batch:
                entity = event["data"]["entityId"]
                marker = os.path.join(MARKERS, entity)
                if entity.startswith(("fail-", "kill-")) and not os.path.exists(marker):
                    open(marker, "w").close()
                    if entity.startswith("kill-"):
                        os.kill(os.getpid(), signal.SIGKILL)  # a worker crash in the middle of the batch
                    raise RuntimeError("forced failure in the middle of the batch")
                time.sleep(0.05)  # work, so that runs overlap
                done.append(event.event_id)
        return done

    process()
"""


@dataclass
class Env:
    stack: AirflowStack
    store: EventStore
    pg: PostgresCluster
    receiver_url: str
    client: httpx.Client

    def post(self, body: dict[str, Any]) -> None:
        response = self.client.post(
            f"{self.receiver_url}/events",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
        )
        assert 200 <= response.status_code < 300, response.text

    def processed(self) -> list[tuple[str, datetime]]:
        """(event id, when its task finished) for every id a successful try returned."""
        rows = self.stack.query(
            "SELECT run_id, end_date FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = 'success'",
            DAG_ID,
            TASK_ID,
        )
        finished = {r["run_id"]: _utc(r["end_date"]) for r in rows}
        return [
            (event_id, finished[run_id])
            for run_id, ids in self.stack.xcoms(DAG_ID, TASK_ID).items()
            if run_id in finished
            for event_id in ids or []
        ]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(event_id for event_id, _ in self.processed())

    def wait_processed(self, ids: set[str], what: str, timeout: float = 300) -> None:
        wait_for(lambda: ids <= set(self.counts()), what, timeout=timeout, interval=0.5)

    def assert_exactly_once(self) -> None:
        doubled = {k: v for k, v in self.counts().items() if v != 1}
        assert doubled == {}, f"processed more than once: {doubled}"

    def retried_tries(self) -> set[tuple[str, int]]:
        """(run id, try number) of every try of the task that ended without success and got a next try.

        Airflow moves such a try to ``task_instance_history`` the moment it ends; ``task_instance.try_number``
        moves on only when the scheduler schedules the next try, ``retry_delay`` and a scheduler loop later.
        """
        rows = self.stack.query(
            "SELECT run_id, try_number FROM task_instance_history WHERE dag_id = ? AND task_id = ?",
            DAG_ID,
            TASK_ID,
        )
        return {(r["run_id"], r["try_number"]) for r in rows}

    def succeeded_after(self, run_id: str, try_number: int) -> bool:
        """Whether a later try of the task in this run succeeded."""
        return bool(
            self.stack.query(
                "SELECT 1 FROM task_instance WHERE dag_id = ? AND task_id = ? AND run_id = ? AND try_number > ?"
                " AND state = 'success'",
                DAG_ID,
                TASK_ID,
                run_id,
                try_number,
            )
        )

    def how_try_ended(self, run_id: str, try_number: int) -> str:
        """'failed' (the forced exception), 'killed' (SIGKILL) or 'other', from the try's own task log."""
        log = self.stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
        text = (log / f"attempt={try_number}.log").read_text()
        if '"SIGKILL"' in text:  # the supervisor's line: "Process terminated by signal", signal_name
            return "killed"
        if "forced failure in the middle of the batch" in text:
            return "failed"
        return "other"

    def delays(self, ids: set[str]) -> list[float]:
        result = []
        for event_id, done in self.processed():
            if event_id in ids:
                stored = self.store.event_by_id(event_id)
                assert stored is not None
                result.append((done - stored.received_at).total_seconds())
        return sorted(result)


def _utc(value: str | datetime) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _event(entity_id: str) -> dict[str, Any]:
    return guide_event(entity_id, ["touser.tosinglestatusnode"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_postgres()
    work = tmp_path_factory.mktemp("events-e2e")
    dags, markers = work / "dags", work / "markers"
    dags.mkdir()
    markers.mkdir()
    (dags / "carerix_events_e2e.py").write_text(
        textwrap.dedent(DAG_FILE).format(markers=str(markers), consumer=CONSUMER, dag_id=DAG_ID)
    )
    pg = PostgresCluster().start()
    client = httpx.Client(timeout=30)
    stack: AirflowStack | None = None
    stop_receiver = None
    store: EventStore | None = None
    try:
        store_url = pg.create_database("carerix_e2e")
        store = EventStore(store_url)
        store.ping()
        receiver_url, stop_receiver = start_receiver(store_url, SECRET)
        connection = {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": pg.port,
            "schema": "carerix_e2e",
            "login": SUPERUSER,
        }
        stack = AirflowStack.start(
            work / "airflow",
            dags_folder=dags,
            env={"AIRFLOW_CONN_CARERIX_EVENT_STORE": json.dumps(connection), "CARERIX_EVENT_STORE_URL": ""},
        )
        stack.wait_healthy()
        wait_for(lambda: store.get_cursor(f"{CONSUMER}:origin") > 0, "the watcher to start", timeout=300)
        yield Env(stack=stack, store=store, pg=pg, receiver_url=receiver_url, client=client)
    finally:
        if stack is not None:
            stack.stop()
        if stop_receiver is not None:
            stop_receiver()
        client.close()
        if store is not None:
            store.close()
        pg.stop()


@pytest.mark.timeout(1200)  # includes starting the module's stack
def test_a_burst_in_waves_makes_several_runs_and_each_event_is_processed_once(env: Env) -> None:
    runs_before = len(env.stack.dag_runs(DAG_ID))
    burst = [_event(f"burst-{i}") for i in range(50)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for wave in range(5):
            # Five waves of ten, each once the previous one has made a run (not a fixed 1.5 s apart: on a loaded
            # machine one scheduler loop could take in every wave), so runs are created while others still work.
            runs_now = len(env.stack.dag_runs(DAG_ID))
            list(pool.map(env.post, burst[wave * 10 : (wave + 1) * 10]))
            wait_for(
                lambda before=runs_now: len(env.stack.dag_runs(DAG_ID)) > before,
                f"a DAG run for wave {wave + 1}",
            )
    ids = {b["id"] for b in burst}
    env.wait_processed(ids, "every event of the burst processed")
    env.assert_exactly_once()
    runs = env.stack.dag_runs(DAG_ID)[runs_before:]
    delays = env.delays(ids)
    print(
        f"\nburst of 50 in 5 waves: {len(runs)} DAG runs; arrival -> task finished "
        f"p50 {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s"
    )
    assert len(runs) >= 2, runs  # the consumer's lease, not max_active_runs=1, keeps them apart
    assert env.store.get_cursor(f"{CONSUMER}:processed") >= max(
        env.store.event_by_id(i).sequence  # type: ignore[union-attr]
        for i in ids
    )


@pytest.mark.timeout(900)
def test_a_try_failing_or_killed_mid_batch_is_retried_without_loss_or_doubles(env: Env) -> None:
    batch = [
        _event(f"before-{uuid.uuid4().hex[:6]}"),
        _event(f"fail-{uuid.uuid4().hex[:6]}"),
        _event(f"middle-{uuid.uuid4().hex[:6]}"),
        _event(f"kill-{uuid.uuid4().hex[:6]}"),
        _event(f"after-{uuid.uuid4().hex[:6]}"),
    ]
    retried_before = env.retried_tries()
    for body in batch:
        env.post(body)
    ids = {b["id"] for b in batch}
    env.wait_processed(ids, "every event of the failing batch processed")
    env.assert_exactly_once()
    # Whichever run waits for the lease takes the batch over, so it may be done before the failed runs'
    # retries are even scheduled: the failed tries are read from the history, then their retries awaited.
    wait_for(
        lambda: len(env.retried_tries() - retried_before) >= 2, "the failed and the killed try in history"
    )
    failed = env.retried_tries() - retried_before
    assert sorted(env.how_try_ended(*t) for t in failed) == ["failed", "killed"], failed
    for run_id, try_number in failed:
        wait_for(lambda t=(run_id, try_number): env.succeeded_after(*t), f"a successful retry of {run_id}")
    env.assert_exactly_once()  # the retries found nothing left to process


@pytest.mark.timeout(900)
def test_a_store_outage_with_a_triggerer_restart_creates_no_run_and_misses_nothing(env: Env) -> None:
    before_outage = [_event(f"pre-outage-{i}") for i in range(3)]
    for body in before_outage:
        env.post(body)
    env.pg.pause()  # at once: the watcher may not have fired for these yet
    try:
        time.sleep(4.0)  # the watcher polls a store that is down
        runs_in_outage = len(env.stack.dag_runs(DAG_ID))
        env.stack.restart("triggerer")
        time.sleep(8.0)  # several retry rounds of the restarted watcher against a store that is down
    finally:
        env.pg.resume()
    time.sleep(8.0)  # the store is back; nothing was posted since before the outage
    new_runs = env.stack.dag_runs(DAG_ID)[runs_in_outage:]
    # Runs for the three events posted before the outage may come now; an outage must not add any other.
    assert len(new_runs) <= len(before_outage), new_runs
    after_outage = [_event(f"post-outage-{i}") for i in range(5)]
    for body in after_outage:
        env.post(body)
    ids = {b["id"] for b in before_outage + after_outage}
    env.wait_processed(ids, "every event from before and after the outage processed")
    env.assert_exactly_once()
    asset_payloads = [
        e["extra"].get("payload", {})
        for e in env.stack.asset_events(CONSUMER)
        if e["extra"].get("from_trigger")
    ]
    assert all(p.get("status") == "event" for p in asset_payloads), "an outage became an asset event"
    assert all("event" not in p for p in asset_payloads), "a payload reached Airflow's database"
