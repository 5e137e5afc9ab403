"""The coverage sweep against the emulator and a real store: changes no webhook reported become events (once),
reported ones do not, the window trails by its grace, the purge horizon is counted, and the event-driven DAG
processes what the sweep stored."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.coverage import sweep_id, sweep_records
from airflow_provider_carerix.definitions.changes import group_changes
from airflow_provider_carerix.definitions.entities import parse_carerix_date
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE
from airflow_provider_carerix.hooks.carerix import CarerixHook
from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook, ClaimedEvent
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store.schema import events

ROOT = Path(__file__).resolve().parent.parent
SECRET = "a-long-random-receiver-secret"


@pytest.fixture
def setup(emulator_factory: Any, receiver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """(emulator delivering cremployee:* to a real receiver, the store it writes to, its URL)."""
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    emulator = emulator_factory()
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(scope=f"{MANAGE_SCOPE} {DATA_SCOPE}")
    )
    url, _ = receiver(store_url, SECRET)
    app_id = emulator.add_application("airflow")
    emulator.add_webhook(
        app_id,
        {
            "url": f"{url}/events",
            "filters": [{"eventType": "cremployee:*"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": SECRET}],
        },
    )
    store = EventStore(store_url)
    yield emulator, store, store_url
    store.close()


def sweep(store: EventStore, since: datetime, until: datetime, **kwargs: Any) -> Any:
    records = CarerixHook().iter_entities("cremployee", modified_since=since, fields=[], deleted=True)
    return sweep_records(records, store, "cremployee", until=until, **kwargs)


def put(store: EventStore, entity_id: str, at: datetime, event_type: str = "cremployee:updated") -> None:
    payload = {
        "id": f"evt-{entity_id}-{at.timestamp()}",
        "time": at.isoformat(),
        "type": event_type,
        "data": {"entityId": entity_id},
    }
    store.insert(json.dumps(payload), EventPayload.model_validate(payload))


def test_unreported_changes_become_events_once(setup: Any) -> None:
    emulator, store, _ = setup
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ten_ago = now - timedelta(minutes=10)
    emulator.update_record("cremployee", 3, {"mobileNumber": "+31 6 1"}, deliver=False, at=ten_ago)
    emulator.update_record("cremployee", 4, {"lastName": "Reported"}, at=ten_ago)  # a webhook reported it
    new_id, _ = emulator.create_record("cremployee", {"firstName": "Noor"}, deliver=False, at=ten_ago)
    emulator.delete_record("cremployee", 6, deliver=False, at=ten_ago)
    emulator.update_record("cremployee", 9, {"city": "Delft"}, deliver=False, at=now - timedelta(minutes=1))
    # Timed a little before the change (clocks differ): still reports it; timed long before: does not.
    emulator.update_record("cremployee", 7, {"city": "Delft"}, deliver=False, at=ten_ago)
    put(store, "7", ten_ago - timedelta(seconds=30))
    emulator.update_record("cremployee", 8, {"city": "Delft"}, deliver=False, at=ten_ago)
    put(store, "8", ten_ago - timedelta(minutes=2))
    before = {e.event_id for e in store.events_after(0)}

    result = sweep(store, now - timedelta(minutes=30), now - timedelta(minutes=5))
    assert result.summary() == {
        "entity": "cremployee",
        "read": 7,
        "reported": 2,
        "stored": 4,
        "duplicates": 0,
        "too_recent": 1,
        "before_horizon": 0,
    }
    stored = {e.event_id: e for e in store.events_after(0) if e.event_id not in before}
    assert {e.entity_id: e.type for e in stored.values()} == {
        "3": "cremployee:updated",
        new_id: "cremployee:created",
        "6": "cremployee:deleted",
        "8": "cremployee:updated",
    }
    assert sweep_id("cremployee", "3", ten_ago) in stored
    event = stored[sweep_id("cremployee", "3", ten_ago)]
    assert event.time == ten_ago and "changedFields" not in event.payload["data"]
    assert (
        ClaimedEvent.from_stored(event).swept and not ClaimedEvent.from_stored(store.events_after(0)[0]).swept
    )
    assert group_changes([ClaimedEvent.from_stored(event)])[0].swept

    # The same window again (a rerun, an overlap): nothing new.
    again = sweep(store, now - timedelta(minutes=30), now - timedelta(minutes=5))
    assert (again.stored, again.duplicates, again.reported) == (0, 0, 6)
    # A later unreported change of the same record is a new event; the one left for later is taken now.
    emulator.update_record(
        "cremployee", 3, {"mobileNumber": "+31 6 2"}, deliver=False, at=now - timedelta(minutes=8)
    )
    later = sweep(store, now - timedelta(minutes=30), now)
    assert sorted(e.split(":")[2] for e in later.stored_ids) == ["3", "9"]


def test_records_are_read_without_their_personal_fields(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    emulator, store, _ = setup
    now = datetime.now(timezone.utc)
    emulator.update_record(
        "cremployee", 3, {"lastName": "Geheim"}, deliver=False, at=now - timedelta(minutes=9)
    )
    caplog.set_level(logging.DEBUG)
    records = list(
        CarerixHook().iter_entities("cremployee", modified_since=now - timedelta(minutes=10), fields=[])
    )
    assert records and set(records[0]) == {"_id", "employeeID", "creationDate", "modificationDate", "deleted"}
    sweep_records(records, store, "cremployee")
    assert "Geheim" not in caplog.text and "Geheim" not in json.dumps(
        [e.payload for e in store.events_after(0)]
    )


def test_changes_before_the_purge_horizon_are_swept_and_counted(setup: Any) -> None:
    emulator, store, _ = setup
    now = datetime.now(timezone.utc).replace(microsecond=0)
    emulator.update_record("cremployee", 5, {"city": "Delft"}, at=now - timedelta(minutes=40))  # reported...
    put(store, "1", now)  # (the newest event survives a purge)
    with store.engine.begin() as conn:  # received 40 minutes ago too
        conn.execute(
            sa.update(events).where(events.c.entity_id == "5").values(received_at=now - timedelta(minutes=40))
        )
    assert store.purge(timedelta(minutes=20)) == 1  # ...and its event purged
    horizon = store.purge_horizon()
    result = sweep(store, now - timedelta(hours=1), now, horizon=horizon)
    assert (result.stored, result.before_horizon) == (1, 1)


# ------------------------------------------------------------------------------------------ the example DAGs


def _dag(name: str) -> Any:
    from tests.fixtures.airflow import DagBag

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / f"{name}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(name)


def _xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.mark.timeout(300)
def test_swept_changes_reach_the_event_driven_dag(
    airflow_db: None, setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, _, store_url = setup
    db = tmp_path / "candidates.db"
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_CANDIDATES_DB", str(db))
    sweep_dag, load_dag = _dag("carerix_coverage_sweep"), _dag("carerix_candidates_to_sql")
    CarerixEventStoreHook(store_conn_id=None, store_url=store_url).ensure_consumer(
        "carerix_candidates_to_sql"
    )
    now = datetime.now(timezone.utc).replace(microsecond=0)
    emulator.update_record(
        "cremployee", 11, {"lastName": "Stil"}, deliver=False, at=now - timedelta(minutes=20)
    )

    swept = sweep_dag.test()
    assert swept.state == "success"
    summary = _xcom(swept, "sweep_cremployee")
    assert (summary["stored"], summary["reported"]) == (1, 0)
    assert _xcom(swept, "sweep_crvacancy")["stored"] == 0
    loaded = load_dag.test()
    assert _xcom(loaded, "load_candidates") == {"events": 1, "candidates": 1}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT last FROM candidates WHERE id = 11").fetchone() == ("Stil",)
    # The next run starts where this one started: the same change is not stored again.
    assert _xcom(sweep_dag.test(), "sweep_cremployee")["stored"] == 0
    assert parse_carerix_date(emulator.record("cremployee", 11)["modificationDate"]) == now - timedelta(
        minutes=20
    )


def test_the_operator_refuses_what_cannot_be_swept_and_warns_before_the_horizon(
    setup: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow_provider_carerix.operators.sweep import CarerixCoverageSweepOperator
    from airflow_provider_carerix.version_compat import AirflowFailException

    _, store, _ = setup
    for kwargs, message in [
        ({"entity": "crmatch", "since": "1h"}, "no key to page by"),
        ({"entity": "crplacement", "since": "1h"}, "unknown Carerix entity"),
        ({"entity": "cremployee", "since": None}, "since is required"),
        ({"entity": "cremployee", "since": "yesterday"}, "expected a duration"),
    ]:
        with pytest.raises(AirflowFailException, match=message):
            CarerixCoverageSweepOperator(task_id="t", **kwargs).execute({})  # type: ignore[arg-type]
    put(store, "1", datetime.now(timezone.utc) - timedelta(hours=2))
    put(store, "2", datetime.now(timezone.utc))
    store.purge(timedelta(hours=1))
    capfd.readouterr()
    CarerixCoverageSweepOperator(task_id="t", entity="cremployee", since="3h").execute({})  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    assert "before the event store's purge horizon" in out + err
    CarerixCoverageSweepOperator(task_id="t", entity="cremployee", since="30m").execute({})  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    assert "purge horizon" not in out + err and "Sweeping cremployee records" in out + err
