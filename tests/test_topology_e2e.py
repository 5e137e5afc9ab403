"""One deployment on many machines, as containers would run it: every event processed once, stored once.

Each component runs with its own ``AIRFLOW_HOME`` and working directory (nothing on a shared disk), Airflow's
metadata database and the event store are one PostgreSQL server, and the provider is configured only the way
Airflow keeps configuration: the store is a connection added with ``airflow connections add`` (no store URL
anywhere), the receiver secret an Airflow option in the environment. New DAGs are paused (Airflow's default):
the DAG is deployed, events arrive, and only then is it unpaused.

Checked: both receivers (``carerix-receiver serve`` and ``/carerix/events`` in the API server) find the store
through the connection in the metadata database; the DAG processor registers the consumer at deployment; the
events stored while the DAG was paused and those stored after are each processed exactly once; no component
made a SQLite store of its own; both receivers left heartbeats, so no reader warned; the store's password is in
no log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from tests.fixtures.airflow_stack import (
    BIN,
    AirflowStack,
    _reset_sigint,
    _suppress_lookup,
    free_port,
    wait_for,
)
from tests.fixtures.postgres import PostgresCluster, _require_postgres
from tests.guide import guide_event

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.postgres]

DAG_ID = "carerix_event_driven"
TASK_ID = "process_employee_updates"
CONSUMER = "carerix_cremployee_updated"
SECRET = "topology-" + uuid.uuid4().hex
STORE_PASSWORD = "store-pw-" + uuid.uuid4().hex[:12]


class SplitStack(AirflowStack):
    """Airflow's components each in a home and working directory of their own, on a PostgreSQL metadata DB."""

    metadata_url: str = ""
    component_env: dict[str, dict[str, str]]

    def home_of(self, component: str) -> Path:
        path = self.home / component.replace(" ", "-")
        path.mkdir(exist_ok=True)
        return path

    def env_for(self, component: str) -> dict[str, str]:
        return {
            **self.env,
            **self.component_env.get(component, {}),
            "AIRFLOW_HOME": str(self.home_of(component)),
        }

    def cwd_for(self, component: str) -> Path:
        return self.home_of(component)

    def query(self, sql: str, *params: Any) -> list[Any]:
        names = iter(range(len(params)))
        text = re.sub(r"\?", lambda _: f":p{next(names)}", sql)
        engine = sa.create_engine(self.metadata_url)
        try:
            with engine.connect() as conn:
                return [
                    row._mapping
                    for row in conn.execute(sa.text(text), {f"p{i}": p for i, p in enumerate(params)})
                ]
        finally:
            engine.dispose()


