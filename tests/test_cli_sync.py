"""``carerix-webhooks plan`` / ``apply`` against the emulator: CliRunner, plus one real process.

The connection comes only from ``AIRFLOW_CONN_CARERIX_DEFAULT`` (set by the emulator fixture); Variables in the
spec from ``AIRFLOW_VAR_*`` or the template's own default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from airflow_provider_carerix.cli import app
from airflow_provider_carerix.cli import sync as cli_sync

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"
SECRET = "cli-secret-3e8d1f07"
RECEIVER = "https://receiver.example.com/cli/events"

runner = CliRunner()


@pytest.fixture
def variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", RECEIVER)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", SECRET)


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input)


def summary_of(output: str) -> dict[str, Any]:
    """The JSON summary apply prints last."""
    return json.loads(output[output.rindex("\n{") + 1 :] if "\n{" in output else output[output.index("{") :])


def the_webhooks(emulator: Any) -> list[dict[str, Any]]:
    [application] = emulator.applications()
    return emulator.webhooks(str(application.get("_id", application.get("id"))))


def test_plan_reads_only_and_hides_header_values(emulator: Any, variables: None) -> None:
    result = invoke("plan", str(EXAMPLE_SPEC))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("+ create application 'airflow-carerix': 6 to create")
    assert sum(line.startswith("  + create") for line in lines) == 6
    first = lines[start + 1]
    assert "job-status-active-or-closed: https://receiver.example.com/cli/events [crjob:updated if" in first
    assert "X-Carerix-Secret: ***" in result.output and SECRET not in result.output
    assert emulator.write_count() == 0
    as_json = invoke("plan", "--json", str(EXAMPLE_SPEC))
    summary = summary_of(as_json.output)
    assert (
        summary["dry_run"] is True and summary["created"] == [None] * 6 and summary["application_id"] is None
    )


def test_apply_without_yes_refuses_when_stdin_is_not_a_terminal(emulator: Any, variables: None) -> None:
    result = invoke("apply", str(EXAMPLE_SPEC))
    assert result.exit_code == 2
    assert "refusing to apply without --yes" in result.output
    assert emulator.write_count() == 0


def test_apply_asks_on_a_terminal(emulator: Any, variables: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_sync, "_stdin_is_tty", lambda: True)
    declined = invoke("apply", str(EXAMPLE_SPEC), input="n\n")
    assert declined.exit_code == 1 and "Nothing was changed." in declined.output
    assert emulator.write_count() == 0
    accepted = invoke("apply", str(EXAMPLE_SPEC), input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert len(the_webhooks(emulator)) == 6


def test_apply_yes_then_no_change(emulator: Any, variables: None) -> None:
    first = invoke("apply", "--yes", str(EXAMPLE_SPEC))
    assert first.exit_code == 0, first.output
    summary = summary_of(first.output)
    assert len(summary["created"]) == 6 and summary["dry_run"] is False
    stored = the_webhooks(emulator)
    assert {h["customHeaders"][0]["value"] for h in stored} == {SECRET}
    assert {h["url"] for h in stored} == {RECEIVER}
    assert SECRET not in first.output

    emulator.reset_log()
    second = invoke("apply", str(EXAMPLE_SPEC))  # nothing to do: no question asked, even without a TTY
    assert second.exit_code == 0, second.output
    assert "No changes" in second.output
    assert emulator.write_count() == 0


def test_no_prune_keeps_foreign_webhooks_prune_deletes_them(emulator: Any, variables: None) -> None:
    assert invoke("apply", "--yes", str(EXAMPLE_SPEC)).exit_code == 0
    [application] = emulator.applications()
    app_id = str(application.get("_id", application.get("id")))
    foreign = emulator.add_webhook(
        app_id,
        {
            "_kind": "Webhook",
            "url": "https://other.example.com/x",
            "filters": [{"eventType": "crjob:created"}],
        },
    )
    kept = invoke("apply", "--yes", "--no-prune", str(EXAMPLE_SPEC))
    assert kept.exit_code == 0 and f"? keep      {foreign}" in kept.output
    assert len(the_webhooks(emulator)) == 7
    pruned = invoke("apply", "--yes", str(EXAMPLE_SPEC))
    assert summary_of(pruned.output)["deleted"] == [foreign]
    assert len(the_webhooks(emulator)) == 6


def test_invalid_spec_prints_every_problem_and_calls_nothing(emulator: Any, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "application: x\nwebhooks:\n  - url: ftp://nope\n    filters:\n      - eventType: crjob:updatd\n"
    )
    result = invoke("apply", "--yes", str(spec))
    assert result.exit_code == 1
    assert f"{spec}:3:" in result.output and f"{spec}:5:" in result.output
    assert "nothing was changed" in result.output
    assert emulator.requests == []


def test_templates_use_airflow_variables_with_defaults_and_fail_loudly_when_missing(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_HOOK_SECRET", SECRET)
    spec = tmp_path / "tmpl.yaml"
    spec.write_text(
        "application: tmpl\n"
        "webhooks:\n"
        "  - url: \"{{ var.value.get('carerix_receiver_url', 'https://default.example.com/e') }}\"\n"
        "    filters: [{eventType: crmatch:created}]\n"
        "    customHeaders: [{name: X-Secret, value: '{{ var.value.hook_secret }}'}]\n"
    )
    result = invoke("apply", "--yes", str(spec))
    assert result.exit_code == 0, result.output
    [stored] = the_webhooks(emulator)
    assert stored["url"] == "https://default.example.com/e"
    assert stored["customHeaders"] == [{"name": "X-Secret", "value": SECRET}]

    spec.write_text(spec.read_text().replace("hook_secret", "no_such_variable"))
    missing = invoke("plan", str(spec))
    assert missing.exit_code == 1
    assert f"error: {spec}:5: the spec needs the Airflow Variable 'no_such_variable', which is not set" in (
        missing.output
    )
    assert "looked in the environment variable AIRFLOW_VAR_NO_SUCH_VARIABLE" in missing.output
    assert "airflow variables set no_such_variable" in missing.output


def test_two_applications_with_the_name_fail_clearly(emulator: Any, variables: None) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    hook = CarerixHook()
    hook.create_application("airflow-carerix")
    hook.create_application("airflow-carerix")
    emulator.reset_log()
    result = invoke("apply", "--yes", str(EXAMPLE_SPEC))
    assert result.exit_code == 1
    assert "2 applications in Carerix are named 'airflow-carerix'" in result.output
    assert emulator.write_count() == 0


def test_real_process_with_only_environment_variables(emulator: Any, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_CONN_CARERIX_DEFAULT": os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"],
        "AIRFLOW_VAR_CARERIX_RECEIVER_SECRET": SECRET,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow_provider_carerix.cli", *args, str(EXAMPLE_SPEC)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    # The example spec has no fallback for the receiver URL: without the Variable nothing is created.
    unset = cli("apply", "--yes")
    assert unset.returncode == 1
    assert "the spec needs the Airflow Variable 'carerix_receiver_url', which is not set" in unset.stderr
    assert emulator.requests == []
    env["AIRFLOW_VAR_CARERIX_RECEIVER_URL"] = "http://127.0.0.1:8090/events"  # local receiver, local Carerix
    applied = cli("apply", "--yes")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert applied.stdout.startswith("+ create application 'airflow-carerix': 6 to create\n")  # logs: stderr
    assert len(summary_of(applied.stdout)["created"]) == 6
    assert {h["url"] for h in the_webhooks(emulator)} == {"http://127.0.0.1:8090/events"}
    planned = cli("plan")
    assert planned.returncode == 0 and "No changes" in planned.stdout
    assert SECRET not in applied.stdout + applied.stderr + planned.stdout + planned.stderr


# ------------------------------------------------------------------- empty secrets and unreachable receivers


def test_an_empty_secret_variable_is_refused_naming_header_and_variable(
    emulator: Any, variables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", "  ")
    for command in ("plan", "apply"):
        result = (
            invoke(command, "--yes", str(EXAMPLE_SPEC))
            if command == "apply"
            else invoke(command, str(EXAMPLE_SPEC))
        )
        assert result.exit_code == 1
        problems = [line for line in result.output.splitlines() if "X-Carerix-Secret" in line]
        assert len(problems) == 6, result.output  # one per webhook, each located in the file
        assert problems[0] == (
            f"{EXAMPLE_SPEC}:26:16: webhooks[0].customHeaders[0].value: value of header 'X-Carerix-Secret' "
            "is only whitespace: a receiver checking it refuses every delivery (rendered from "
            "'{{ var.value.carerix_receiver_secret }}': set the Airflow Variable 'carerix_receiver_secret')"
        )
    assert emulator.requests == []  # not even a token


def carerix_itself(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    """carerix_default pointing at Carerix's public API (the emulator keeps running; it must not be called)."""
    conn = json.loads(emulator.connection_json())
    conn["host"] = "https://api.carerix.invalid-tld-for-tests.io"
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", json.dumps(conn))


