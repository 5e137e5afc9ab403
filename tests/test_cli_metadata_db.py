"""The CLIs read connections and Variables where most users keep them: Airflow's metadata database.

As a user does it: ``airflow connections add`` and ``airflow variables set`` in an ``AIRFLOW_HOME``, then
``carerix-webhooks plan`` from the same machine, with no ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*`` anywhere. A
lookup that fails says where it looked; on a machine without Airflow configured the CLI creates no
``airflow.db``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SPEC = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CARERIX_", "_AIRFLOW"))}
    return {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], env=env, capture_output=True, text=True, timeout=300, cwd=env["AIRFLOW_HOME"]
    )


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cli-home")
    result = run(clean_env(home), str(BIN / "airflow"), "db", "migrate")
    assert result.returncode == 0, result.stderr[-3000:]
    yield home


def test_plan_reads_the_connection_and_variables_from_the_metadata_db(
    airflow_home: Path, emulator: Any
) -> None:
    env = clean_env(airflow_home)
    airflow = str(BIN / "airflow")
    for args in (
        ("connections", "add", "carerix_default", "--conn-json", emulator.connection_json()),
        ("variables", "set", "carerix_receiver_url", "https://receiver.example.com/carerix/events"),
        ("variables", "set", "carerix_receiver_secret", "kept-in-the-metadata-db"),
    ):
        added = run(env, airflow, *args)
        assert added.returncode == 0, added.stderr[-2000:]

    plan = run(env, str(BIN / "carerix-webhooks"), "plan", str(SPEC))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "create application 'airflow-carerix'" in plan.stdout
    assert "kept-in-the-metadata-db" not in plan.stdout + plan.stderr

    missing = run(env, str(BIN / "carerix-webhooks"), "plan", "--conn-id", "nope", str(SPEC))
    assert missing.returncode == 1
    assert (
        "error: the Airflow connection 'nope' is not defined: looked in the environment variable "
        f"AIRFLOW_CONN_NOPE and Airflow's metadata database (sqlite:///{airflow_home / 'airflow.db'})"
    ) in missing.stderr


def test_without_airflow_configured_the_error_says_so_and_no_database_appears(
    tmp_path: Path, emulator: Any
) -> None:
    env = clean_env(tmp_path)
    result = run(env, str(BIN / "carerix-webhooks"), "plan", str(SPEC))
    assert result.returncode == 1
    assert (
        "looked in the environment variable AIRFLOW_CONN_CARERIX_DEFAULT and not Airflow's metadata database "
        "(Airflow is not configured on this machine"
    ) in result.stderr
    assert not (tmp_path / "airflow.db").exists()
