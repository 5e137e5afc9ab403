"""The receiver inside a real ``airflow api-server``: POST to the running server, as Carerix would.

Started with Airflow's defaults for plugin discovery (``[core] lazy_discover_providers`` unset, i.e. True) and
with lazy discovery off, since users run both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_carerix.store import EventStore
from tests.fixtures.airflow_stack import AirflowStack, wait_for

pytestmark = pytest.mark.airflow_e2e

SECRET = "api-server-" + uuid.uuid4().hex


def _start_api_server(home: Path, extra_env: dict[str, str]) -> tuple[AirflowStack, str]:
    store_url = f"sqlite:///{home / 'carerix_events.db'}"
    stack = AirflowStack.create(
        home, env={"CARERIX_RECEIVER_SECRET": SECRET, "CARERIX_EVENT_STORE_URL": store_url, **extra_env}
    )
    try:
        stack.migrate()
        stack.start_component("api-server")

        def up() -> bool:
            stack.check_alive()
            try:
                return httpx.get(f"{stack.api_url}/api/v2/monitor/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, "the API server", timeout=240, interval=0.5)
    except BaseException:
        stack.stop()
        raise
    return stack, store_url


@pytest.fixture(
    params=[
        pytest.param({}, id="airflow-defaults"),
        pytest.param({"AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "False"}, id="lazy-discovery-off"),
    ]
)
def api_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AirflowStack, str]]:
    stack, store_url = _start_api_server(tmp_path_factory.mktemp("api-server"), request.param)
    try:
        yield stack, store_url
    finally:
        stack.stop()


@pytest.mark.timeout(600)
def test_post_to_the_running_api_server_is_stored(api_server: tuple[AirflowStack, str]) -> None:
    stack, store_url = api_server
    event_id = str(uuid.uuid4())
    body = json.dumps({"id": event_id, "time": "2024-02-14T14:24:40Z", "type": "cremployee:updated"})
    headers = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}
    response = httpx.post(f"{stack.api_url}/carerix/events", content=body, headers=headers, timeout=30)
    assert response.status_code == 201, (response.status_code, response.text, stack.tail("api-server"))
    assert response.json()["id"] == event_id
    wrong = httpx.post(
        f"{stack.api_url}/carerix/events", content=body, headers={**headers, "X-Carerix-Secret": "x"}
    )
    assert wrong.status_code == 401
    health = httpx.get(f"{stack.api_url}/carerix/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    with EventStore(store_url) as store:
        assert [e.event_id for e in store.events_after(0)] == [event_id]
    log = stack.tail("api-server", 400)
    assert SECRET not in log
    assert log.count("Carerix receiver mounted at /carerix") == 1