def test_against_carerix_itself_unreachable_urls_are_refused_before_any_call(
    emulator: Any, variables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    carerix_itself(monkeypatch, emulator)
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "http://127.0.0.1:8090/events")
    result = invoke("plan", str(EXAMPLE_SPEC))
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if "cannot be reached by Carerix" in line]
    assert len(problems) == 6, result.output
    assert problems[0].startswith(
        f"{EXAMPLE_SPEC}:20:10: webhooks[0].url: url 'http://127.0.0.1:8090/events' cannot be reached by "
        "Carerix: 127.0.0.1 is a loopback address; use a public https URL of your receiver, or allow such "
        "URLs explicitly (--allow-unreachable-urls"
    )
    assert problems[0].endswith(
        "(rendered from '{{ var.value.carerix_receiver_url }}': set the Airflow Variable 'carerix_receiver_url')"
    )
    assert "nothing was changed" in result.output
    assert emulator.requests == []

    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "http://receiver.example.com/events")
    plain_http = invoke("apply", "--yes", str(EXAMPLE_SPEC))
    assert plain_http.exit_code == 1 and "it uses plain http" in plain_http.output
    assert emulator.requests == []


def test_the_same_urls_are_fine_against_the_emulator_and_with_the_explicit_option(
    emulator: Any, variables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "http://127.0.0.1:8090/events")
    local = invoke("apply", "--yes", str(EXAMPLE_SPEC))  # the emulator is local: its receivers may be too
    assert local.exit_code == 0, local.output
    assert {h["url"] for h in the_webhooks(emulator)} == {"http://127.0.0.1:8090/events"}

    carerix_itself(monkeypatch, emulator)
    allowed = invoke("plan", "--allow-unreachable-urls", str(EXAMPLE_SPEC))
    # Past validation: the plan now reads Carerix, which this test's made-up host cannot answer.
    assert allowed.exit_code == 1, allowed.output
    assert "cannot be reached by Carerix" not in allowed.output
    assert "error: Carerix API GET https://api.carerix.invalid-tld-for-tests.io/" in allowed.output