@pytest.fixture
def split_stack(tmp_path: Path) -> Iterator[tuple[SplitStack, str, subprocess.Popen[bytes], str]]:
    _require_postgres()
    postgres = PostgresCluster(fsync=False).start()
    admin = sa.create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE airflow_meta"))
        conn.execute(sa.text(f"CREATE ROLE carerix LOGIN PASSWORD '{STORE_PASSWORD}'"))
        conn.execute(sa.text("CREATE DATABASE carerix_store OWNER carerix"))
    admin.dispose()
    metadata = postgres.url("airflow_meta")

    stack = SplitStack.create(
        tmp_path / "deployment",
        env={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # Airflow's default
            # One key for every component, as any multi-machine deployment needs: connections are encrypted.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        },
    )
    # Nothing of the test process's own Carerix configuration may reach the deployment.
    stack.env = {k: v for k, v in stack.env.items() if not k.startswith("CARERIX_")}
    stack.metadata_url = metadata
    stack.component_env = {"api-server": {"AIRFLOW__CARERIX__RECEIVER_SECRET": SECRET}}
    receiver: subprocess.Popen[bytes] | None = None
    try:
        stack.migrate()
        stack.airflow(
            "connections", "add", "carerix_event_store",
            "--conn-type", "carerix_event_store", "--conn-host", "127.0.0.1", "--conn-port", str(postgres.port),
            "--conn-schema", "carerix_store", "--conn-login", "carerix", "--conn-password", STORE_PASSWORD,
        )  # fmt: skip
        port = free_port()
        receiver_env = {**stack.env_for("receiver"), "AIRFLOW__CARERIX__RECEIVER_SECRET": SECRET}
        with open(stack.home / "logs" / "receiver.log", "wb") as log:
            receiver = subprocess.Popen(
                [str(BIN / "carerix-receiver"), "serve", "--port", str(port)],
                env=receiver_env,
                cwd=stack.cwd_for("receiver"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_reset_sigint,
            )
        for component in ("scheduler", "dag-processor", "triggerer", "api-server"):
            stack.start_component(component)
        yield stack, f"http://127.0.0.1:{port}", receiver, postgres.url("carerix_store")
    finally:
        if receiver is not None:
            with _suppress_lookup():
                os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait(timeout=30)
        stack.stop()
        postgres.stop()


def deliver(url: str) -> str:
    body = guide_event(int(uuid.uuid4().int % 100000), ["touser.lastname"])
    response = httpx.post(url, json=body, headers={"X-Carerix-Secret": SECRET}, timeout=30)
    assert response.status_code == 201, response.text
    return body["id"]


def processed(stack: SplitStack) -> list[str]:
    return [i for ids in stack.xcoms(DAG_ID, TASK_ID).values() for i in ids or ()]


def test_a_split_deployment_configured_by_connection_processes_every_event_once(
    split_stack: tuple[SplitStack, str, subprocess.Popen[bytes], str],
) -> None:
    stack, receiver_url, receiver, store_admin_url = split_stack
    stack.wait_healthy()
    wait_for(lambda: receiver.poll() is not None or httpx.get(f"{receiver_url}/health").status_code == 200 or None,
             "the standalone receiver", timeout=120)  # fmt: skip
    assert receiver.poll() is None, (stack.home / "logs" / "receiver.log").read_text()
    api_events = f"{stack.api_url}/carerix/events"

    # Deployed, paused: Airflow registered the DAG and its asset; the DAG processor registered the consumer.
    dag = wait_for(lambda: stack.query("SELECT is_paused FROM dag WHERE dag_id = ?", DAG_ID), "the DAG", 240)
    assert dag[0]["is_paused"] is True
    store = sa.create_engine(store_admin_url)
    try:
        with store.connect() as conn:
            origin = conn.execute(
                sa.text("SELECT sequence FROM carerix_cursors WHERE name = :n"), {"n": f"{CONSUMER}:origin"}
            ).scalar()
        assert origin is not None, "the consumer was not registered when the DAG was deployed"

        while_paused = [deliver(f"{receiver_url}/events") for _ in range(4)]
        while_paused += [deliver(api_events) for _ in range(4)]
        with store.connect() as conn:  # both receivers wrote to the one store the connection names
            assert conn.execute(sa.text("SELECT count(*) FROM carerix_events")).scalar() == len(while_paused)
        time.sleep(5)
        assert stack.dag_runs(DAG_ID) == []  # paused: nothing runs

        stack.airflow("dags", "unpause", DAG_ID)
        after = [deliver(f"{receiver_url}/events"), deliver(api_events), deliver(f"{receiver_url}/events")]
        sent = while_paused + after

        wait_for(lambda: set(processed(stack)) >= set(sent), "every event processed", timeout=600, interval=2)
        time.sleep(3)  # a late run would show a double here
        done = processed(stack)
        assert sorted(done) == sorted(sent), "each event exactly once"

        with store.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM carerix_events")).scalar()
            kinds = {r[0] for r in conn.execute(sa.text("SELECT kind FROM carerix_receivers"))}
        assert stored == len(sent)
        assert kinds == {"standalone", "api-server"}
    finally:
        store.dispose()

    # No component made a store of its own, and every one says where its store came from.
    assert not list(stack.home.rglob("carerix_events.db*"))
    logs = {p.name: p.read_text(errors="replace") for p in (stack.home / "logs").glob("*.log")}
    task_logs = "".join(
        p.read_text(errors="replace") for p in stack.home.rglob("*.log") if "dag_id=" in str(p)
    )
    source = "(from the Airflow connection 'carerix_event_store')"
    assert source in logs["receiver.log"]
    assert source in logs["api-server-0.log"]
    assert source in logs["triggerer-0.log"] or source in "".join(
        p.read_text(errors="replace") for p in stack.home.rglob("*.log") if "trigger" in str(p)
    )
    assert "No Carerix receiver has recorded a heartbeat" not in "".join(logs.values()) + task_logs
    for name, text in {**logs, "tasks": task_logs}.items():
        assert STORE_PASSWORD not in text, f"the store's password is in {name}"
