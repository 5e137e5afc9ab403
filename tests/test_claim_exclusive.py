"""``claim()`` is exclusive in every execution context: each claim is its own lease holder.

Outside a task's own context (a plain script, ``@task.virtualenv``, ``@task.external_python``, a container)
``get_current_context()`` is unavailable. Every claim there once got the same holder name, and the lease took
the same holder for its owner: two processes then held one consumer at once and processed events twice.
Checked here with real processes and a real ``@task.virtualenv`` task run by Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import EventStore
from tests.guide import guide_event

ROOT = Path(__file__).resolve().parent.parent

CLAIMER = """
import json, pathlib, sys, time
from airflow_provider_carerix.events import CarerixEvents

out, stop = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
events = CarerixEvents("exclusive", event_types=["cremployee:updated"], start_from="earliest")
taken = []
while True:
    with events.claim(wait_timeout=60) as claim:
        taken.extend(e.event_id for e in claim)
        time.sleep(0.05)  # work while holding the lease
    pathlib.Path(f"{out}.ready").touch()
    if stop.exists():
        break
out.write_text(json.dumps(taken))
"""


def put(store: EventStore) -> str:
    body = guide_event(int(uuid.uuid4().int % 100000), ["touser"])
    store.insert(json.dumps(body), EventPayload.model_validate(body))
    return body["id"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_two_processes_outside_a_task_never_take_the_same_event(
    store: EventStore, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    env = {**os.environ, "CARERIX_EVENT_STORE_URL": store_url, "PYTHONPATH": str(ROOT)}
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TRY_NUMBER"):
        env.pop(name, None)
    sent = [put(store) for _ in range(20)]
    outs = [tmp_path / f"claimer-{i}.json" for i in range(2)]
    stop = tmp_path / "stop"
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(out), str(stop)], env=env, cwd=tmp_path)
        for out in outs
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{out}.ready").exists() for out in outs):  # both claiming
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    for _ in range(40):  # more events while both claim
        sent.append(put(store))
        time.sleep(0.02)
    stop.write_text("stop")
    for proc in procs:
        assert proc.wait(timeout=180) == 0
    taken = [json.loads(out.read_text()) for out in outs]
    everything = taken[0] + taken[1]
    assert len(everything) == len(set(everything)), "an event was taken by both processes"
    # What is left (sent after a claimer's last claim) is taken by the next claim, once.
    from airflow_provider_carerix.events import CarerixEvents

    with CarerixEvents("exclusive", event_types=["cremployee:updated"]).claim() as rest:
        everything += [e.event_id for e in rest]
    assert sorted(everything) == sorted(sent)


def claim_in_a_virtualenv(result_file: str) -> None:
    """Runs in a virtualenv Airflow made for the task: no task context there."""
    import faulthandler
    import json
    import sys

    faulthandler.dump_traceback_later(30, exit=True, file=sys.stderr)

    from airflow_provider_carerix.events import CarerixEvents
    from airflow_provider_carerix.hooks.event_store import ConsumerBusy

    events = CarerixEvents("venv_consumer", event_types=["cremployee:updated"], start_from="earliest")
    try:
        with events.claim(wait_timeout=3) as claim:
            outcome = {"claimed": [e.event_id for e in claim]}
    except ConsumerBusy as exc:
        outcome = {"busy": str(exc)}
    with open(result_file, "w") as f:
        json.dump(outcome, f)


def run_dag(dag: Any) -> Any:
    """``dag.test()`` of a DAG built in the test (synced to the metadata database first, as a parse would)."""
    import importlib

    from airflow.dag_processing.bundles.manager import DagBundlesManager

    from tests.fixtures.airflow import DagBag

    sync_bag_to_db = importlib.import_module(DagBag.__module__).sync_bag_to_db
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(ROOT / "tests" / "data" / "no-such-folder"))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_virtualenv_task_waits_for_a_claim_held_elsewhere(
    airflow_db: None, store: EventStore, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import DAG, task

    from airflow_provider_carerix.events import CarerixEvents

    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    put(store)
    put(store)
    result = tmp_path / "venv-result.json"
    site = sysconfig.get_paths()["purelib"]
    with DAG("carerix_claim_in_virtualenv", schedule=None) as dag:
        task.virtualenv(
            task_id="claim",
            system_site_packages=False,
            env_vars={
                "PYTHONPATH": os.pathsep.join([site, str(ROOT)]),
                "CARERIX_EVENT_STORE_URL": store_url,
                # dag.test() runs the task in-process, where nobody answers the virtualenv's connection
                # lookups; a real worker's supervisor does. The store is the URL here.
                "AIRFLOW__CARERIX__EVENT_STORE_CONN_ID": "",
            },
        )(claim_in_a_virtualenv)(str(result))

    held = threading.Event()
    release = threading.Event()

    def hold() -> None:  # another process's claim, also outside a task
        with CarerixEvents(
            "venv_consumer", event_types=["cremployee:updated"], start_from="earliest"
        ).claim():
            held.set()
            release.wait(300)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        run_dag(dag)
        outcome = json.loads(result.read_text())
        assert "busy" in outcome, f"the virtualenv task took a consumer another claim held: {outcome}"
        assert "outside a task" in outcome["busy"]
    finally:
        release.set()
        holder.join(60)
    run_dag(dag)
    assert json.loads(result.read_text()) == {"claimed": []}  # the holder processed them


def test_each_claim_has_its_own_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_carerix.events import _current_task

    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TRY_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    (dag_a, holder_a), (dag_b, holder_b) = _current_task(), _current_task()
    assert dag_a is dag_b is None and holder_a != holder_b
    assert holder_a.startswith("outside a task (") and str(os.getpid()) in holder_a
    # Where Airflow passed its context on as environment variables, the DAG is known (and owns the consumer).
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "my_dag")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__1")
    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", "2")
    dag_id, holder = _current_task()
    assert dag_id == "my_dag" and holder.startswith("my_dag run manual__1 try 2 (")
