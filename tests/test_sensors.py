"""CarerixEventSensor (deferrable and poke), and both example DAGs run with ``dag.test()``."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.sensors.events import CarerixEventError, CarerixEventSensor
from airflow_provider_carerix.store import EventStore, resolve_store_url
from airflow_provider_carerix.triggers.events import CarerixEventSensorTrigger
from airflow_provider_carerix.version_compat import AirflowSensorTimeout, TaskDeferred

ROOT = Path(__file__).resolve().parent.parent


def payload(event_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "time": "2024-02-14T14:24:40Z",
        "type": event_type,
        "applicationId": "192e953d-1e3a-4513-b14c-a66bca4be005",
        "webhookId": "4c3174c9-deab-426a-8d26-23bbc89e461e",
        "tenant": "cxdev50streamer",
        "data": {"entityId": "1", **(data or {})},
    }


def put(store: EventStore, body: dict[str, Any]) -> int:
    return store.insert(json.dumps(body), EventPayload.model_validate(body))[0]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(store_url: str) -> EventStore:
    s = EventStore(store_url)
    s.ping()
    yield s
    s.close()


def context(start: datetime) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(start_date=start)}


def sensor(store_url: str, **kwargs: Any) -> CarerixEventSensor:
    defaults: dict[str, Any] = {
        "task_id": "wait",
        "event_types": ["crmatch:updated"],
        "condition": "data.statusinfo eq '1234'",
        "store_url": store_url,
    }
    return CarerixEventSensor(**{**defaults, **kwargs})


def test_takes_an_event_already_stored_without_deferring(store: EventStore, store_url: str) -> None:
    start = datetime.now(timezone.utc)
    put(store, payload("crmatch:updated", {"statusinfo": "1"}))
    wanted = payload("crmatch:updated", {"statusinfo": "1234"})
    seq = put(store, wanted)
    result = sensor(store_url).execute(context(start))
    assert result["sequence"] == seq
    assert result["event_id"] == wanted["id"]
    assert "event" not in result  # a reference in XCom; the payload stays in the store
    json.dumps(result)


def test_defers_with_since_and_absolute_deadline(store: EventStore, store_url: str) -> None:
    put(store, payload("crmatch:updated", {"statusinfo": "1234"}))  # before the run started: not taken
    start = datetime.now(timezone.utc)
    task = sensor(store_url, timeout=600)
    before = datetime.now(timezone.utc)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context(start))
    trigger = deferred.value.trigger
    assert isinstance(trigger, CarerixEventSensorTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=600)
    _, kwargs = trigger.serialize()
    assert kwargs["since"] == start.isoformat()
    deadline = datetime.fromisoformat(kwargs["deadline"])
    assert before + timedelta(seconds=600) <= deadline <= datetime.now(timezone.utc) + timedelta(seconds=600)
    assert kwargs["event_types"] == ["crmatch:updated"]
    assert kwargs["condition"] == "data.statusinfo eq '1234'"


def test_explicit_since_is_used(store: EventStore, store_url: str) -> None:
    seq = put(store, payload("crmatch:updated", {"statusinfo": "1234"}))
    result = sensor(store_url, since="2000-01-01T00:00:00Z").execute(context(datetime.now(timezone.utc)))
    assert result["sequence"] == seq


def test_execute_complete(store_url: str) -> None:
    task = sensor(store_url)
    event = {"status": "event", "sequence": 3, "event_id": "x", "type": "crmatch:updated", "event": {}}
    assert task.execute_complete({}, event) == event
    with pytest.raises(CarerixEventError, match="store unavailable"):
        task.execute_complete({}, {"status": "error", "message": "store unavailable"})
    with pytest.raises(AirflowSensorTimeout):
        task.execute_complete({}, {"status": "timeout", "message": "no event"})


def test_timeout_surfaces_as_sensor_timeout_or_skip(store_url: str) -> None:
    timeout_event = {"status": "timeout", "message": "no event"}
    with pytest.raises(AirflowSensorTimeout):
        sensor(store_url).resume_execution("execute_complete", {"event": timeout_event}, {})
    from airflow_provider_carerix.version_compat import AirflowSkipException

    with pytest.raises(AirflowSkipException):
        sensor(store_url, soft_fail=True).resume_execution("execute_complete", {"event": timeout_event}, {})


def test_poke_mode_waits_and_times_out(store: EventStore, store_url: str) -> None:
    start = datetime.now(timezone.utc)
    task = sensor(store_url, deferrable=False, poke_interval=0.05, timeout=0.3)
    with pytest.raises(AirflowSensorTimeout):
        task.execute(context(start))
    task = sensor(store_url, deferrable=False, poke_interval=0.05, timeout=60)
    body = payload("crmatch:updated", {"statusinfo": "1234"})
    timer = threading.Timer(0.2, put, args=(store, body))
    timer.start()
    try:
        result = task.execute(context(start))
    finally:
        timer.join()
    assert result["event_id"] == body["id"]


def test_rejects_password_in_store_url() -> None:
    with pytest.raises(ValueError, match="password"):
        CarerixEventSensor(task_id="x", event_types=["*"], store_url="postgresql://u:pw@h/db")


# -- example DAGs with dag.test() ---------------------------------------------------------------------------


def load_dag(dag_id: str) -> Any:
    from tests.fixtures.airflow import DagBag

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _deferred_since(dag_id: str, task_id: str, started: datetime) -> bool:
    """Whether the task, in a run started at or after ``started``, has deferred (its trigger is waiting).

    ``dag.test()`` runs the trigger in line; the deferral shows in the metadata DB as the task instance's
    ``next_method``, which stays set while the trigger waits.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(TaskInstance.next_method)
            .join(DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id))
            .where(
                TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id, DagRun.start_date >= started
            )
        )
        return any(method is not None for method in session.scalars(query))


