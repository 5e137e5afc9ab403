"""The receiver inside a real ``airflow api-server``: POST to the running server, as Carerix would.

Started with Airflow's defaults for plugin discovery (``[core] lazy_discover_providers`` unset, i.e. True) and
with lazy discovery off, since users run both.
"""

from __future__ import annotations

import json
import threading
import time
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


@pytest.fixture
def api_server_defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, str]]:
    # One receiver setting through Airflow's environment form, as a deployment would set it.
    stack, store_url = _start_api_server(
        tmp_path_factory.mktemp("api-server-door"), {"AIRFLOW__CARERIX__RECEIVER_MAX_BODY": "8192"}
    )
    try:
        yield stack, store_url
    finally:
        stack.stop()


@pytest.mark.timeout(600)
def test_the_door_holds_inside_the_api_server(api_server_defaults: tuple[AirflowStack, str]) -> None:
    """The same door mounted in Airflow's API server, whose server settings (uvicorn, httptools, no head limit,
    no connection cap) are Airflow's: what the receiver's app bounds itself holds there too."""
    from tests.test_receiver_door import closed_within, connect, head, read_answer, trickle

    stack, store_url = api_server_defaults
    url = stack.api_url
    path = "/carerix/events"
    secret_of = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}

    def deliver() -> float:
        event_id = str(uuid.uuid4())
        body = json.dumps({"id": event_id, "time": "2024-02-14T14:24:40Z", "type": "cremployee:updated"})
        started = time.monotonic()
        response = httpx.post(f"{url}{path}", content=body, headers=secret_of, timeout=30)
        assert response.status_code == 201, (response.status_code, response.text)
        return time.monotonic() - started

    deliver()  # the app is built on first use: not part of what is timed below
    # Without the secret: 401 from the head, the announced body never read, the connection closed.
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(head(path, secret="wrong"))
        answer = read_answer(sock, started)
        assert answer is not None and answer.status == 401 and answer.after < 2.0
        assert answer.headers["connection"] == "close" and closed_within(sock, 5)
    # With it, a trickled body: cut off by the minimum rate (Airflow's server has no body deadline of its own).
    stop = threading.Event()
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(head(path, length=5000, secret=SECRET))
        trickle(sock, b" ", 0.3, stop)
        answer = read_answer(sock, started, timeout=15)
        stop.set()
        assert answer is not None and answer.status == 408 and answer.after < 5.0, answer and answer.body
    # A head larger than 16 KiB reaches the app (Airflow's uvicorn has no limit): the app refuses it.
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(head(path, length=2, secret=SECRET, extra=f"X-Pad: {'a' * 20_000}\r\n") + b"{}")
        answer = read_answer(sock, started)
        assert answer is not None and answer.status == 431
    # No redirect whose Location comes from the Host header.
    trailing = httpx.post(
        f"{url}{path}/", content=b"{}", headers={**secret_of, "Host": "evil.example"}, timeout=30
    )
    assert trailing.status_code == 404 and "location" not in trailing.headers
    # Strict input, as standalone.
    nan = b'{"id": "n", "time": "2024-02-14T14:24:40Z", "type": "a:b", "data": {"x": NaN}}'
    assert httpx.post(f"{url}{path}", content=nan, headers=secret_of, timeout=30).status_code == 400
    # 300 slow unauthenticated bodies and 1,000 idle connections open: a delivery is stored within seconds.
    slow = [connect(url) for _ in range(300)]
    idle = [connect(url) for _ in range(1000)]
    try:
        for sock in slow:
            sock.sendall(head(path, secret=None, length=100) + b"{")
        assert deliver() < 3.0
    finally:
        for sock in slow + idle:
            sock.close()
    # [carerix] receiver_max_body from the environment reached the mounted receiver.
    big = json.dumps({"id": "big", "time": "2024-02-14T14:24:40Z", "type": "a:b", "data": {"x": "y" * 9000}})
    assert httpx.post(f"{url}{path}", content=big, headers=secret_of, timeout=30).status_code == 413
    health = httpx.get(f"{url}/carerix/health", timeout=30).json()
    assert health["status"] == "ok" and health["checked"] in ("last write", "probe")
    with EventStore(store_url) as store:
        assert len(store.events_after(0)) == 2
        # The store's identity, the same for every component, and this receiver's heartbeat in it.
        assert health["store_id"] == store.identity().store_id and health["receivers_seen"] == 1
    assert SECRET not in stack.tail("api-server", 2000)
