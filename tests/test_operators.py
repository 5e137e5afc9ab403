"""The provisioning operators through real Airflow (``dag.test()`` on the example DAG) against the emulator.

The example DAG reads ``spec``, ``prune`` and ``dry_run`` from params, so each test runs the very DAG users
schedule, with a run conf. The connection comes from ``AIRFLOW_CONN_CARERIX_DEFAULT`` (emulator fixture), the
Variables from ``AIRFLOW_VAR_*``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.ui.sections import webhooks as page_webhooks

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "carerix_provision_webhooks"
TASK_ID = "sync_webhooks"
SECRET = "receiver-secret-5f0c2a9e"
RECEIVER = "https://receiver.example.com/carerix/events"
FOREIGN = "https://someone-else.example.com/hook"
APP = "airflow-carerix"


@pytest.fixture(scope="module")
def provision_dag(airflow_db: None) -> Any:
    from tests.fixtures.airflow import DagBag

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / "carerix_provision_webhooks.py"))
    assert not bag.import_errors
    return bag.get_dag(DAG_ID)


@pytest.fixture
def variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", RECEIVER)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", SECRET)


@dataclass
class Run:
    state: str
    summary: Any
    rendered: dict[str, Any]
    output: str


def run(
    dag: Any,
    capfd: pytest.CaptureFixture[str],
    *,
    spec: str = "specs/carerix_webhooks.yaml",
    prune: bool = True,
    dry_run: bool = False,
) -> Run:
    """One run of the example DAG. Every param is passed: dag.test() keeps the last run's conf in the DAG."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    capfd.readouterr()
    dag_run = dag.test(run_conf={"spec": spec, "prune": prune, "dry_run": dry_run})
    out, err = capfd.readouterr()
    with create_session() as session:
        xcom = (
            session.query(XComModel)
            .filter_by(dag_id=DAG_ID, run_id=dag_run.run_id, task_id=TASK_ID, key="return_value")
            .one_or_none()
        )
        rtif = (
            session.query(RenderedTaskInstanceFields)
            .filter_by(dag_id=DAG_ID, run_id=dag_run.run_id, task_id=TASK_ID)
            .one_or_none()
        )
        value = xcom.value if xcom else None
        if isinstance(value, str):
            value = json.loads(value)
        return Run(str(dag_run.state), value, rtif.rendered_fields if rtif else {}, out + err)


def app_id(emulator: Any) -> str:
    [app] = [a for a in emulator.applications() if a.get("name") == APP]
    return str(app.get("_id", app.get("id")))


def webhooks(emulator: Any) -> list[dict[str, Any]]:
    return emulator.webhooks(app_id(emulator))


def wid(webhook: dict[str, Any]) -> str:
    return str(webhook.get("_id", webhook.get("id")))


def shape(hooks: list[dict[str, Any]]) -> list[tuple[str, str, str, tuple[tuple[str, str], ...]]]:
    """Comparable content of webhooks: url, event type, condition, headers."""
    return sorted(
        (
            h["url"],
            h["filters"][0]["eventType"],
            h["filters"][0].get("condition") or "",
            tuple((c["name"], c["value"]) for c in h.get("customHeaders") or []),
        )
        for h in hooks
    )


EXPECTED = sorted(
    (RECEIVER, event_type, condition or "", (("X-Carerix-Secret", SECRET),))
    for event_type, condition in [
        ("crjob:updated", "data.tostatusnode eq '1234' or data.tostatusnode eq '5678'"),
        ("cremployee:updated", "data.touser.tosinglestatusnode eq '1234'"),
        ("crmatch:updated", None),
        ("crmatch:updated", "data.statusinfo eq '1234'"),
        ("crmatch:created", None),
        ("crpublication:created", None),
    ]
)


def delete_by_hand(emulator: Any, application_id: str, webhook_id: str) -> None:
    """What somebody does in Carerix by hand: a DELETE with their own token (then the log is reset)."""
    import requests

    response = requests.delete(
        f"{emulator.api_url}/applications/{application_id}/webhooks/{webhook_id}",
        headers={"Authorization": f"Bearer {emulator.issue_token()}"},
        timeout=10,
    )
    response.raise_for_status()
    emulator.reset_log()


