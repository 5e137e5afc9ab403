"""Test-wide setup: an isolated AIRFLOW_HOME, configured before anything imports Airflow.

Fixture modules live in ``tests/fixtures/`` (one per area: emulator, postgres, airflow, ...) and are
registered below, so areas do not edit one shared file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_home = Path(tempfile.mkdtemp(prefix="carerix-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_home)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_home / 'airflow.db'}"
os.environ["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = "http://127.0.0.1:8080/execution/"
# The event store of tests that do not pick their own: inside this session's AIRFLOW_HOME.
os.environ.setdefault("CARERIX_EVENT_STORE_URL", f"sqlite:///{_home / 'carerix_events.db'}")
os.environ.pop("CARERIX_RECEIVER_SECRET", None)


@pytest.fixture(autouse=True)
def _restore_process_context() -> Iterator[None]:
    """What a test's in-process Airflow leaves in the environment must not leak into the next test: CLIs run
    in-process let lookups read the metadata database (``_AIRFLOW_PROCESS_CONTEXT=server``, as Airflow's own
    CLI does), and ``dag.test()`` leaves the last task's ``AIRFLOW_CTX_*`` (a claim outside a task then
    names that DAG as the consumer's owner)."""

    def snapshot() -> dict[str, str]:
        return {
            k: v
            for k, v in os.environ.items()
            if k == "_AIRFLOW_PROCESS_CONTEXT" or k.startswith("AIRFLOW_CTX_")
        }

    before = snapshot()
    yield
    for key in snapshot().keys() - before.keys():
        os.environ.pop(key, None)
    os.environ.update(before)


pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (ROOT / "tests" / "fixtures").glob("*.py") if p.stem != "__init__"
)