@pytest.mark.timeout(300)
def test_dag_wait_for_event(airflow_db: None) -> None:
    dag = load_dag("carerix_wait_for_event")
    store = EventStore(resolve_store_url())
    store.ping()
    wanted = payload("crmatch:updated", {"statusinfo": "1234"})
    started = datetime.now(timezone.utc)
    stop = threading.Event()
    delivered: list[bool] = []

    def deliver() -> None:
        # Ordered by state, not by a sleep: write once the sensor has deferred, so the events are newer than
        # the run and the trigger is what finds them, however slow dag.test() is to get there.
        while not stop.is_set():
            if _deferred_since(dag.dag_id, "wait_for_intake", started):
                put(store, payload("crmatch:updated", {"statusinfo": "999"}))
                put(store, wanted)
                delivered.append(True)
                return
            stop.wait(0.1)

    thread = threading.Thread(target=deliver)
    thread.start()
    try:
        run = dag.test()
    finally:
        stop.set()
        thread.join()
        store.close()
    assert delivered == [True]
    assert run.state == "success"
    assert xcom(run, "wait_for_intake")["event_id"] == wanted["id"]
    assert xcom(run, "start_intake") == {
        "match_id": "1",
        "event_id": wanted["id"],
        "tenant": wanted["tenant"],
    }


@pytest.mark.timeout(300)
def test_dag_event_driven_drains_the_store(airflow_db: None) -> None:
    dag = load_dag("carerix_event_driven")
    store = EventStore(resolve_store_url())
    store.ping()
    # The session's store may hold other tests' events: this consumer starts after them.
    store.advance_cursor("carerix_cremployee_updated:origin", store.last_sequence() + 1)
    store.advance_cursor("carerix_cremployee_updated:processed", store.last_sequence())
    bodies = [payload("cremployee:updated") for _ in range(3)]
    for body in bodies:
        put(store, body)
    put(store, payload("crjob:created"))
    try:
        first = dag.test()
        assert first.state == "success"
        assert xcom(first, "process_employee_updates") == [b["id"] for b in bodies]
        # Nothing new: the next run is a cheap no-op; a new event is taken exactly once.
        second = dag.test()
        assert xcom(second, "process_employee_updates") == []
        late = payload("cremployee:updated")
        put(store, late)
        third = dag.test()
        assert xcom(third, "process_employee_updates") == [late["id"]]
    finally:
        store.close()
