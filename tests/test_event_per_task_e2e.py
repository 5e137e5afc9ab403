"""One task instance per event, end to end on real Airflow: receiver -> PostgreSQL store -> watcher -> DAG runs
-> ``reserve()`` -> ``handle.expand(event_id=...)`` -> ``release()`` as teardown.

One module-scoped stack (scheduler, dag-processor, triggerer, API server; LocalExecutor, 4 task slots), a
private PostgreSQL cluster for the store (reached through the Airflow connection ``carerix_event_store``), and
a DAG written for the test: the mapped task fails once, kills itself with SIGKILL once, or hangs, for events
whose entity id says so, writing a marker with its run, map index and try first. Checked:

(a) a burst in waves makes several runs, each mapping instances over its own events: every event recorded
    processed in the store and returned by exactly one successful instance; a run that finds nothing left
    maps zero instances (skipped) and succeeds;
(b) an instance that fails and one killed with SIGKILL mid-event are retried in the same run at the same map
    index, and that retry handles the same event: nothing lost or doubled;
(c) a run marked failed in Airflow while one of its instances holds an event: the event goes back once the
    run's lease expired, and a later run processes it, once.

Bounds are "never happens" limits, not performance targets; the durations are printed.
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
from typing import Any

import httpx
import pytest

from airflow_provider_carerix.store import EventStore
from tests.fixtures.airflow_stack import AirflowStack, wait_for
from tests.fixtures.postgres import SUPERUSER, PostgresCluster, _require_postgres
from tests.fixtures.receiver import SECRET_HEADER, start_receiver
from tests.guide import guide_event

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.postgres]

DAG_ID = "carerix_event_per_task_e2e"
CONSUMER = "carerix_event_per_task_e2e"
SECRET = "e2e-" + uuid.uuid4().hex
LEASE_SECONDS = 6

DAG_FILE = """
from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta

from airflow.sdk import DAG, get_current_context, task

from airflow_provider_carerix.events import CarerixEvents

MARKERS = {markers!r}
events = CarerixEvents({consumer!r}, event_types=["cremployee:updated"], lease_seconds={lease})

with DAG({dag_id!r}, schedule=[events], default_args={{"retries": 3, "retry_delay": timedelta(seconds=1)}}):

    @task
    def reserve() -> list[str]:
        return events.reserve()

    @task
    def handle(event_id: str) -> str:
        with events.claim_event(event_id) as event:
            entity = event["data"]["entityId"]
            marker = os.path.join(MARKERS, entity)
            if entity.startswith(("fail-", "kill-", "hang-")) and not os.path.exists(marker):
                ti = get_current_context()["ti"]
                with open(marker, "w") as f:
                    json.dump({{"run_id": ti.run_id, "map_index": ti.map_index, "try_number": ti.try_number}}, f)
                if entity.startswith("kill-"):
                    os.kill(os.getpid(), signal.SIGKILL)  # a worker crash in the middle of the event
                if entity.startswith("hang-"):
                    time.sleep(3600)  # until the run is marked failed
                raise RuntimeError("forced failure in the middle of the event")
            time.sleep(0.3)  # work, so that runs overlap
        return event.event_id

    @task
    def release() -> int:
        return events.release()

    handle.expand(event_id=reserve()) >> release().as_teardown()
