"""From a claim to the records: events grouped per record, and the example DAG that loads updated candidates
into a SQL table, run with ``dag.test()`` against the emulator, the real receiver and a SQLite store."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_carerix.definitions.changes import group_changes
from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE
from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook, ClaimedEvent
from airflow_provider_carerix.store import EventStore

ROOT = Path(__file__).resolve().parent.parent
SECRET = "a-long-random-receiver-secret"
T0 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)


def claimed(
    sequence: int, event_type: str, entity_id: str | None, changed: list[str] | None = None
) -> ClaimedEvent:
    data: dict[str, Any] = {"entityId": entity_id}
    if changed is not None:
        data["changedFields"] = changed
    payload = {"id": str(uuid.uuid4()), "time": "2026-12-01T09:00:00Z", "type": event_type, "data": data}
    return ClaimedEvent(
        payload["id"], event_type, entity_id, sequence, T0 + timedelta(seconds=sequence), payload
    )


# ------------------------------------------------------------------------------------------ grouping


def test_a_burst_of_50_updates_to_5_candidates_is_5_changes() -> None:
    events = [
        claimed(n, "cremployee:updated", str(n % 5 + 1), ["touser.lastname"] if n % 2 else ["tostatusnode"])
        for n in range(1, 51)
    ]
    events.append(claimed(51, "crjob:updated", "1", ["tostatusnode"]))
    changes = group_changes(reversed(events), "cremployee:updated")  # any order in, sequence order out
    assert [c.entity_id for c in changes] == ["2", "3", "4", "5", "1"]  # by latest event: 46..50
    assert all(len(c.events) == 10 for c in changes)
    first = changes[-1]
    assert first.latest.sequence == 50 and [e.sequence for e in first.events] == list(range(5, 51, 5))
    assert first.changed_fields == {"touser.lastname", "tostatusnode"}
    assert (
        first.changed("toUser") and first.changed("TOSTATUSNODE") and not first.changed("touser.emailaddress")
    )
    assert first.graphql_fields() == ["toStatusNode", "toUser.lastName"]
    assert [(c.entity, c.entity_id) for c in group_changes(events)][-1] == ("crjob", "1")


def test_unknown_changed_fields_and_deletions() -> None:
    events = [
        claimed(1, "cremployee:updated", "7", ["touser.lastname"]),
        claimed(2, "cremployee:created", "8"),
        claimed(3, "cremployee:deleted", "7"),
        claimed(4, "cremployee:updated", None, ["x"]),
    ]
    seven, eight = sorted(group_changes(events), key=lambda c: c.entity_id)
    assert seven.deleted and seven.actions == {"updated", "deleted"} and seven.changed_fields is None
    assert seven.changed("anything") and seven.graphql_fields() is None
    assert not eight.deleted and eight.actions == {"created"}
    claim = SimpleNamespace(events=events)
    from airflow_provider_carerix.hooks.event_store import Claim

    assert Claim.entity_ids(claim, "cremployee") == ["8", "7"]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the example DAG


def _load_dag() -> Any:
    from tests.fixtures.airflow import DagBag

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / "carerix_candidates_to_sql.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("carerix_candidates_to_sql")


def _xcom(dag_run: Any) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="load_candidates", key="return_value"
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _table(db: Path) -> dict[int, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return {row[0]: row[1:] for row in conn.execute("SELECT * FROM candidates")}


@pytest.mark.timeout(300)
def test_example_dag_loads_updated_candidates_once_per_event_idempotently(
    airflow_db: None, emulator_factory: Any, receiver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    db = tmp_path / "candidates.db"
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_CANDIDATES_DB", str(db))
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
            "filters": [{"eventType": "cremployee:updated"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": SECRET}],
        },
    )
    dag = _load_dag()
    # What the provider's listener does when Airflow first records the DAG: the consumer starts here.
    CarerixEventStoreHook(store_conn_id=None, store_url=store_url).ensure_consumer(
        "carerix_candidates_to_sql"
    )

    # A burst: 50 updates to 5 candidates, each delivered by Carerix and stored by the receiver.
    for n in range(50):
        candidate = n % 5 + 1
        field = {0: "lastName", 1: "emailAddress", 2: "toStatusNode"}[n % 3]
        value = 1 + n % 4 if field == "toStatusNode" else f"{field}-{n}@example.com"
        assert all(d.ok for d in emulator.update_record("cremployee", candidate, {field: value}))
    with EventStore(store_url) as store:
        assert len(store.events_after(0)) == 50
    emulator.reset_log()

    first = dag.test()
    assert first.state == "success"
    assert _xcom(first) == {"events": 50, "candidates": 5}
    assert emulator.count("POST", "/graphql") == 1  # the 5 records in one request, not 50
    expected = {r["employeeID"]: r for r in emulator.records("cremployee")}
    nodes = emulator._records["CRDataNode"]  # status nodes are not an entity of their own
    rows = _table(db)
    assert set(rows) == {1, 2, 3, 4, 5}
    for employee_id, (first_name, last_name, email, status) in rows.items():
        record = expected[employee_id]
        assert (first_name, last_name, email) == (
            record["firstName"],
            record["lastName"],
            record["emailAddress"],
        )
        assert status == nodes[record["toStatusNode"]["_id"]]["value"]
    # Nothing new: a no-op run asks Carerix nothing.
    second = dag.test()
    assert _xcom(second) == {"events": 0, "candidates": 0} and emulator.count("POST", "/graphql") == 1
    # One more change: that row is replaced (upsert on the id), the others stay.
    emulator.update_record("cremployee", 3, {"lastName": "Zwart"})
    third = dag.test()
    assert _xcom(third) == {"events": 1, "candidates": 1}
    after = _table(db)
    assert after[3][1] == "Zwart" and len(after) == 5
    assert {k: v for k, v in after.items() if k != 3} == {k: v for k, v in rows.items() if k != 3}
    # Personal data never reached XCom.
    assert "Zwart" not in json.dumps([_xcom(r) for r in (first, second, third)])
