"""What the three console scripts share, run as the installed scripts a user types: ``--version``, ``--help``
that names every option in full at 80 columns without typer's placeholders, and one exit-code convention
(0 ok, 1 problems found, 2 usage error)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from airflow_provider_carerix import __version__
from airflow_provider_carerix.cli import app as webhooks_app
from airflow_provider_carerix.console import EXIT_CODES
from airflow_provider_carerix.definitions.spec import load_spec
from airflow_provider_carerix.definitions.validation import SpecValidationError
from airflow_provider_carerix.emulator.cli import cli as emulator_app
from airflow_provider_carerix.receiver.cli import cli as receiver_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"
APPS: dict[str, typer.Typer] = {
    "carerix-webhooks": webhooks_app,
    "carerix-receiver": receiver_app,
    "carerix-emulator": emulator_app,
}
# typer's own labels for values: `{spec}`, `<list[Path]>`, `<bool>`, `<str>`, `<int range>`, ...
PLACEHOLDER = re.compile(r"<[a-z][^<>]*>|\{[A-Za-z_]+\}")


def script(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"the console script {name} is not installed (pip install -e .)")
    return on_path


def run(name: str, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CARERIX_RECEIVER_SECRET"}
    environment.update({"COLUMNS": "80", "NO_COLOR": "1", **env})
    return subprocess.run(
        [script(name), *args], capture_output=True, text=True, env=environment, timeout=timeout, cwd=ROOT
    )


def commands() -> list[tuple[str, tuple[str, ...], Any]]:
    """(script, command path, click command) of each app and every command in it."""
    found = []
    for name, app in APPS.items():
        group = typer.main.get_command(app)
        found.append((name, (), group))
        for command_name, command in group.commands.items():  # type: ignore[attr-defined]
            found.append((name, (command_name,), command))
    return found


COMMANDS = commands()


@pytest.mark.parametrize("name", list(APPS))
def test_version(name: str) -> None:
    result = run(name, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{name} {__version__}\n", "")


@pytest.mark.parametrize(
    ("name", "path", "command"), COMMANDS, ids=[" ".join([n, *p]) for n, p, _ in COMMANDS]
)
def test_help_names_every_option_in_full_without_placeholders_and_the_exit_codes(
    name: str, path: tuple[str, ...], command: Any
) -> None:
    result = run(name, *path, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert not PLACEHOLDER.findall(text), text
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    words = set(re.split(r"[\s,/\[\]]+", text))
    for param in command.params:
        for option in [*param.opts, *param.secondary_opts]:
            if option.startswith("-"):
                assert option in words, f"{option} not shown in full:\n{text}"
    assert "--help" in words
    assert " ".join(EXIT_CODES.split()) in " ".join(text.split()), text


def test_the_usage_line_names_arguments_as_click_does() -> None:
    assert run("carerix-webhooks", "validate", "--help").stdout.startswith(
        "Usage: carerix-webhooks validate [OPTIONS] FILE...\n"
    )
    assert run("carerix-webhooks", "plan", "--help").stdout.startswith(
        "Usage: carerix-webhooks plan [OPTIONS] SPEC\n"
    )


@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
def test_a_missing_spec_is_a_usage_error_for_every_command_that_reads_one(
    command: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    result = run("carerix-webhooks", command, str(missing))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"file '{missing}' does not exist" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("name", list(APPS))
def test_an_unknown_option_is_a_usage_error(name: str) -> None:
    result = run(name, "--no-such-option")
    assert result.returncode == 2 and "No such option: --no-such-option" in result.stderr


@pytest.mark.parametrize("option", ["--secret-file", "--public-key-file"])
def test_receiver_files_that_do_not_exist_are_usage_errors(option: str, tmp_path: Path) -> None:
    args = ["serve", "--insecure", "--port", "0", option, str(tmp_path / "missing.pem")]
    result = run("carerix-receiver", *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not exist" in result.stderr


@pytest.mark.parametrize(
    "args", [("--list-shape", "pages"), ("--retry-schedule", "soon"), ("--port", "eighty")]
)
def test_emulator_bad_values_are_usage_errors(args: tuple[str, str]) -> None:
    result = run("carerix-emulator", "serve", "--port", "0", *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(f"Invalid value for '?{args[0]}'?:", result.stderr), result.stderr


def test_problems_found_exit_1_and_name_the_flag(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "application: airflow-carerix\n"
        "webhooks:\n"
        "  - url: https://receiver.example.com/events\n"
        "    filters:\n"
        "      - eventType: crnewthing:updated\n"
    )
    result = run("carerix-webhooks", "validate", str(spec))
    assert result.returncode == 1
    assert (
        "(pass --allow-unknown-event-types to accept entities this provider does not know)" in result.stdout
    )
    assert "allow_unknown_event_types" not in result.stdout
    assert run("carerix-webhooks", "validate", "--allow-unknown-event-types", str(spec)).returncode == 0
    assert run("carerix-webhooks", "validate", str(EXAMPLE)).returncode == 0


def test_plan_names_the_flag_too(emulator: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "application: airflow-carerix\n"
        "webhooks:\n"
        "  - url: http://127.0.0.1:8090/events\n"
        "    filters:\n"
        "      - eventType: crnewthing:updated\n"
    )
    result = CliRunner().invoke(webhooks_app, ["plan", str(spec)])
    assert result.exit_code == 1, result.output
    assert "(pass --allow-unknown-event-types to accept" in result.output
    assert emulator.write_count() == 0
    # The operator's path (load_spec) names its parameter, which is what a DAG author sets.
    with pytest.raises(SpecValidationError, match=r"\(set allow_unknown_event_types to accept"):
        load_spec(spec)