"""


@dataclass
class Env:
    stack: AirflowStack
    store: EventStore
    receiver_url: str
    client: httpx.Client
    markers: Any
    #: Headers for Airflow's REST API (its token); the receiver gets only its own secret header.
    api: dict[str, str]

    def post(self, body: dict[str, Any]) -> None:
        response = self.client.post(
            f"{self.receiver_url}/events",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
        )
        assert 200 <= response.status_code < 300, response.text

    def instances(self) -> list[dict[str, Any]]:
        """Every successful ``handle`` instance: run, map index, try and the event id it returned."""
        rows = self.stack.query(
            "SELECT ti.run_id, ti.map_index, ti.try_number, x.value FROM task_instance ti JOIN xcom x ON "
            "x.dag_id = ti.dag_id AND x.task_id = ti.task_id AND x.run_id = ti.run_id AND x.map_index = ti.map_index "
            "WHERE ti.dag_id = ? AND ti.task_id = 'handle' AND ti.state = 'success' AND x.key = 'return_value'",
            DAG_ID,
        )
        result = []
        for r in rows:
            value = r["value"]
            value = value.decode() if isinstance(value, (bytes, bytearray)) else value
            result.append(
                {
                    "run_id": r["run_id"],
                    "map_index": r["map_index"],
                    "try_number": r["try_number"],
                    "event_id": json.loads(value) if isinstance(value, str) else value,
                }
            )
        return result

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(i["event_id"] for i in self.instances())

    def recorded(self, event_id: str) -> bool:
        stored = self.store.event_by_id(event_id)
        return stored is not None and self.store.was_processed(CONSUMER, stored.sequence)

    def reserved(self, ids: set[str]) -> bool:
        """Whether every one of these events is reserved by a run (or already recorded processed)."""
        states = {s.event_id: s for s in self.store.event_states(CONSUMER).values()}
        return all(
            (i in states and (states[i].reserved_by is not None or states[i].processed)) or self.recorded(i)
            for i in ids
        )

    def wait_processed(self, ids: set[str], what: str, timeout: float = 420) -> None:
        wait_for(
            lambda: ids <= set(self.counts()) and all(self.recorded(i) for i in ids),
            what,
            timeout=timeout,
            interval=1.0,
        )

    def assert_exactly_once(self) -> None:
        doubled = {k: v for k, v in self.counts().items() if v != 1}
        assert doubled == {}, f"returned by more than one successful instance: {doubled}"

    def task_states(self, run_id: str, task_id: str) -> list[str]:
        rows = self.stack.query(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ? ORDER BY map_index",
            DAG_ID,
            run_id,
            task_id,
        )
        return [r["state"] for r in rows]

    def run_state(self, run_id: str) -> str:
        return next(r["state"] for r in self.stack.dag_runs(DAG_ID) if r["run_id"] == run_id)

    def ended_try(self, marker: dict[str, Any]) -> str:
        """'failed', 'killed' or 'other': how the marked try ended, from its own task log."""
        log = (
            self.stack.home
            / "logs"
            / f"dag_id={DAG_ID}"
            / f"run_id={marker['run_id']}"
            / "task_id=handle"
            / f"map_index={marker['map_index']}"
            / f"attempt={marker['try_number']}.log"
        )
        text = log.read_text()
        if '"SIGKILL"' in text:  # the supervisor's line: "Process terminated by signal", signal_name
            return "killed"
        if "forced failure in the middle of the event" in text:
            return "failed"
        return "other"

    def marker(self, entity: str) -> dict[str, Any]:
        """The marker the forced try wrote (waited for: it may be half written when first seen)."""

        def read() -> dict[str, Any] | None:
            try:
                return dict(json.loads((self.markers / entity).read_text()))
            except (OSError, ValueError):
                return None

        return dict(wait_for(read, f"the marker of {entity}", timeout=300))


def _event(entity_id: str) -> dict[str, Any]:
    return guide_event(entity_id, ["touser.tosinglestatusnode"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_postgres()
    work = tmp_path_factory.mktemp("per-task-e2e")
    dags, markers = work / "dags", work / "markers"
    dags.mkdir()
    markers.mkdir()
    (dags / "carerix_event_per_task_e2e.py").write_text(
        textwrap.dedent(DAG_FILE).format(
            markers=str(markers), consumer=CONSUMER, dag_id=DAG_ID, lease=LEASE_SECONDS
        )
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
        # All-admins mode: Airflow 3.3's API takes requests without a token, 3.1 wants the one it hands out.
        token = client.get(f"{stack.api_url}/auth/token")
        assert token.status_code in (200, 201), token.text
        api = {"Authorization": f"Bearer {token.json()['access_token']}"}
        wait_for(lambda: store.get_cursor(f"{CONSUMER}:origin") > 0, "the watcher to start", timeout=300)
        yield Env(
            stack=stack, store=store, receiver_url=receiver_url, client=client, markers=markers, api=api
        )
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
def test_a_burst_in_waves_maps_each_run_over_its_own_events_each_recorded_once(env: Env) -> None:
    started = time.monotonic()
    runs_before = len(env.stack.dag_runs(DAG_ID))
    burst = [_event(f"burst-{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for wave in range(3):
            # Each wave once a run reserved the previous one: the next wave is another run's, reserved while
            # the instances of the earlier runs still work.
            posted = burst[wave * 8 : (wave + 1) * 8]
            list(pool.map(env.post, posted))
            wait_for(
                lambda ids={b["id"] for b in posted}: env.reserved(ids),
                f"wave {wave + 1} reserved by a run",
                timeout=300,
                interval=0.5,
            )
    ids = {b["id"] for b in burst}
    env.wait_processed(ids, "every event of the burst processed")
    env.assert_exactly_once()
    per_run = collections.Counter(i["run_id"] for i in env.instances() if i["event_id"] in ids)
    runs = env.stack.dag_runs(DAG_ID)[runs_before:]
    print(
        f"\nburst of 24 in 3 waves: {len(runs)} DAG runs, mapped instances per run "
        f"{sorted(per_run.values(), reverse=True)}; {time.monotonic() - started:.0f} s"
    )
    assert len(per_run) >= 2, per_run  # several runs, each with its own events
    sequences = [env.store.event_by_id(i).sequence for i in ids]  # type: ignore[union-attr]
    assert env.store.get_cursor(f"{CONSUMER}:processed") >= max(sequences)
    assert env.store.event_states(CONSUMER) == {}
    # A run with nothing left to reserve maps zero instances: skipped, and the run succeeds.
    response = env.client.post(
        f"{env.stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None}, headers=env.api
    )
    assert response.status_code in (200, 201), response.text
    empty = response.json()["dag_run_id"]
    wait_for(lambda: env.run_state(empty) in ("success", "failed"), "the empty run to finish", timeout=300)
    assert env.run_state(empty) == "success"
    assert env.task_states(empty, "handle") == ["skipped"]
    assert env.task_states(empty, "release") == ["success"]


@pytest.mark.timeout(900)
def test_a_failed_and_a_killed_instance_are_retried_with_their_own_events(env: Env) -> None:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    batch = [_event(f"{kind}-{tag}") for kind in ("before", "fail", "middle", "kill", "after")]
    for body in batch:
        env.post(body)
    ids = {b["id"] for b in batch}
    env.wait_processed(ids, "every event of the failing batch processed")
    env.assert_exactly_once()
    by_event = {i["event_id"]: i for i in env.instances()}
    for kind, how in (("fail", "failed"), ("kill", "killed")):
        body = next(b for b in batch if b["data"]["entityId"] == f"{kind}-{tag}")
        marker = env.marker(f"{kind}-{tag}")
        assert env.ended_try(marker) == how, marker
        succeeded = by_event[body["id"]]
        # Its own instance: the same run and map index, a later try, handled the same event.
        assert (succeeded["run_id"], succeeded["map_index"]) == (marker["run_id"], marker["map_index"])
        assert succeeded["try_number"] > marker["try_number"]
    print(f"\nfailed and killed instances retried with their own events: {time.monotonic() - started:.0f} s")


@pytest.mark.timeout(900)
def test_a_run_marked_failed_gives_its_event_back_to_a_later_run(env: Env) -> None:
    tag = uuid.uuid4().hex[:6]
    hang = _event(f"hang-{tag}")
    env.post(hang)
    doomed = env.marker(f"hang-{tag}")["run_id"]  # its instance holds the event now
    response = env.client.patch(
        f"{env.stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{doomed}",
        json={"state": "failed"},
        headers=env.api,
    )
    assert response.status_code == 200, response.text
    marked = time.monotonic()
    nudges = []
    # Later runs come with later events; the run marked failed keeps the event until its lease expired.
    deadline = time.monotonic() + 300
    while not env.recorded(hang["id"]):
        assert time.monotonic() < deadline, "the event of the run marked failed was never processed"
        nudge = _event(f"nudge-{uuid.uuid4().hex[:6]}")
        env.post(nudge)
        nudges.append(nudge["id"])
        wait_for(lambda n=nudge["id"]: env.recorded(n), "a nudge processed", timeout=300, interval=1.0)
    waited = time.monotonic() - marked
    env.wait_processed({hang["id"], *nudges}, "the given-back event and the nudges returned")
    env.assert_exactly_once()
    taker = next(i for i in env.instances() if i["event_id"] == hang["id"])
    assert taker["run_id"] != doomed and env.run_state(doomed) == "failed"
    print(
        f"\nrun marked failed: its event processed by a later run {waited:.0f} s after "
        f"(lease {LEASE_SECONDS} s, {len(nudges)} later event(s))"
    )
