"""Freshness and webhook health: checks that fail (and pass) against a real store and the emulator.

The freshness check reads a real store (SQLite and PostgreSQL); the webhook health check reads the emulator,
whose webhooks deliver to a real receiver: one with the right secret (delivered), one with a wrong one (the
receiver answers 401, Carerix's log records the failures), one disabled. The Carerix page shows what they saw.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.business_hours import BusinessHours
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
from airflow_provider_carerix.operators.monitoring import (
    CarerixFreshnessOperator,
    CarerixWebhookHealthOperator,
)
from airflow_provider_carerix.provisioning.health import check_webhooks
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store.filters import EventFilter
from airflow_provider_carerix.store.schema import events as events_table
from airflow_provider_carerix.ui.sections import consumers, last_events, webhooks
from airflow_provider_carerix.version_compat import AirflowFailException

ROOT = Path(__file__).resolve().parent.parent
SECRET = "health-secret-" + uuid.uuid4().hex[:8]
AMSTERDAM = "Europe/Amsterdam"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# -- business hours ------------------------------------------------------------------------------------------


def test_business_hours_count_only_time_inside_the_windows() -> None:
    hours = BusinessHours.parse("Mon-Fri 08:00-18:00", AMSTERDAM)
    # Friday 17:30 to Monday 09:00 Amsterdam time (UTC+1 in December): half an hour, then one hour.
    assert hours.elapsed(utc(2026, 12, 4, 16, 30), utc(2026, 12, 7, 8, 0)) == timedelta(minutes=90)
    assert hours.elapsed(utc(2026, 12, 5, 9), utc(2026, 12, 6, 20)) == timedelta(0)  # a weekend
    assert hours.elapsed(utc(2026, 12, 7, 8), utc(2026, 12, 7, 7)) == timedelta(0)  # backwards
    assert hours.contains(utc(2026, 12, 7, 7, 0)) and not hours.contains(utc(2026, 12, 7, 6, 59))
    assert not hours.contains(utc(2026, 12, 6, 12))  # Sunday


def test_business_hours_follow_daylight_saving_and_wrap_over_the_weekend() -> None:
    hours = BusinessHours.parse("Mon-Sun 00:00-24:00", AMSTERDAM)
    # 29 March 2026: clocks go forward at 02:00, the local day has 23 hours.
    assert hours.elapsed(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)) == timedelta(hours=23)
    nine = BusinessHours.parse("Mon 09:00-10:00", AMSTERDAM)
    assert nine.elapsed(utc(2026, 3, 30, 6), utc(2026, 3, 30, 12)) == timedelta(hours=1)
    assert nine.contains(utc(2026, 3, 30, 7, 30))  # 09:30 CEST
    weekend = BusinessHours.parse(["Fri-Mon 10:00-11:00"])
    assert [w[0] for w in weekend.windows] == [0, 4, 5, 6]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Mon-Fri", "expected days and a time range"),
        ("Mox 08:00-09:00", "'Mox' is not a day"),
        ("Mon 18:00-08:00", "ends at or before it starts"),
        ("Mon 08:00-24:30", "'24:30' is not a time of day"),
        ("", "no window given"),
    ],
)
def test_a_bad_schedule_says_which_entry_and_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        BusinessHours.parse(text)


def test_an_unknown_zone_is_refused_where_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        CarerixFreshnessOperator(
            task_id="t",
            event_types="crjob:*",
            max_silence="1h",
            business_hours="Mon 08:00-09:00",
            timezone="Mars/Olympus",
        )


# -- freshness against a real store ---------------------------------------------------------------------------


def put(store: EventStore, event_type: str, *, hours_ago: float = 0.0) -> int:
    body = {
        "id": str(uuid.uuid4()),
        "time": "2024-02-14T14:24:40Z",
        "type": event_type,
        "applicationId": "app-1",
        "webhookId": "wh-1",
        "data": {"entityId": "7", "lastName": "Private-Name"},
    }
    raw = json.dumps(body)
    sequence, _ = store.insert(raw, EventPayload.model_validate(body))
    if hours_ago:
        with store.engine.begin() as conn:
            conn.execute(
                events_table.update()
                .where(events_table.c.sequence == sequence)
                .values(received_at=datetime.now(timezone.utc) - timedelta(hours=hours_ago))
            )
    return sequence


def freshness(store_url: str, **kwargs: Any) -> CarerixFreshnessOperator:
    return CarerixFreshnessOperator(task_id="fresh", store_conn_id=None, event_store_url=store_url, **kwargs)


def test_a_consumer_behind_fails_and_passes_once_processed(store: EventStore, store_url: str) -> None:
    hook = CarerixEventStoreHook(store_conn_id=None, store_url=store_url)
    flt = EventFilter.build(["cremployee:*"])
    hook.ensure_consumer("employees", flt, start_from="earliest")  # records its filter, as a claim does
    put(store, "crjob:updated", hours_ago=5)  # not the consumer's: never counts
    first = put(store, "cremployee:updated", hours_ago=3)
    put(store, "cremployee:created", hours_ago=0.1)

    with pytest.raises(AirflowFailException) as failed:
        freshness(store_url, consumer="employees", max_age="2h").execute({})
    message = str(failed.value)
    assert "Carerix consumer 'employees'" in message and f"sequence {first}, cremployee:updated" in message
    assert "is 3h old" in message or "is 2h 59m old" in message
    assert "more than max_age 2h" in message and "2 event(s) wait" in message
    assert "Private-Name" not in message

    assert freshness(store_url, consumer="employees", max_age="4h").execute({})["backlog"]["waiting"] == 2
    store.advance_cursor("employees:processed", first)  # the DAG processed the old one
    result = freshness(store_url, consumer="employees", max_age="2h").execute({})
    assert result["backlog"]["waiting"] == 1 and result["backlog"]["age_seconds"] < 3600
    hook.close()


def test_an_unknown_consumer_fails_rather_than_watching_nothing(store: EventStore, store_url: str) -> None:
    with pytest.raises(AirflowFailException, match="'employes' does not exist in the event store"):
        freshness(store_url, consumer="employes", max_age="1h").execute({})


def test_silence_fails_after_max_silence_and_not_outside_business_hours(
    store: EventStore, store_url: str
) -> None:
    put(store, "cremployee:updated", hours_ago=0.2)
    job = put(store, "crjob:updated", hours_ago=3)
    with pytest.raises(AirflowFailException) as failed:
        freshness(store_url, event_types=["crjob:*", "crmatch:created"], max_silence="2h").execute({})
    message = str(failed.value)
    assert "no Carerix event of crjob:*, crmatch:created stored" in message
    assert f"the last: sequence {job}, crjob:updated" in message and "more than max_silence 2h" in message
    assert freshness(store_url, event_types="cremployee:*", max_silence="1h").execute({})["silence"]["last"]
    # Only on a day that is neither today nor yesterday: the last three hours count nothing.
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(datetime.now(timezone.utc).weekday() + 2) % 7]
    quiet = freshness(store_url, event_types="crjob:*", max_silence="2h", business_hours=f"{day} 00:00-24:00")
    assert quiet.execute({})["silence"]["silent_seconds"] == 0


def test_silence_counts_from_the_stores_creation_when_no_such_event_was_ever_stored(
    store: EventStore, store_url: str
) -> None:
    put(store, "cremployee:updated")
    assert (
        freshness(store_url, event_types="crjob:*", max_silence="1h").execute({})["silence"]["last"] is None
    )
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE carerix_store_info SET created_at = :t"), {"t": datetime(2020, 1, 1)})
    with pytest.raises(AirflowFailException, match="none stored since the store was created"):
        freshness(store_url, event_types="crjob:*", max_silence="1h").execute({})


def test_the_page_shows_each_consumers_age_and_the_last_event_of_each_type(
    store: EventStore, store_url: str
) -> None:
    hook = CarerixEventStoreHook(store_conn_id=None, store_url=store_url)
    hook.ensure_consumer("employees", EventFilter.build(["cremployee:*"]), start_from="earliest")
    hook.close()
    put(store, "crjob:updated", hours_ago=5)
    put(store, "cremployee:updated", hours_ago=3)
    put(store, "cremployee:created", hours_ago=0.5)
    newest_job = put(store, "crjob:updated", hours_ago=1)
    [consumer] = consumers(store)
    assert consumer["lag"] == 2 and 3 * 3600 - 60 < consumer["age_seconds"] < 3 * 3600 + 60
    by_type = {row["type"]: row for row in last_events(store)}
    assert set(by_type) == {"crjob:updated", "cremployee:updated", "cremployee:created"}
    assert by_type["crjob:updated"]["sequence"] == newest_job
    assert 3600 - 60 < by_type["crjob:updated"]["age_seconds"] < 3600 + 60
    store.advance_cursor("employees:processed", newest_job)
    [consumer] = consumers(store)
    assert consumer["lag"] == 0 and consumer["age_seconds"] is None


# -- webhook health against the emulator --------------------------------------------------------------------


@pytest.fixture
def carerix(emulator_factory: Any, receiver: Any, tmp_path: Path) -> dict[str, Any]:
    """An application with three webhooks to a real receiver: delivering, refused (wrong secret), disabled."""
    emulator = emulator_factory(retry_schedule=())
    store_url = f"sqlite:///{tmp_path / 'received.db'}"
    url, _ = receiver(store_url, SECRET)
    app = emulator.add_application("airflow-carerix")

    def webhook(secret: str, path: str) -> str:
        return emulator.add_webhook(
            app,
            {
                "url": f"{url}/events?{path}",
                "filters": [{"eventType": "cremployee:*"}],
                "customHeaders": [{"name": "X-Carerix-Secret", "value": secret}],
            },
        )

    ok, refused = webhook(SECRET, "token=query-secret-1"), webhook("changed-secret", "token=query-secret-2")
    for n in range(12):
        emulator.deliver("cremployee:updated", {"entityId": str(n), "lastName": "Private-Name"})
    return {"emulator": emulator, "app": app, "ok": ok, "refused": refused, "url": url}


def test_the_health_check_names_a_failing_and_a_disabled_webhook(
    carerix: dict[str, Any], tmp_path: Path
) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    hook = CarerixHook()
    report = check_webhooks(hook, ["airflow-carerix"])
    by_id = {w.webhook_id: w for w in report.webhooks}
    assert by_id[carerix["ok"]].healthy and by_id[carerix["ok"]].attempts == 12
    refused = by_id[carerix["refused"]]
    assert refused.problems == ["failure_rate"] and (refused.failed, refused.attempts) == (12, 12)
    assert refused.last_failure_status == 401

    hook.disable_webhook(carerix["app"], carerix["ok"])
    store_url = f"sqlite:///{tmp_path / 'health.db'}"
    operator = CarerixWebhookHealthOperator(
        task_id="health",
        spec={
            "application": "airflow-carerix",
            "webhooks": [{"url": carerix["url"], "filters": [{"eventType": "crjob:*"}]}],
        },
        store_conn_id=None,
        event_store_url=store_url,
    )
    with pytest.raises(AirflowFailException) as failed:
        operator.execute({})
    message = str(failed.value)
    assert message.startswith("2 Carerix webhook problem(s)")
    assert f"webhook {carerix['ok']} of application 'airflow-carerix'" in message
    assert "disabled in Carerix, nothing is delivered" in message
    assert f"webhook {carerix['refused']} of application 'airflow-carerix'" in message
    assert (
        "12 of 12 deliveries failed in the last 24 h (100%)" in message
        and "last failure: HTTP 401" in message
    )
    assert f"{carerix['url']}/events?***" in message  # the URL, its query (a secret) masked
    for secret in ("query-secret", "changed-secret", SECRET, "Private-Name"):
        assert secret not in message

    # What it saw is on the Carerix page, which never calls Carerix.
    with EventStore(store_url) as store:
        shown = {row["webhook_id"]: row["health"] for row in webhooks(store)}
    assert shown[carerix["ok"]]["problems"] == ["disabled"] and shown[carerix["ok"]]["status"] == "disabled"
    assert (
        shown[carerix["refused"]]["failure_rate"] == 1.0
        and shown[carerix["refused"]]["last_failure_status"] == 401
    )
    assert "query-secret" not in json.dumps(shown)


def test_the_health_check_passes_once_fixed_and_below_the_threshold(
    carerix: dict[str, Any], tmp_path: Path
) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    emulator, hook = carerix["emulator"], CarerixHook()
    hook.delete_webhook(carerix["app"], carerix["refused"])
    spec = {
        "application": "airflow-carerix",
        "webhooks": [{"url": carerix["url"], "filters": [{"eventType": "crjob:*"}]}],
    }
    operator = CarerixWebhookHealthOperator(task_id="health", spec=spec, record_health=False)
    summary = operator.execute({})
    assert summary["healthy"] and [w["webhook_id"] for w in summary["webhooks"]] == [carerix["ok"]]

    # A webhook nothing answers: every attempt fails, with no HTTP status.
    down = emulator.add_webhook(
        carerix["app"], {"url": "http://127.0.0.1:9/events", "filters": [{"eventType": "crjob:created"}]}
    )
    emulator.deliver("crjob:created", {"entityId": "1"})
    report = check_webhooks(hook, ["airflow-carerix"], min_attempts=1)
    failing = next(w for w in report.webhooks if w.webhook_id == down)
    assert failing.problems == ["failure_rate"] and failing.last_failure_status is None
    assert "no response (connection failed or timed out)" in failing.explain(report.window)
    assert check_webhooks(hook, ["airflow-carerix"], max_failure_rate=1.0, min_attempts=1).healthy
    # Fewer attempts than min_attempts are not judged by rate.
    assert check_webhooks(hook, ["airflow-carerix"]).healthy


def test_an_application_missing_in_carerix_is_a_problem(emulator: Any) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    report = check_webhooks(CarerixHook(), ["nowhere"])
    assert not report.healthy and "application 'nowhere' does not exist in Carerix" in report.message()


def test_a_webhook_in_error_is_a_problem(carerix: dict[str, Any]) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    carerix["emulator"].set_webhook_status(carerix["app"], carerix["ok"], "error")
    report = check_webhooks(CarerixHook(), ["airflow-carerix"], max_failure_rate=1.0)
    [bad] = report.unhealthy
    assert bad.webhook_id == carerix["ok"] and bad.problems == ["error"]
    assert "in error in Carerix, nothing is delivered" in report.message()


# -- the example monitoring DAG, run by Airflow -----------------------------------------------------------------


def test_the_example_monitoring_dag_passes_then_fails_when_a_webhook_is_disabled(
    airflow_db: None,
    emulator_factory: Any,
    receiver: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from airflow_provider_carerix.hooks.carerix import CarerixHook
    from tests.fixtures.airflow import DagBag

    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    url, _ = receiver(store_url, SECRET)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", f"{url}/events")
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", SECRET)
    emulator = emulator_factory(retry_schedule=())
    app = emulator.add_application("airflow-carerix")
    webhook = emulator.add_webhook(
        app,
        {
            "url": f"{url}/events",
            "filters": [{"eventType": "cremployee:*"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": SECRET}],
        },
    )
    hook = CarerixEventStoreHook(store_conn_id=None, store_url=store_url)
    hook.ensure_consumer(
        "carerix_cremployee_updated", EventFilter.build(["cremployee:updated"]), start_from="new"
    )
    hook.close()
    for n in range(10):
        assert emulator.deliver("cremployee:created", {"entityId": str(n)})[0].ok  # not the consumer's type
    bag = DagBag(dag_folder=str(ROOT / "example_dags" / "carerix_monitoring.py"))
    assert not bag.import_errors
    dag = bag.get_dag("carerix_monitoring")

    def states(run_id: str) -> dict[str, str]:
        with create_session() as session:
            rows = session.query(TaskInstance).filter_by(dag_id="carerix_monitoring", run_id=run_id).all()
            return {ti.task_id: str(ti.state) for ti in rows}

    healthy = dag.test()
    assert str(healthy.state) == "success", states(healthy.run_id)

    CarerixHook().disable_webhook(app, webhook)
    capfd.readouterr()
    failed = dag.test()
    output = "".join(capfd.readouterr())
    assert str(failed.state) == "failed"
    assert states(failed.run_id) == {
        "employee_updates_processed": "success",
        "candidate_events_arrive": "success",
        "webhooks_healthy": "failed",
    }
    assert f"webhook {webhook} of application 'airflow-carerix'" in output and "disabled in Carerix" in output
    assert SECRET not in output
