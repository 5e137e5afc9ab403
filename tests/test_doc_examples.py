"""The code the docs show, run for real: each ``[START x]``/``[END x]`` block is shown in ``docs/`` verbatim.

``tests/test_docs.py`` checks that the pages still equal these blocks; this file checks that the blocks still
work (against the emulator, the condition parser and the spec loader).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_provider_carerix.emulator import CarerixEmulator
from airflow_provider_carerix.hooks.carerix import clear_token_cache

GUIDE_EMPLOYEE_EVENT = {
    "id": "8469bf71-4942-45ea-98b8-393077288785",
    "type": "cremployee:updated",
    "data": {"entityId": "1", "touser": {"tosinglestatusnode": "1234"}},
}


def test_hook_walkthrough(emulator: CarerixEmulator) -> None:
    # [START howto_hook]
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    hook = CarerixHook(carerix_conn_id="carerix_default")

    app = hook.create_application("airflow-carerix")  # Application(id=..., name=...)
    webhook = hook.create_webhook(
        app.id,
        {
            "url": "https://receiver.example.com/events",
            "_kind": "Webhook",
            "filters": [{"eventType": "crjob:updated", "condition": "data.tostatusnode eq '1234'"}],
            "customHeaders": [{"name": "X-Carerix-Secret", "value": "a-long-random-value"}],
        },
    )  # Webhook(id=..., url=..., filters=[...])
    for w in hook.list_webhooks(app.id):  # full objects: url, filters, headers, status
        print(w.id, w.url, w.status, [f.event_type for f in w.filters])
    hook.disable_webhook(app.id, webhook.id)
    hook.enable_webhook(app.id, webhook.id)
    hook.delete_webhook(app.id, webhook.id)  # there is no update: change = delete + create
    # [END howto_hook]
    assert hook.list_webhooks(app.id) == []
    assert [a.name for a in hook.list_applications()] == ["airflow-carerix"]
    assert emulator.token_requests == 1


def test_emulator_in_a_test(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    clear_token_cache()
    monkeypatch.delenv("AIRFLOW_CONN_CARERIX_DEFAULT", raising=False)
    try:
        # [START howto_emulator_in_tests]
        from airflow_provider_carerix.emulator import CarerixEmulator

        with CarerixEmulator(port=0, slim=True) as emulator:  # a free loopback port
            os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"] = emulator.connection_json()
            emulator.inject_fault(status=429, times=1, path_contains="/applications", retry_after=1)

            app = CarerixHook().create_application("airflow-carerix")  # the code under test

            assert emulator.token_requests == 1
            assert emulator.count("POST", "/applications") == 2  # the 429, then the retry
        # [END howto_emulator_in_tests]
        assert app.name == "airflow-carerix"
    finally:
        os.environ.pop("AIRFLOW_CONN_CARERIX_DEFAULT", None)
        clear_token_cache()


def test_condition_language_in_python() -> None:
    # [START howto_conditions]
    from airflow_provider_carerix.definitions.conditions import parse

    condition = parse("data.tostatusnode EQ '1234'  or data.tostatusnode eq 5678", strict=False)
    assert str(condition) == "data.tostatusnode eq '1234' or data.tostatusnode eq 5678"
    assert parse(str(condition)) == condition  # canonical text round-trips

    assert condition.matches({"data": {"tostatusnode": "5678"}})  # Carerix sends ids as strings
    assert not condition.matches({"data": {}})  # a missing field makes every comparison false
    # [END howto_conditions]


def test_load_spec_reports_every_problem(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "application: airflow-carerix\n"
        "webhooks:\n"
        "  - url: https://receiver.example.com/events\n"
        "    filters:\n"
        "      - eventType: cremploye:updated\n"
        "        condition: data.tostatusnode eq  '1234'\n"
    )
    # [START howto_load_spec]
    from airflow_provider_carerix.definitions.spec import load_spec
    from airflow_provider_carerix.definitions.validation import SpecValidationError

    try:
        spec = load_spec(spec_file)  # a path, YAML/JSON text or a dict
    except SpecValidationError as exc:
        for problem in exc.problems:  # every problem at once, never just the first
            print(f"{problem.file}:{problem.line}:{problem.column}: {problem.path}: {problem.message}")
        # [END howto_load_spec]
        messages = [p.message for p in exc.problems]
    else:  # pragma: no cover - the spec above is wrong on purpose
        pytest.fail(f"accepted an invalid spec: {spec}")
    assert len(messages) == 2, messages
    assert "did you mean 'cremployee'" in messages[0]
    assert "double space" in messages[1]


def test_the_guides_popular_examples() -> None:
    # [START howto_popular_examples]
    from airflow_provider_carerix.events import CarerixEvents
    from airflow_provider_carerix.sensors.events import CarerixEventSensor

    # 1. Placement status set to "Active" or "Closed"
    placement_status = CarerixEvents(
        "placement_active_or_closed",
        event_types=["crjob:updated"],
        condition="data.tostatusnode eq '1234' or data.tostatusnode eq '5678'",
    )

    # 2. Candidate status set to "Open for work"
    open_for_work = CarerixEvents(
        "candidate_open_for_work",
        event_types=["cremployee:updated"],
        condition="data.touser.tosinglestatusnode eq '1234'",
    )

    # 3. Match updated
    match_updated = CarerixEvents("match_updated", event_types=["crmatch:updated"])

    # 4. Match stage set to "Intake": usually awaited inside a run
    wait_for_intake = CarerixEventSensor(
        task_id="wait_for_intake",
        event_types=["crmatch:updated"],
        condition="data.statusinfo eq '1234'",
    )
    #    ... or to start a DAG:
    match_to_intake = CarerixEvents(
        "match_to_intake", event_types=["crmatch:updated"], condition="data.statusinfo eq '1234'"
    )

    # 5. New match created
    new_match = CarerixEvents("new_match", event_types=["crmatch:created"])

    # 6. New publication created
    new_publication = CarerixEvents("new_publication", event_types=["crpublication:created"])
    # [END howto_popular_examples]
    assets = [placement_status, open_for_work, match_updated, match_to_intake, new_match, new_publication]
    consumers = [a.watchers[0].trigger.serialize()[1]["consumer"] for a in assets]
    assert len(set(consumers)) == 6, consumers
    assert wait_for_intake.task_id == "wait_for_intake"
    from airflow_provider_carerix.definitions.conditions import parse

    assert parse("data.touser.tosinglestatusnode eq '1234'").matches(GUIDE_EMPLOYEE_EVENT)