def reads(emulator: Any) -> int:
    return emulator.count(method="GET")


def test_create_from_nothing_then_second_run_writes_nothing(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    first = run(provision_dag, capfd)
    assert first.state == "success", first.output[-3000:]
    assert shape(webhooks(emulator)) == EXPECTED
    assert first.summary["application_id"] == app_id(emulator)
    assert first.summary["application_created"] is True
    with EventStore() as store:  # the sync operator recorded the application's signing key for receivers
        assert store.signing_keys(app_id(emulator), rotation_window=timedelta(0)) == [
            emulator.public_key(app_id(emulator))
        ]
        # ... and the webhooks as this first run left them: the Carerix page shows them without a second run.
        shown = [w for w in page_webhooks(store) if w["application_id"] == app_id(emulator)]
    assert sorted(first.summary["created"]) == sorted(wid(h) for h in webhooks(emulator))
    assert sorted(w["webhook_id"] for w in shown) == sorted(first.summary["created"])
    assert {w["sync_action"] for w in shown} == {"create"}
    assert "+ create application 'airflow-carerix'" in first.output

    emulator.reset_log()
    second = run(provision_dag, capfd)
    assert second.state == "success"
    assert emulator.write_count() == 0
    # list applications + list this application's webhooks + read its signing key
    assert reads(emulator) <= 3
    assert sorted(second.summary["unchanged"]) == sorted(first.summary["created"])
    assert second.summary["created"] == second.summary["deleted"] == second.summary["replaced"] == []
    assert "No changes: Carerix matches the spec." in second.output


def test_drift_is_repaired_and_prune_decides_about_foreign_webhooks(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(provision_dag, capfd).state == "success"
    application = app_id(emulator)
    # By hand in Carerix: the Intake webhook now fires on another stage (no update endpoint: delete + create),
    # and somebody adds a webhook of their own at another URL.
    [intake] = [
        h for h in webhooks(emulator) if h["filters"][0].get("condition") == "data.statusinfo eq '1234'"
    ]
    delete_by_hand(emulator, application, wid(intake))
    changed = emulator.add_webhook(
        application,
        {
            "_kind": "Webhook",
            "url": RECEIVER,
            "filters": [{"eventType": "crmatch:updated", "condition": "data.statusinfo eq '9999'"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": SECRET}],
        },
    )
    foreign = emulator.add_webhook(
        application, {"_kind": "Webhook", "url": FOREIGN, "filters": [{"eventType": "crjob:created"}]}
    )

    kept = run(provision_dag, capfd, prune=False)
    assert kept.state == "success", kept.output[-3000:]
    assert [r["old"] for r in kept.summary["replaced"]] == [changed]
    assert kept.summary["kept"] == [foreign] and kept.summary["deleted"] == []
    assert "~ replace" in kept.output and "(conditions changed)" in kept.output
    assert shape(webhooks(emulator)) == sorted([*EXPECTED, (FOREIGN, "crjob:created", "", ())])

    pruned = run(provision_dag, capfd, prune=True)
    assert pruned.summary["deleted"] == [foreign]
    assert shape(webhooks(emulator)) == EXPECTED


def test_dry_run_plans_and_changes_nothing(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    result = run(provision_dag, capfd, dry_run=True)
    assert result.state == "success"
    assert emulator.write_count() == 0 and emulator.applications() == []
    assert result.summary["dry_run"] is True
    assert result.summary["created"] == [None] * 6 and result.summary["application_id"] is None
    assert "Plan (dry run, nothing will change)" in result.output


def test_invalid_spec_fails_with_every_problem_and_no_call(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(
        "application: airflow-carerix\n"
        "webhooks:\n"
        "  - url: https://receiver.example.com/ok\n"
        "    filters:\n"
        "      - eventType: cremploye:updated\n"
        "  - url: https://receiver.example.com/ok\n"
        "    filters:\n"
        "      - eventType: crjob:updated\n"
        "        condition: data.tostatusnode equals '1'\n"
    )
    result = run(provision_dag, capfd, spec=str(spec))
    assert result.state == "failed"
    assert emulator.requests == []  # not even a token
    assert "cremployee" in result.output  # the suggestion for the typo
    assert "eq" in result.output and "broken.yaml:5" in result.output and "broken.yaml:9" in result.output


def test_a_run_that_dies_halfway_is_finished_by_the_next(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    first = run(provision_dag, capfd)
    assert first.state == "success", first.output[-5000:]
    application = app_id(emulator)
    # Drift that needs creates and deletes: one webhook's old version, one duplicate, one foreign webhook.
    [created] = [h for h in webhooks(emulator) if h["filters"][0]["eventType"] == "crmatch:created"]
    emulator.add_webhook(
        application, {k: v for k, v in created.items() if k in ("_kind", "url", "filters", "customHeaders")}
    )
    [publication] = [h for h in webhooks(emulator) if h["filters"][0]["eventType"] == "crpublication:created"]
    delete_by_hand(emulator, application, wid(publication))
    emulator.add_webhook(
        application,
        {"_kind": "Webhook", "url": RECEIVER, "filters": [{"eventType": "crpublication:updated"}]},
    )
    emulator.add_webhook(
        application, {"_kind": "Webhook", "url": FOREIGN, "filters": [{"eventType": "crjob:created"}]}
    )
    assert len(webhooks(emulator)) == 8

    # Creates succeed, every delete fails (more often than the hook retries): the run dies after the creates.
    emulator.inject_fault(status=503, times=1000, method="DELETE")
    crashed = run(provision_dag, capfd)
    assert crashed.state == "failed"
    assert len(webhooks(emulator)) == 9  # the new publication webhook exists, nothing was deleted
    emulator.clear_faults()

    emulator.reset_log()
    rerun = run(provision_dag, capfd)
    assert rerun.state == "success", rerun.output[-3000:]
    assert shape(webhooks(emulator)) == EXPECTED  # converged, no duplicate, nothing created twice
    assert emulator.count(method="POST", path_contains="/webhooks") == 0
    assert len(rerun.summary["deleted"]) == 3


def test_disabled_and_errored_webhooks_are_enabled_again(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(provision_dag, capfd).state == "success"
    application = app_id(emulator)
    first, second = webhooks(emulator)[:2]
    emulator.set_webhook_status(application, wid(first), "disabled")
    emulator.set_webhook_status(application, wid(second), "error")
    result = run(provision_dag, capfd)
    assert sorted(result.summary["enabled"]) == sorted([wid(first), wid(second)])
    assert all(h.get("status", "enabled") == "enabled" for h in webhooks(emulator))
    assert "! enable" in result.output


def test_header_secret_never_reaches_xcom_rendered_fields_or_logs(
    provision_dag: Any, emulator: Any, variables: None, capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    result = run(provision_dag, capfd)
    assert result.state == "success"
    assert SECRET not in json.dumps(result.summary)
    spec = str(result.rendered["spec"])  # the rendered file, as the UI's "Rendered Template" shows it
    assert "name: X-Carerix-Secret" in spec and "value: '***'" in spec.replace('"', "'")
    assert SECRET not in json.dumps(result.rendered)
    assert SECRET not in result.output
    assert "X-Carerix-Secret: ***" in result.output
    assert redact(f"header {SECRET}") == "header ***"  # registered with Airflow's masker


# ------------------------------------------------------------------------------------- single-step operators


def test_create_application_create_webhook_delete_webhook(emulator: Any) -> None:
    from airflow_provider_carerix.operators.webhooks import (
        CarerixCreateApplicationOperator,
        CarerixCreateWebhookOperator,
        CarerixDeleteWebhookOperator,
    )

    application = CarerixCreateApplicationOperator(task_id="app", name="single-steps").execute({})
    assert [a.get("name") for a in emulator.applications()] == ["single-steps"]
    webhook_id = CarerixCreateWebhookOperator(
        task_id="hook",
        application_id=application,
        url=RECEIVER,
        filters=[{"eventType": "CRMatch:created"}],
        custom_headers={"X-Carerix-Secret": SECRET},
    ).execute({})
    [stored] = emulator.webhooks(application)
    assert wid(stored) == webhook_id
    assert stored["filters"] == [{"eventType": "crmatch:created"}]
    assert stored["customHeaders"] == [{"name": "X-Carerix-Secret", "value": SECRET}]
    delete = CarerixDeleteWebhookOperator(task_id="del", application_id=application, webhook_id=webhook_id)
    delete.execute({})
    assert emulator.webhooks(application) == []
    delete.execute({})  # already gone: done, not failed


def test_create_webhook_is_validated_before_any_call(emulator: Any) -> None:
    from airflow_provider_carerix.definitions.validation import SpecValidationError
    from airflow_provider_carerix.operators.webhooks import CarerixCreateWebhookOperator
    from airflow_provider_carerix.version_compat import AirflowFailException

    operator = CarerixCreateWebhookOperator(
        task_id="hook",
        application_id="app",
        url="receiver.example.com/events",
        filters=[{"eventType": "cremploye:updated", "condition": "data.x  eq '1'"}],
        custom_headers=[{"name": "Content-Type", "value": "x"}],
    )
    with pytest.raises(AirflowFailException) as error:  # no retry: a wrong definition stays wrong
        operator.execute({})
    cause = error.value.__cause__
    assert isinstance(cause, SpecValidationError)
    paths = {p.path for p in cause.problems}
    assert {"url", "filters[0].eventType", "filters[0].condition"} <= paths
    assert any(p.path.startswith("customHeaders[0]") for p in cause.problems)
    assert "did you mean 'cremployee'" in str(error.value)
    assert emulator.requests == []


def test_create_webhook_masks_header_values_when_rendered() -> None:
    import jinja2
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_provider_carerix.operators.webhooks import CarerixCreateWebhookOperator

    secret = "templated-secret-7a1b3c"
    operator = CarerixCreateWebhookOperator(
        task_id="hook",
        application_id="{{ app }}",
        url="{{ url }}",
        filters=[{"eventType": "crmatch:created"}],
        custom_headers={"X-Carerix-Secret": "{{ secret }}"},
    )
    operator.render_template_fields({"app": "a1", "url": RECEIVER, "secret": secret}, jinja2.Environment())  # type: ignore[arg-type]
    assert operator.url == RECEIVER and operator.custom_headers == {"X-Carerix-Secret": secret}
    assert redact(secret) == "***"


def test_sync_operator_with_a_dict_spec_renders_nested_templates_and_masks(emulator: Any) -> None:
    import jinja2
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_provider_carerix.operators.webhooks import CarerixSyncWebhooksOperator

    secret = "dict-spec-secret-91c2"
    operator = CarerixSyncWebhooksOperator(
        task_id="sync",
        spec={
            "application": "dict-spec",
            "webhooks": [
                {
                    "url": "https://receiver.example.com/hook.json",  # ends like a template file: still a URL
                    "filters": [{"eventType": "crmatch:created"}],
                    "customHeaders": [{"name": "X-Carerix-Secret", "value": "{{ secret }}"}],
                }
            ],
        },
        prune="{{ prune }}",
    )
    operator.render_template_fields({"secret": secret, "prune": "False"}, jinja2.Environment())  # type: ignore[arg-type]
    assert redact(secret) == "***"
    summary = operator.execute({})  # type: ignore[arg-type]
    assert len(summary["created"]) == 1 and secret not in json.dumps(summary)
    [application] = emulator.applications()
    [stored] = emulator.webhooks(application["_id"])
    assert stored["url"] == "https://receiver.example.com/hook.json"
    assert stored["customHeaders"] == [{"name": "X-Carerix-Secret", "value": secret}]


# ------------------------------------------------------------- missing Variables, empty secrets, reachability


def test_a_missing_variable_fails_the_run_naming_it(
    provision_dag: Any, emulator: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", RECEIVER)
    monkeypatch.delenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", raising=False)
    result = run(provision_dag, capfd)
    assert result.state == "failed"
    assert "Variable carerix_receiver_secret not found" in result.output
    assert emulator.write_count() == 0 and emulator.applications() == []


def strict_dag(dag_id: str, **operator_kwargs: Any) -> Any:
    """The example spec in a DAG whose task would retry: problems in the definition must fail it at once."""
    from datetime import timedelta

    import pendulum
    from airflow.sdk import DAG

    from airflow_provider_carerix.operators.webhooks import CarerixSyncWebhooksOperator

    with DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        CarerixSyncWebhooksOperator(
            task_id=TASK_ID,
            spec=str(ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"),
            retries=3,
            retry_delay=timedelta(seconds=1),
            **operator_kwargs,
        )
    return dag


def run_strict(dag: Any, capfd: pytest.CaptureFixture[str]) -> tuple[str, int, str]:
    """(task state, try number, output) of one dag.test() run of a DAG defined in the test."""
    import importlib

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from tests.fixtures.airflow import DagBag

    sync_bag_to_db = importlib.import_module(DagBag.__module__).sync_bag_to_db  # moved with DagBag in 3.2

    # dag.test() runs the serialized DAG; it serializes only DAGs found in a bundle's files, so write it here.
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(ROOT / "tests" / "data" / "no-such-folder"))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    capfd.readouterr()
    dag_run = dag.test()
    out, err = capfd.readouterr()
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=dag_run.run_id).one()
        return str(ti.state), ti.try_number, out + err


def test_an_empty_secret_fails_without_retry_naming_header_and_variable(
    airflow_db: None, emulator: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", RECEIVER)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", "")
    state, tries, output = run_strict(strict_dag("carerix_strict_empty_secret"), capfd)
    assert (state, tries) == ("failed", 1), output[-3000:]
    assert (
        "webhooks[0].customHeaders[0].value: value of header 'X-Carerix-Secret' is empty: a receiver "
        "checking it refuses every delivery (rendered from '{{ var.value.carerix_receiver_secret }}': "
        "set the Airflow Variable 'carerix_receiver_secret')"
    ) in output
    assert emulator.requests == []


def test_against_carerix_itself_a_loopback_receiver_fails_without_retry(
    airflow_db: None, emulator: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(emulator.connection_json())
    conn["host"] = "https://api.carerix.invalid-tld-for-tests.io"
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "http://127.0.0.1:8090/events")
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", SECRET)
    state, tries, output = run_strict(strict_dag("carerix_strict_loopback"), capfd)
    assert (state, tries) == ("failed", 1), output[-3000:]
    assert (
        "carerix_webhooks.yaml:20:10: webhooks[0].url: url 'http://127.0.0.1:8090/events' cannot be reached "
        "by Carerix: 127.0.0.1 is a loopback address"
    ) in output
    assert "set the Airflow Variable 'carerix_receiver_url'" in output
    assert SECRET not in output
    assert emulator.requests == []


def test_a_loopback_receiver_is_fine_against_the_emulator(
    airflow_db: None, emulator: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "http://127.0.0.1:8090/events")
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", SECRET)
    state, tries, output = run_strict(strict_dag("carerix_strict_emulator"), capfd)
    assert (state, tries) == ("success", 1), output[-3000:]
    assert {h["url"] for h in webhooks(emulator)} == {"http://127.0.0.1:8090/events"}


def test_create_webhook_refuses_unreachable_urls_for_carerix_itself_unless_allowed(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_carerix.operators.webhooks import CarerixCreateWebhookOperator
    from airflow_provider_carerix.version_compat import AirflowFailException

    conn = json.loads(emulator.connection_json())
    conn["host"] = "https://api.carerix.invalid-tld-for-tests.io"
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", json.dumps(conn))
    kwargs: dict[str, Any] = {
        "task_id": "hook",
        "application_id": "app",
        "url": "https://10.0.0.5/events",
        "filters": [{"eventType": "crmatch:created"}],
    }
    with pytest.raises(AirflowFailException, match=r"10\.0\.0\.5 is a private address"):
        CarerixCreateWebhookOperator(**kwargs).body()
    assert CarerixCreateWebhookOperator(**kwargs, allow_unreachable_urls=True).body()["url"] == kwargs["url"]
    assert emulator.requests == []
