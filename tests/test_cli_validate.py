"""``carerix-webhooks validate``: exit codes and the exact lines users read, in-process and as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from airflow_provider_carerix.cli import app

ROOT = Path(__file__).resolve().parent.parent
GUIDE = Path(__file__).resolve().parent / "data" / "guide"
EXAMPLE = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"

BROKEN_GUIDE_OUTPUT = """\
popular-example3.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test"': is the opening '"' missing?
popular-example3.json:14:2: invalid JSON: the file ends before the closing '}'
popular-example4.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test"': is the opening '"' missing?
step2-example1.json:7:42: filters[0].condition: trailing space at 27: remove the space(s) after the condition
    data.tostatusnode eq '1234' \n\
                               ^
step2-example2.json:6:29: invalid JSON: trailing comma before '}'
5 problems in 4 of 5 files
"""
BROKEN = ["popular-example3.json", "popular-example4.json", "step2-example1.json", "step2-example2.json"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def in_guide_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GUIDE)


def test_valid_files_print_a_one_line_summary(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLE), str(GUIDE / "popular-example1.json")])
    assert result.exit_code == 0, result.output
    assert result.output == "2 files, 7 webhooks: valid\n"


def test_singular_summary(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(GUIDE / "popular-example2.json")])
    assert (result.exit_code, result.output) == (0, "1 file, 1 webhook: valid\n")


@pytest.mark.usefixtures("in_guide_dir")
def test_the_guides_broken_bodies(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", "popular-example1.json", *BROKEN])
    assert result.exit_code == 1
    assert result.output == BROKEN_GUIDE_OUTPUT


def test_spec_problems_and_unknown_event_type_opt_in(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "application: airflow-carerix\n"
        "webhooks:\n"
        "  - url: https://receiver.example.com/events\n"
        "    filters:\n"
        "      - eventType: crnewthing:updated\n"
        "        condition: data.tostatusnode equals '1234'\n"
    )
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert result.output == (
        f"{spec}:5:20: webhooks[0].filters[0].eventType: unknown entity 'crnewthing' in eventType "
        "'crnewthing:updated' (pass --allow-unknown-event-types to accept entities this provider does not know)\n"
        f"{spec}:6:38: webhooks[0].filters[0].condition: unknown operator 'equals': did you mean 'eq'?\n"
        "    data.tostatusnode equals '1234'\n"
        "                      ^\n"
        "2 problems in 1 of 1 file\n"
    )
    result = runner.invoke(app, ["validate", "--allow-unknown-event-types", str(spec)])
    assert result.exit_code == 1
    assert "eventType" not in result.output and "2 problems" not in result.output


def test_a_missing_file_is_a_usage_error_as_for_plan(runner: CliRunner, tmp_path: Path) -> None:
    """One convention for every command: a file that cannot be read is a usage error (2), nothing is checked."""
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, ["validate", str(missing), str(EXAMPLE)])
    assert result.exit_code == 2
    assert f"Invalid value for 'FILE': file '{missing}' does not exist." in result.output
    assert ": valid" not in result.output  # nothing was checked
    assert runner.invoke(app, ["validate", str(tmp_path)]).exit_code == 2  # a directory is no spec file


def test_no_arguments_is_a_usage_error(runner: CliRunner) -> None:
    assert runner.invoke(app, ["validate"]).exit_code == 2


def test_cli_module_does_not_import_airflow() -> None:
    code = "import sys, airflow_provider_carerix.cli; print('airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_as_a_real_process() -> None:
    script = Path(sys.executable).with_name("carerix-webhooks")
    if not script.exists():
        found = shutil.which("carerix-webhooks")
        if found is None:
            pytest.skip("the console script is not installed (pip install -e .)")
        script = Path(found)
    env = {**os.environ, "NO_COLOR": "1"}
    broken = subprocess.run(
        [str(script), "validate", "popular-example1.json", *BROKEN],
        capture_output=True,
        text=True,
        cwd=GUIDE,
        env=env,
        timeout=60,
    )
    assert (broken.returncode, broken.stdout, broken.stderr) == (1, BROKEN_GUIDE_OUTPUT, "")
    valid = subprocess.run(
        [str(script), "validate", str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=60
    )
    assert (valid.returncode, valid.stdout) == (0, "1 file, 6 webhooks: valid\n")
