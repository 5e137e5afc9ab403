"""Recovery from Carerix's delivery log, against the emulator: the hook's paging, the recovery step, the CLI, the
operator in the example DAG, and the end-to-end proof (receiver down, 20 events lost to it, all recovered once).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from airflow_provider_carerix.cli import app as cli_app
from airflow_provider_carerix.definitions.models import DeliveryJob
from airflow_provider_carerix.durations import parse_since
from airflow_provider_carerix.events import CarerixEvents
from airflow_provider_carerix.exceptions import CarerixApiError
from airflow_provider_carerix.hooks.carerix import CarerixHook
from airflow_provider_carerix.provisioning.signing_keys import record_signing_keys
from airflow_provider_carerix.recovery import recover_events
from airflow_provider_carerix.store import EventStore

ROOT = Path(__file__).resolve().parent.parent
SECRET = "recovery-secret-5f2a"
DOWN = "http://127.0.0.1:9/events"  # discard port: nothing answers


def _app_with_webhook(emulator: Any, url: str) -> str:
    app_id = emulator.add_application("recovery")
    emulator.add_webhook(
        app_id,
        {
            "url": url,
            "filters": [{"eventType": "cremployee:*"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": SECRET}],
        },
    )
    return app_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ReceiverOnPort:
    """The real receiver app served by uvicorn on a fixed port: stopped and started again at the same URL."""

    def __init__(self, store: EventStore, port: int) -> None:
        from airflow_provider_carerix.receiver import create_app

        self.app = create_app(store, secrets=[SECRET])
        self.port = port
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            self.server = self.thread = None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield s
    s.close()


def _wait_until_retries_done(emulator: Any) -> None:
    deadline = time.monotonic() + 60
    while emulator.pending_retries():
        assert time.monotonic() < deadline, "the emulator kept retrying"
        time.sleep(0.02)


# -- the hook ---------------------------------------------------------------------------------------------------


def test_hook_pages_newest_first_and_stops_at_since(emulator_factory: Any) -> None:
    emulator = emulator_factory(retry_schedule=())
    _app_with_webhook(emulator, DOWN)
    for n in range(7):
        emulator.deliver("cremployee:updated", {"entityId": str(n)}, event_id=f"evt-{n}")
    hook = CarerixHook()
    jobs = list(hook.iter_delivery_jobs(page_size=3))
    assert len(jobs) == 7 and len({j.id for j in jobs}) == 7
    assert [j.created for j in jobs] == sorted((j.created for j in jobs), reverse=True)  # type: ignore[type-var]
    assert all(j.all_failed and j.webhook_id for j in jobs)
    assert emulator.count(path_contains="/graphql") == 3

    emulator.reset_log()
    assert (
        list(hook.iter_delivery_jobs(since=datetime.now(timezone.utc) + timedelta(hours=1), page_size=3))
        == []
    )
    assert emulator.count(path_contains="/graphql") == 1  # the first page is wholly older: no second page


def test_hook_graphql_uses_the_retry_policy_and_raises_graphql_errors(emulator: Any) -> None:
    from airflow_provider_carerix.hooks import carerix as hook_module

    hook = CarerixHook(retry_backoff=0)
    emulator.inject_fault(status=503, times=2, path_contains="/graphql")
    assert list(hook.iter_delivery_jobs()) == []
    assert emulator.count(path_contains="/graphql") == 3
    emulator.expire_tokens()  # a 401 fetches a new token once, as for every other call
    assert list(hook.iter_delivery_jobs()) == []
    with pytest.raises(CarerixApiError, match="GraphQL error: Cannot query field 'nope'"):
        hook.graphql("{ webhookDeliveryJobPage { nope } }")
    assert hook.graphql_url == emulator.url + hook_module.GRAPHQL_PATH


def test_parse_since() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now=now) == now - timedelta(hours=2)
    assert parse_since("2026-11-29T10:00:00Z", now=now) == datetime(2026, 11, 29, 10, tzinfo=timezone.utc)
    assert parse_since(None) is None and parse_since(" ") is None
    assert parse_since(timedelta(minutes=5), now=now) == now - timedelta(minutes=5)
    with pytest.raises(ValueError, match="since: expected a duration"):
        parse_since("yesterday")


def test_invalid_payloads_are_counted_not_stored(store: EventStore) -> None:
    good = json.dumps({"id": "ok-1", "time": "2026-11-29T10:00:00Z", "type": "crjob:created"})
    jobs = [
        DeliveryJob.model_validate(
            {"_id": "j1", "payload": good, "attempts": {"items": [{"deliveryStatus": "failed"}]}}
        ),
        DeliveryJob.model_validate({"_id": "j2", "payload": '{"id": "x"}', "attempts": {"items": []}}),
        DeliveryJob.model_validate({"_id": "j3", "payload": "not json"}),
        DeliveryJob.model_validate(
            {
                "_id": "j4",
                "payload": good.replace("ok-1", "ok-2"),
                "attempts": {"items": [{"deliveryStatus": "successful"}]},
            }
        ),
    ]
    result = recover_events(jobs, store, only_failed=True)
    # Only j1 failed every attempt: j2 and j3 were never attempted, j4 was delivered.
    assert (result.stored, result.skipped_delivered, result.invalid) == (1, 3, [])
    result = recover_events(jobs, store)
    assert result.stored == 1 and result.duplicates == 1
    assert [(i["job"], i["status"]) for i in result.invalid] == [("j2", 422), ("j3", 400)]
    assert {e.event_id for e in store.events_after(0)} == {"ok-1", "ok-2"}
    assert "not json" not in json.dumps(result.summary())


# -- the end-to-end proof ---------------------------------------------------------------------------------------


def test_twenty_events_lost_to_a_down_receiver_are_recovered_once(
    emulator_factory: Any, store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = emulator_factory(retry_schedule=(0.05, 0.05))
    port = _free_port()
    receiver = _ReceiverOnPort(store, port)
    app_id = _app_with_webhook(emulator, f"http://127.0.0.1:{port}/events")
    record_signing_keys(CarerixHook(), [app_id], store)
    try:
        # The receiver is down: every attempt of every delivery fails, retries included.
        deliveries = [emulator.deliver("cremployee:updated", {"entityId": str(n)})[0] for n in range(20)]
        assert all(d.status == 0 for d in deliveries)
        _wait_until_retries_done(emulator)
        jobs = list(CarerixHook().iter_delivery_jobs())
        assert len(jobs) == 20 and all(j.all_failed and len(j.attempts) == 3 for j in jobs)
        assert store.events_after(0) == []

        # An event-driven DAG's consumer, registered (as its watcher does) before anything is stored.
        url = str(store.url)
        monkeypatch.setenv("CARERIX_EVENT_STORE_URL", url)
        employee_updates = CarerixEvents("recovered_employee_updates", event_types=["cremployee:updated"])
        with employee_updates.claim() as claim:
            assert list(claim) == []

        receiver.start()
        first = CliRunner().invoke(cli_app, ["recover", "--since", "2h", "--store", url])
        assert first.exit_code == 0, first.output
        assert json.loads(first.output.strip().splitlines()[-1])["stored"] == 20
        stored = store.events_after(0)
        assert len(stored) == 20 and len({e.event_id for e in stored}) == 20
        assert {e.event_id for e in stored} == {d.event["id"] for d in deliveries}
        assert all(e.recovered and e.signature_verified is None for e in stored)
        # Byte for byte what Carerix delivered.
        assert {e.raw for e in stored} == {j.payload for j in jobs}

        second = CliRunner().invoke(cli_app, ["recover", "--since", "2h", "--only-failed", "--store", url])
        assert second.exit_code == 0, second.output
        summary = json.loads(second.output.strip().splitlines()[-1])
        assert (summary["stored"], summary["duplicates"]) == (0, 20)
        assert len(store.events_after(0)) == 20

        # What an event-driven DAG's task takes from the store: each recovered event once, nothing after a
        # further recovery run.
        with employee_updates.claim() as claim:
            assert sorted(e.event_id for e in claim) == sorted(d.event["id"] for d in deliveries)
        assert recover_events(CarerixHook().iter_delivery_jobs(), store).stored == 0
        with employee_updates.claim() as claim:
            assert list(claim) == []

        # The receiver is back: a new delivery is signed, verified and not "recovered"; a tampered one is refused.
        [live] = emulator.deliver("cremployee:updated", {"entityId": "live"}, event_id="live")
        assert live.status == 201
        [unsigned] = emulator.deliver(
            "cremployee:updated", {"entityId": "x"}, event_id="unsigned", signing="none"
        )
        assert unsigned.status == 401
        newest = store.events_after(20)
        assert [(e.event_id, e.signature_verified, e.recovered) for e in newest] == [("live", True, False)]
    finally:
        receiver.stop()


def test_recovery_while_carerix_redelivers_stores_each_event_once(
    emulator_factory: Any, store: EventStore
) -> None:
    emulator = emulator_factory(retry_schedule=(3600,))
    port = _free_port()
    receiver = _ReceiverOnPort(store, port)
    _app_with_webhook(emulator, f"http://127.0.0.1:{port}/events")
    try:
        ids = [emulator.deliver("cremployee:updated", {"entityId": str(n)})[0].event["id"] for n in range(20)]
        receiver.start()
        # Carerix's retries and the recovery run at the same time, twice over.
        retries = threading.Thread(target=emulator.retry_due, kwargs={"now": True})
        retries.start()
        results = []
        for _ in range(2):
            results.append(recover_events(CarerixHook().iter_delivery_jobs(page_size=7), store))
        retries.join(timeout=60)
        stored = store.events_after(0)
        assert sorted(e.event_id for e in stored) == sorted(ids)
        assert sum(r.stored for r in results) + sum(1 for e in stored if not e.recovered) == 20
        assert results[1].stored == 0
    finally:
        receiver.stop()


# -- the operator in the example DAG ----------------------------------------------------------------------------


def test_example_dag_recovers_since_its_last_success(
    airflow_db: None, emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.fixtures.airflow import DagBag

    url = f"sqlite:///{tmp_path / 'dag-events.db'}"
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", url)
    emulator = emulator_factory(retry_schedule=())
    _app_with_webhook(emulator, DOWN)
    for n in range(3):
        emulator.deliver("cremployee:updated", {"entityId": str(n), "lastName": "Private-Name"})
    bag = DagBag(dag_folder=str(ROOT / "example_dags" / "carerix_recover_events.py"))
    assert not bag.import_errors
    dag = bag.get_dag("carerix_recover_events")
    dag_run = dag.test()
    assert dag_run.state == "success"
    with create_session() as session:
        xcom = (
            session.query(XComModel)
            .filter_by(dag_id="carerix_recover_events", run_id=dag_run.run_id, key="return_value")
            .one()
        )
    summary = xcom.value if isinstance(xcom.value, dict) else json.loads(xcom.value)
    assert summary["stored"] == 3 and "Private-Name" not in json.dumps(summary)
    with EventStore(url) as store:
        assert len(store.events_after(0)) == 3
