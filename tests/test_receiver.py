"""The receiver served by real uvicorn on loopback, on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

# Imported up front: importing Airflow configures logging, which would detach caplog inside a test.
from airflow_provider_carerix import plugins
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.receiver import GroupCommitter, create_app, load_secrets, main
from airflow_provider_carerix.store import EventStore, StoreUnavailable
from tests.fixtures.receiver import start_receiver, start_receiver_process
from tests.test_store import GUIDE_PAYLOAD

SECRET = "s3cret-" + uuid.uuid4().hex
# A deadline that only a hung receiver reaches, for tests whose subject is not the deadline itself.
NEVER = 300.0
HEADERS = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}


def event_body(event_id: str | None = None, type_: str = "cremployee:updated", **extra: Any) -> bytes:
    body = {
        "id": str(uuid.uuid4()) if event_id is None else event_id,
        "time": "2024-02-14T14:24:40Z",
        "type": type_,
        "applicationId": "app-1",
        "webhookId": "wh-1",
        "tenant": "demo",
        "data": {"entityId": "1", "changedFields": ["touser"]},
    }
    body.update(extra)
    return json.dumps(body).encode()


@pytest.fixture
def url(store_url: str) -> Iterator[str]:
    base, stop = start_receiver(store_url, [SECRET, "previous-secret"])
    yield base
    stop()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/events", content=body, headers=HEADERS if headers is None else headers, timeout=30
    )


# -- accepted ---------------------------------------------------------------------------------------------------


def test_guide_payload_stored_byte_for_byte(url: str, store: EventStore) -> None:
    response = post(url, GUIDE_PAYLOAD)
    assert response.status_code == 201
    assert response.json()["id"] == "8469bf71-4942-45ea-98b8-393077288785"
    assert response.json()["duplicate"] is False
    [stored] = store.events_after(0)
    assert stored.raw.encode() == GUIDE_PAYLOAD
    assert stored.sequence == response.json()["sequence"]
    assert stored.type == "cremployee:updated" and stored.webhook_id == "4c3174c9-deab-426a-8d26-23bbc89e461e"


def test_duplicate_is_2xx_and_stored_once(url: str, store: EventStore) -> None:
    body = event_body("same-id")
    first, second = post(url, body), post(url, body)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json() == {"id": "same-id", "sequence": first.json()["sequence"], "duplicate": True}
    assert [e.event_id for e in store.events_after(0)] == ["same-id"]


def test_rotation_every_configured_secret_works(url: str, store: EventStore) -> None:
    assert post(url, event_body(), {**HEADERS, "X-Carerix-Secret": "previous-secret"}).status_code == 201
    assert post(url, event_body()).status_code == 201
    assert len(store.events_after(0)) == 2


def test_charset_and_json_suffix_content_types(url: str) -> None:
    for ct in ("application/json; charset=utf-8", "application/cloudevents+json", "Application/JSON"):
        assert post(url, event_body(), {**HEADERS, "Content-Type": ct}).status_code == 201


def test_health(url: str) -> None:
    response = httpx.get(f"{url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_concurrent_senders_all_stored(
    store_url: str, store: EventStore, receiver: Callable[..., tuple[str, Callable[[], None]]]
) -> None:
    """300 deliveries over 32 keep-alive connections: every one answered 201 and stored once.

    The receiver's ack deadline (503 when a commit takes 8 s, so Carerix retries) is about a slow store, not
    about concurrency: on a loaded machine a commit can take that long, so here it is a "never happens" bound.
    """
    url, _ = receiver(store_url, [SECRET], ack_timeout=NEVER)
    ids = [str(uuid.uuid4()) for _ in range(300)]

    async def send_all() -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(32)

            async def send(event_id: str) -> int:
                async with sem:
                    r = await client.post(f"{url}/events", content=event_body(event_id), headers=HEADERS)
                    return r.status_code

            return await asyncio.gather(*(send(i) for i in ids))

    statuses = asyncio.run(send_all())
    assert statuses == [201] * len(ids)
    stored = store.events_after(0, limit=10_000)
    assert sorted(e.event_id for e in stored) == sorted(ids)


# -- rejected ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "X-Carerix-Secret": "wrong"},
        {"Content-Type": "application/json", "X-Carerix-Secret": SECRET + "x"},
        {"Content-Type": "application/json", "X-Carerix-Secret": ""},
        {"Content-Type": "application/json", "X-Other": SECRET},
    ],
)
def test_401_without_the_secret_nothing_stored(url: str, store: EventStore, headers: dict[str, str]) -> None:
    response = post(url, event_body(), headers)
    assert response.status_code == 401
    assert SECRET not in response.text
    assert store.events_after(0) == []


def test_400_not_json(url: str, store: EventStore) -> None:
    for body in (b"{not json", b"", b"\xff\xfe\x00garbage", '{"id": "é"}'.encode("latin-1")):
        response = post(url, body)
        assert response.status_code == 400, body
    assert store.events_after(0) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[1, 2]", "body"),
        (b'"just a string"', "body"),
        (json.dumps({"time": "2024-02-14T14:24:40Z", "type": "a:b"}).encode(), "id"),
        (event_body(time="yesterday-ish"), "time"),
        (event_body(type_="no-colon"), "type"),
        (event_body(type_="cremployee:"), "type"),
        (event_body(event_id=""), "id"),
        (event_body(data=[1]), "data"),
        (event_body(data={"entityId": {"nested": True}}), "data.entityId"),
        (event_body(tenant="t" * 300), "tenant"),
        (event_body(webhookId=7), "webhookId"),
    ],
)
def test_422_names_the_bad_field(url: str, store: EventStore, body: bytes, field: str) -> None:
    response = post(url, body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert field in response.json()["detail"] or field == "body"
    assert store.events_after(0) == []


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_415_wrong_content_type(url: str, store: EventStore, content_type: str | None) -> None:
    headers = {"X-Carerix-Secret": SECRET}
    if content_type:
        headers["Content-Type"] = content_type
    assert post(url, event_body(), headers).status_code == 415
    assert store.events_after(0) == []


def _raw_http(url: str, head: bytes, chunks: Iterable[bytes] = ()) -> bytes:
    """Speak HTTP by hand: send headers and some body, stop sending, read what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server may close the connection once it has answered
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def test_413_on_declared_length_without_any_body(url: str, store: EventStore) -> None:
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Carerix-Secret: {SECRET}\r\n".encode()
        + b"Content-Length: 10737418240\r\n\r\n"
    )
    # 10 GiB announced, nothing sent: the answer can only come from the header.
    assert _raw_http(url, head).startswith(b"HTTP/1.1 413")
    assert store.events_after(0) == []


def test_413_on_chunked_body_stops_reading(url: str, store: EventStore) -> None:
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Carerix-Secret: {SECRET}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    # 1.25 MiB sent and never terminated: the server must answer without waiting for the rest.
    assert _raw_http(url, head, iter([chunk] * 20)).startswith(b"HTTP/1.1 413")
    assert store.events_after(0) == []


def test_413_with_httpx(url: str) -> None:
    assert post(url, b"{" + b" " * (1024 * 1024 + 10) + b"}").status_code == 413


def test_never_500_for_odd_input(url: str) -> None:
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "x", "time": "2024-02-14T14:24:40Z", "type": "a:b", "data": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
        b"null",
        b"1e999999",
        b'{"id": "\\ud800", "time": "2024-02-14T14:24:40Z", "type": "a:b"}',
        b'{"id": "x", "time": 1e400, "type": "a:b"}',
        bytes(range(256)),
    ]
    for body in bodies:
        response = post(url, body)
        assert 200 <= response.status_code < 500, (body[:40], response.status_code)
    odd_headers: list[dict[str, Any]] = [
        {**HEADERS, "Content-Length": "abc"},
        {**HEADERS, "X-Carerix-Secret": "é".encode("latin-1")},
        {**HEADERS, "X-Carerix-Secret": SECRET.encode() + b"\xff"},
    ]
    for headers in odd_headers:
        try:
            response = httpx.post(f"{url}/events", content=event_body(), headers=headers)
        except httpx.HTTPError:
            continue  # the client itself may refuse to send such headers
        assert response.status_code < 500


def test_rejections_are_logged_without_secret_or_payload(url: str, caplog: pytest.LogCaptureFixture) -> None:
    marker = "payload-marker-" + uuid.uuid4().hex
    with caplog.at_level(logging.INFO):
        post(url, event_body(marker), {**HEADERS, "X-Carerix-Secret": "wrong-" + SECRET})
        post(url, b'{"' + marker.encode() + b'": 1', HEADERS)
        post(url, event_body(marker, type_=marker), HEADERS)
    text = caplog.text
    assert "Rejected Carerix delivery" in text
    assert "401" in text and "400" in text and "422" in text
    assert SECRET not in text and marker not in text


# -- store down -------------------------------------------------------------------------------------------------


def _unreachable_urls(tmp_path: Path) -> list[str]:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        f"sqlite:///{blocker / 'events.db'}",
        f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=2",
    ]


def test_503_and_health_503_when_store_unreachable(tmp_path: Path) -> None:
    for store_url in _unreachable_urls(tmp_path):
        base, stop = start_receiver(store_url, SECRET)
        try:
            assert post(base, event_body()).status_code == 503
            assert httpx.get(f"{base}/health", timeout=30).status_code == 503
        finally:
            stop()


@pytest.mark.postgres
def test_503_while_postgres_is_down_then_recovers(tmp_path: Path) -> None:
    from tests.fixtures.postgres import PostgresCluster

    with PostgresCluster() as cluster:
        store_url = cluster.create_database()
        base, stop = start_receiver(store_url, SECRET)
        try:
            assert post(base, event_body()).status_code == 201
            assert cluster.pg_ctl
            cluster._run(cluster.pg_ctl, "-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop")
            assert post(base, event_body()).status_code == 503
            assert httpx.get(f"{base}/health", timeout=30).status_code == 503
            cluster._run(
                cluster.pg_ctl, "-D", str(cluster.data_dir), "-l", str(cluster.tmp / "log2"), "-w", "start",
                "-o", f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.tmp}",
            )  # fmt: skip
            assert post(base, event_body()).status_code == 201
            assert httpx.get(f"{base}/health", timeout=30).status_code == 200
        finally:
            stop()


# -- Cx-Signature -----------------------------------------------------------------------------------------------


def test_cx_signature_verified_when_public_key_configured(store_url: str, store: EventStore) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    base, stop = start_receiver(store_url, SECRET, public_key=pem)
    try:
        body = event_body()
        good = base64.b64encode(private.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
        assert post(base, body, {**HEADERS, "Cx-Signature": good}).status_code == 201
        pss = private.sign(
            body2 := event_body(),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
            hashes.SHA256(),
        )
        headers = {**HEADERS, "Cx-Signature": base64.urlsafe_b64encode(pss).decode().rstrip("=")}
        assert post(base, body2, headers).status_code == 201
        assert post(base, event_body(), {**HEADERS, "Cx-Signature": good}).status_code == 401  # other body
        assert post(base, event_body(), HEADERS).status_code == 401
        assert post(base, event_body(), {**HEADERS, "Cx-Signature": "not base64!!"}).status_code == 401
        # The secret is still required next to the signature.
        no_secret = {"Content-Type": "application/json", "Cx-Signature": good}
        assert post(base, body, no_secret).status_code == 401
        assert len(store.events_after(0)) == 2
    finally:
        stop()


# -- group commit -----------------------------------------------------------------------------------------------


class _GatedStore:
    """insert_many blocks on the first call until released, so later submissions pile up into one group."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def insert_deliveries(self, items: list[tuple[bytes, EventPayload]]) -> list[tuple[int, bool]]:
        self.calls.append(len(items))
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait(30)
        return [(i + 1, True) for i in range(len(items))]


def test_group_commit_batches_waiting_requests() -> None:
    gated = _GatedStore()
    committer = GroupCommitter(gated, max_batch=100)  # type: ignore[arg-type]

    async def scenario() -> list[tuple[int, bool]]:
        event = EventPayload.model_validate_json(event_body())
        first = asyncio.ensure_future(committer.submit(b"{}", event))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 30)
        rest = [asyncio.ensure_future(committer.submit(b"{}", event)) for _ in range(50)]
        await asyncio.sleep(0)
        gated.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    committer.close()
    assert len(results) == 51
    assert gated.calls == [1, 50]


def test_group_commit_one_bad_item_does_not_fail_the_group() -> None:
    class Flaky:
        def insert_deliveries(self, items: list[Any]) -> list[tuple[int, bool]]:
            if len(items) > 1:
                raise RuntimeError("boom")
            if items[0][0] == b"bad":
                raise RuntimeError("bad item")
            return [(1, True)]

    committer = GroupCommitter(Flaky(), max_batch=100)  # type: ignore[arg-type]
    event = EventPayload.model_validate_json(event_body())

    async def scenario() -> list[Any]:
        futures = [committer.submit(raw, event) for raw in (b"ok", b"bad", b"ok")]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    committer.close()
    assert [type(r).__name__ for r in results].count("StoreUnavailable") == 1
    assert results.count((1, True)) == 2


# -- the receiver process: CLI, secrets, kill -9 ----------------------------------------------------------------


def test_serve_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARERIX_RECEIVER_SECRET", raising=False)
    assert run_cli("serve", "--port", "1") == 2


def test_create_app_refuses_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no receiver secret"):
        create_app(f"sqlite:///{tmp_path / 'e.db'}", secrets=[])
    create_app(f"sqlite:///{tmp_path / 'e.db'}", secrets=[], insecure=True)


def test_insecure_accepts_without_secret(store_url: str, receiver: Callable[..., Any]) -> None:
    base, _ = receiver(store_url, None)
    assert post(base, event_body(), {"Content-Type": "application/json"}).status_code == 201


def test_load_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CARERIX_RECEIVER_SECRET", " a , b,,")
    secret_file = tmp_path / "secrets"
    secret_file.write_text("# current\nc\n\nb\n")
    assert load_secrets(secret_file) == ["a", "b", "c"]


def test_process_with_secret_file_and_custom_header(
    store_url: str, store: EventStore, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secrets"
    secret_file.write_text("new-one\nold-one\n")
    receiver = start_receiver_process(
        store_url,
        secret_file=secret_file,
        extra_args=["--secret-header", "Custom-Signature"],
        log_dir=tmp_path,
    )
    try:
        for secret in ("new-one", "old-one"):
            headers = {"Custom-Signature": secret, "Content-Type": "application/json"}
            assert post(receiver.url, event_body(), headers).status_code == 201
        assert post(receiver.url, event_body(), HEADERS).status_code == 401
        assert httpx.get(f"{receiver.url}/health").status_code == 200
    finally:
        receiver.stop()
    assert len(store.events_after(0)) == 2
    assert "new-one" not in receiver.log and "old-one" not in receiver.log


def test_kill_9_under_load_loses_no_acknowledged_event(store_url: str, tmp_path: Path) -> None:
    receiver = start_receiver_process(store_url, secrets=[SECRET], log_dir=tmp_path)
    acknowledged: list[str] = []
    enough = 400

    async def load() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:

            async def sender() -> None:
                while not stop.is_set():
                    event_id = str(uuid.uuid4())
                    try:
                        r = await client.post(
                            f"{receiver.url}/events", content=event_body(event_id), headers=HEADERS
                        )
                    except httpx.HTTPError:
                        return  # the receiver is gone
                    if 200 <= r.status_code < 300:
                        acknowledged.append(event_id)
                        if len(acknowledged) >= enough and not stop.is_set():
                            stop.set()
                            receiver.kill()  # SIGKILL while the other senders are mid-request

            await asyncio.gather(*(sender() for _ in range(32)))

    try:
        asyncio.run(load())
    finally:
        receiver.stop()
    assert receiver.proc.returncode == -9
    assert len(acknowledged) >= enough
    with EventStore(store_url) as store:
        stored = {e.event_id for e in store.events_after(0, limit=100_000)}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged events lost"


def run_cli(*args: str) -> int | str | None:
    with pytest.raises(SystemExit) as excinfo:
        main(list(args))
    return excinfo.value.code


def test_purge_cli(store_url: str, store: EventStore, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        body = event_body()
        store.insert(body, EventPayload.model_validate_json(body))
    assert run_cli("purge", "--older-than", "30d", "--store", store_url) == 0
    assert "deleted 0 events" in capsys.readouterr().out
    assert run_cli("purge", "--older-than", "0s", "--store", store_url) == 0
    assert "deleted 2 events" in capsys.readouterr().out
    assert len(store.events_after(0)) == 1
    assert run_cli("purge", "--older-than", "forever", "--store", store_url) == 2


def test_store_unavailable_is_an_exception() -> None:
    assert issubclass(StoreUnavailable, Exception)


# -- inside the Airflow API server ------------------------------------------------------------------------------


def test_plugin_not_mounted_without_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CARERIX_RECEIVER_SECRET", raising=False)
    monkeypatch.delenv("AIRFLOW__CARERIX__RECEIVER_SECRET", raising=False)
    with caplog.at_level(logging.INFO):
        [entry] = plugins.build_fastapi_apps()
    assert "not mounted" in caplog.text
    # Only the read-only Carerix page (behind Airflow's login) is there: no door for deliveries.
    paths = {getattr(route, "path", "") for route in entry["app"].routes}
    assert "/events" not in paths and "/health" not in paths
    assert "/ui/api/events" in paths


def test_plugin_loads_as_airflow_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import entry_points

    from airflow.plugins_manager import is_valid_plugin

    from airflow_provider_carerix.get_provider_info import get_provider_info
    from tests.fixtures.airflow import only_plugins

    # An entry-point plugin (loaded under every lazy_discover_providers setting), not a provider-declared one
    # (which would be registered a second time when lazy discovery is off).
    assert "plugins" not in get_provider_info()
    [entry] = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "carerix"][:1]
    plugin = entry.load()
    with only_plugins(monkeypatch, []):  # none loaded yet: Airflow 3.1 also checks it is not a duplicate
        assert is_valid_plugin(plugin)
    plugin.validate()
    assert isinstance(plugin.fastapi_apps, list)


def test_provider_info_still_valid() -> None:
    import importlib.resources

    import jsonschema

    from airflow_provider_carerix.get_provider_info import get_provider_info

    schema = json.loads(
        importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text()
    )
    jsonschema.validate(get_provider_info(), schema)


# -- authentication as an object ---------------------------------------------------------------------------------


def test_receiver_auth_without_a_web_framework() -> None:
    from airflow_provider_carerix.receiver.auth import AuthenticationError, ReceiverAuth

    auth = ReceiverAuth([SECRET, "old"], secret_header="X-Carerix-Secret")
    body = event_body()
    auth.verify(body, {"x-carerix-secret": SECRET})  # plain mapping, any case
    auth.verify(body, [(b"X-Carerix-Secret", b"old")])  # raw ASGI pairs
    for headers in ({}, {"X-Carerix-Secret": "wrong"}, {"X-Other": SECRET}):
        with pytest.raises(AuthenticationError) as excinfo:
            auth.verify(body, headers)
        assert excinfo.value.status_code == 401 and SECRET not in str(excinfo.value)
    with pytest.raises(ValueError) as refused:
        ReceiverAuth([])
    assert str(refused.value) == (
        "no receiver secret configured ([carerix] receiver_secret, e.g. AIRFLOW__CARERIX__RECEIVER_SECRET, or "
        "--secret-file); refusing to accept unauthenticated events (pass insecure=True / --insecure for local "
        "experiments only)"
    )
    ReceiverAuth([], insecure=True).verify(body, {})


def test_receiver_auth_signatures_rotation_and_ambiguity() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from airflow_provider_carerix.receiver.auth import AuthenticationError, ReceiverAuth

    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=size) for size in (1024, 2048))
    pems = [
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for k in (old, new)
    ]
    body = event_body()
    signed = base64.b64encode(new.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    # Keys only (no secret): the second key matches although the first, of another size, cannot.
    auth = ReceiverAuth([], public_keys=[pems[0].decode(), pems[1]])
    assert (auth.enabled, auth.has_secrets, auth.has_static_keys) == (True, False, True)
    auth.verify(body, {"Cx-Signature": f" {signed}\t"})  # surrounding whitespace is not part of it
    auth.verify(body, [(b"cx-signature", signed.encode())])
    refusals = {
        "two signatures": [("Cx-Signature", signed), ("Cx-Signature", signed)],
        "none": [],
        "another body's": [("Cx-Signature", signed)],
    }
    for what, headers in refusals.items():
        with pytest.raises(AuthenticationError) as excinfo:
            auth.verify(body if what != "another body's" else event_body(), headers)
        assert excinfo.value.status_code == 401, what
        assert "Cx-Signature" in excinfo.value.detail and signed not in excinfo.value.detail, what
    with pytest.raises(AuthenticationError, match="more than one Cx-Signature"):
        auth.verify(body, refusals["two signatures"])
    # The old key still verifies what it signed (rotation), with either padding.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    auth.verify(body, {"Cx-Signature": base64.b64encode(old.sign(body, pss, hashes.SHA256())).decode()})
    with pytest.raises(ValueError, match=r"^the Cx-Signature public key must be an RSA key \(PEM\)$"):
        from cryptography.hazmat.primitives.asymmetric import ec

        ec_pem = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        ReceiverAuth([], public_keys=[ec_pem])


def test_receiver_auth_reads_either_base64_alphabet_with_or_without_padding_and_nothing_else() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from airflow_provider_carerix.receiver.auth import AuthenticationError, ReceiverAuth

    # A 1024-bit key: 128-byte signatures end in one "=", so unpadded ones need exactly one put back.
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = ReceiverAuth([], public_keys=[pem])
    body = event_body()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    # PSS signatures are salted: sign until each URL-safe character appears without the other one.
    wanted = {"-": None, "_": None}
    for _ in range(5000):
        text = base64.urlsafe_b64encode(key.sign(body, pss, hashes.SHA256())).decode()
        for char, other in (("-", "_"), ("_", "-")):
            if wanted[char] is None and char in text and other not in text:
                wanted[char] = text
        if all(wanted.values()):
            break
    assert all(wanted.values())
    for text in wanted.values():
        assert text.endswith("=") and not text.endswith("==")
        auth.verify(body, {"Cx-Signature": text})
        auth.verify(body, {"Cx-Signature": text.rstrip("=")})
    standard = base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    auth.verify(body, {"Cx-Signature": standard})
    # Not base64 although every base64 character of a valid signature is there: refused, not cleaned up.
    for bad in (
        standard[:40] + "*" + standard[40:],
        standard[:40] + " " + standard[40:],
        standard + "==",
        standard + "\n",  # only spaces and tabs around it are taken off
    ):
        with pytest.raises(AuthenticationError):
            auth.verify(body, {"Cx-Signature": bad})


def test_receiver_auth_secrets_are_all_checked_and_never_echoed() -> None:
    from airflow_provider_carerix.receiver.auth import AuthenticationError, ReceiverAuth

    auth = ReceiverAuth(["first", " second\t", "  "], secret_header="X-Hook-Secret")
    assert (auth.enabled, auth.has_secrets, auth.has_static_keys) == (True, True, False)
    assert auth.challenge == 'Secret header="X-Hook-Secret"'
    assert "first" not in repr(auth) and "secrets=2" in repr(auth)
    body = event_body()
    for given in ("first", "second", "\tsecond ", "first "):
        auth.verify(body, {"X-Hook-Secret": given})
    refused = (
        {"X-Hook-Secret": "third"},
        {"X-Hook-Secret": ""},
        {"X-Carerix-Secret": "first"},
        {"X-Hook-Secret": "first\n"},  # only spaces and tabs are taken off
        {"X-Hook-Secret": "fïrst€"},  # not Latin-1 (a caller's own decoding): refused, not an encoding error
    )
    for headers in refused:
        with pytest.raises(AuthenticationError) as excinfo:
            auth.verify(body, headers)
        assert excinfo.value.detail == "missing or wrong X-Hook-Secret header"
    with pytest.raises(AuthenticationError) as excinfo:
        auth.verify(body, [("X-Hook-Secret", "first"), ("x-hook-secret", "first")])
    assert excinfo.value.detail == "more than one X-Hook-Secret header"
    with pytest.raises(AuthenticationError):  # a configured newline is not whitespace taken off either
        ReceiverAuth(["nl\n"]).verify(body, {"X-Carerix-Secret": "nl"})
    insecure = ReceiverAuth([], insecure=True)
    assert (insecure.enabled, insecure.has_secrets, insecure.has_static_keys) == (False, False, False)
    assert ReceiverAuth([], keys_per_application=True).enabled


# -- poison events: 4xx naming the field, never 503 ---------------------------------------------------------------

PERSONAL = "Jane Marker-" + uuid.uuid4().hex[:8]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"time": "9999-12-31T23:00:00-05:00"}, "time"),
        ({"time": "0001-01-01T00:00:00+05:00"}, "time"),
        ({"id": "poison\u0000id"}, "id"),
        ({"type": "cremployee\u0000:updated"}, "type"),
        ({"tenant": "demo\u0000"}, "tenant"),
        ({"webhookId": "\u0000"}, "webhookId"),
    ],
)
def test_poison_event_is_422_naming_the_field_and_nothing_leaks(
    url: str, store: EventStore, caplog: pytest.LogCaptureFixture, overrides: dict[str, str], field: str
) -> None:
    body = json.loads(event_body())
    body["data"]["name"] = PERSONAL
    body.update(overrides)
    with caplog.at_level(logging.DEBUG):
        response = post(url, json.dumps(body).encode())
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert store.events_after(0) == []
    assert post(url, event_body()).status_code == 201  # the receiver is fine afterwards
    assert PERSONAL not in caplog.text


def test_event_the_database_refuses_is_422_naming_the_id_and_the_group_is_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A constraint the event violates (here a trigger) is the event's fault: 4xx, its id named, no values."""
    import sqlite3

    path = tmp_path / "events.db"
    with EventStore(f"sqlite:///{path}") as setup:
        setup.ping()  # schema in place
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON carerix_events WHEN NEW.tenant = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused tenant'); END"
    )
    conn.commit()
    conn.close()
    base, stop = start_receiver(f"sqlite:///{path}", SECRET)
    bad_id = "refused-" + uuid.uuid4().hex
    bad = json.loads(event_body(bad_id, tenant="refused"))
    bad["data"]["name"] = PERSONAL
    good = [event_body() for _ in range(20)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{base}/events", content=b, headers=HEADERS)
                    for b in [*good[:10], json.dumps(bad).encode(), *good[10:]]
                )
            )

    try:
        with caplog.at_level(logging.DEBUG):
            responses = asyncio.run(send_all())
    finally:
        stop()
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 20 and statuses[10] == 422, statuses
    assert bad_id in responses[10].json()["detail"]
    assert PERSONAL not in caplog.text and "parameters" not in caplog.text
    with EventStore(f"sqlite:///{path}") as check:
        assert len(check.events_after(0)) == 20


# -- the SQLite file removed or replaced under a running receiver -------------------------------------------------


@pytest.mark.parametrize("how", ["file-removed", "file-replaced", "directory-removed"])
def test_sqlite_file_removed_or_replaced_is_503_and_reported(tmp_path: Path, how: str) -> None:
    import shutil

    directory = tmp_path / "store"
    path = directory / "events.db"
    base, stop = start_receiver(f"sqlite:///{path}", SECRET)
    try:
        assert post(base, event_body()).status_code == 201
        if how == "file-removed":
            path.unlink()
        elif how == "file-replaced":
            shutil.copy(path, tmp_path / "copy.db")
            (tmp_path / "copy.db").replace(path)  # same content, another file
        else:
            shutil.rmtree(directory)
        response = post(base, event_body())
        assert response.status_code == 503, response.text
        cause = "file_replaced" if how == "file-replaced" else "file_removed"
        assert response.json()["cause"] == cause
        health = httpx.get(f"{base}/health", timeout=30)
        assert health.status_code == 503
        reason = (
            "the SQLite event store file was removed while in use; restore it and restart"
            if how != "file-replaced"
            else "the SQLite event store file was replaced while in use (another file "
            "is at its path now); restart to use it"
        )
        assert (health.json()["reason"], health.json()["cause"]) == (reason, cause)
        # Only a restart opens the file now at the path: liveness fails so an orchestrator restarts it.
        live = httpx.get(f"{base}/health/live", timeout=30)
        assert live.status_code == 503
        assert live.json() == {"status": "restart needed", "cause": cause, "reason": reason}
    finally:
        stop()


# -- /health: would a write succeed now? --------------------------------------------------------------------------


def test_health_is_503_while_the_write_lock_is_held_elsewhere(
    url: str, store_url: str, store: EventStore
) -> None:
    store.ping()
    if store_url.startswith("sqlite"):
        import sqlite3

        holder: Any = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        release = lambda: holder.execute("ROLLBACK")  # noqa: E731
    else:
        import psycopg

        from airflow_provider_carerix.store.sessions import _PG_INSERT_LOCK

        holder = psycopg.connect(store_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", (_PG_INSERT_LOCK,))
        release = lambda: holder.execute("SELECT pg_advisory_unlock(%s)", (_PG_INSERT_LOCK,))  # noqa: E731
    try:
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 503
        assert (health.json()["cause"], health.json()["checked"]) == ("locked", "probe")
        assert httpx.get(f"{url}/health/live", timeout=30).status_code == 200
    finally:
        release()
        holder.close()
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert store.events_after(0) == []  # the probe stored no event


# -- smaller ones ---------------------------------------------------------------------------------------------------


def test_same_id_different_body_warns_with_both_hashes_and_keeps_the_first(
    url: str, store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    first, second = event_body("same"), event_body("same", tenant="other-" + PERSONAL)
    with caplog.at_level(logging.WARNING):
        assert post(url, first).status_code == 201
        assert post(url, second).status_code == 200
        assert post(url, first).status_code == 200  # same body again: no warning
    warnings = [r.getMessage() for r in caplog.records if "different body" in r.getMessage()]
    assert len(warnings) == 1
    assert hashlib.sha256(first).hexdigest()[:16] in warnings[0]
    assert hashlib.sha256(second).hexdigest()[:16] in warnings[0]
    assert "same" in warnings[0] and PERSONAL not in caplog.text
    [stored] = store.events_after(0)
    assert stored.raw.encode() == first


def test_two_secret_headers_are_refused(url: str, store: EventStore) -> None:
    for values in ((SECRET, "wrong"), (SECRET, SECRET), ("wrong", SECRET)):
        headers = [("Content-Type", "application/json"), *(("X-Carerix-Secret", v) for v in values)]
        response = httpx.post(f"{url}/events", content=event_body(), headers=headers, timeout=30)
        assert response.status_code == 401, values
    assert store.events_after(0) == []


def test_surrounding_whitespace_is_never_part_of_the_secret(url: str, store: EventStore) -> None:
    body = event_body()
    for value in (f"  {SECRET}", f"{SECRET}  ", f"\t{SECRET} \t", f"{SECRET[:5]} {SECRET[5:]}"):
        head = (
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"X-Carerix-Secret:"
            + value.encode()
            + b"\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        answer = _raw_http(url, head + body)
        expected = b"HTTP/1.1 401" if " " in value.strip() else b"HTTP/1.1 201"
        assert answer.startswith(expected), (value, answer[:40])
        body = event_body()


def test_too_deeply_nested_json_says_so(url: str, store: EventStore) -> None:
    body = json.loads(event_body())
    body["data"]["deep"] = "@"
    text = json.dumps(body).replace('"@"', "[" * 250 + "]" * 250)
    response = post(url, text.encode())
    assert response.status_code == 422
    assert "nested too deeply" in response.json()["detail"]
    shallow = json.dumps(body).replace('"@"', "[" * 150 + "]" * 150)
    assert post(url, shallow.encode()).status_code == 201


def test_compressed_body_is_415_with_a_clear_message(url: str, store: EventStore) -> None:
    import gzip

    response = post(url, gzip.compress(event_body()), {**HEADERS, "Content-Encoding": "gzip"})
    assert response.status_code == 415
    assert "Content-Encoding" in response.json()["detail"]
    assert post(url, event_body(), {**HEADERS, "Content-Encoding": "identity"}).status_code == 201


def test_purge_with_an_absurd_duration_is_a_clean_error(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("purge", "--older-than", "1000000000w", "--store", store_url) == 2
    err = capsys.readouterr().err
    assert "too large" in err and "Traceback" not in err


# -- retention: replays of purged events, batched purge, space returned ---------------------------------------------


def _age_all_rows(store_url: str, when: str = "2020-01-02 00:00:00") -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE carerix_events SET received_at = :when"), {"when": when})
    engine.dispose()


def test_signed_replay_after_purge_is_refused(url: str, store_url: str, store: EventStore) -> None:
    replayed = event_body("purged-1", time="2020-01-01T00:00:00Z")
    kept = event_body("kept-newest", time="2020-01-01T00:00:01Z")
    assert post(url, replayed).status_code == 201
    assert post(url, kept).status_code == 201
    _age_all_rows(store_url)
    assert store.purge(timedelta(days=30)) == 1  # the newest is always kept
    response = post(url, replayed)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "time" and "purge" in response.json()["detail"]
    assert post(url, kept).status_code == 200  # still stored: an ordinary duplicate
    now = datetime.now(timezone.utc).isoformat()
    assert post(url, event_body(time=now)).status_code == 201  # a current event
    assert next(e.event_id for e in store.events_after(0)) == "kept-newest"


def test_purge_is_batched_and_returns_space_on_sqlite(tmp_path: Path) -> None:
    import sqlalchemy as sa

    path = tmp_path / "events.db"
    store_url = f"sqlite:///{path}"
    filler = "x" * 2000
    with EventStore(store_url) as store:
        for start in range(0, 3000, 500):
            items = []
            for n in range(start, start + 500):
                raw = event_body(f"e{n}", tenant=None, data={"entityId": "1", "note": filler})
                items.append((raw, EventPayload.model_validate_json(raw)))
            store.insert_many(items)
        _age_all_rows(store_url)
        before = path.stat().st_size
        deletes: list[int] = []
        sa.event.listen(
            store._engine,
            "after_cursor_execute",
            lambda conn, cur, statement, *rest: (
                deletes.append(cur.rowcount) if statement.lstrip().upper().startswith("DELETE") else None
            ),
        )
        assert store.purge(timedelta(days=30), batch_size=400) == 2999
        assert len(deletes) >= 8 and max(deletes) <= 400
        assert store.last_sequence() == 3000
    after = path.stat().st_size
    assert after < before / 4, (before, after)


# -- the standalone server's limits for unauthenticated clients ---------------------------------------------------


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open for ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                return data
            data += part
    except TimeoutError:
        return None
    except ConnectionResetError:
        return data


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Any]:
    process = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}",
        secrets=[SECRET],
        log_dir=tmp_path,
        extra_args=[
            "--header-timeout",
            "1",
            "--idle-timeout",
            "1",
            "--max-connections",
            "20",
            # Bodies in these tests stay incomplete on purpose: no deadline of their own interferes.
            "--body-timeout",
            "60",
            "--min-body-rate",
            "0",
        ],
    )
    process.store_url = f"sqlite:///{tmp_path / 'events.db'}"  # type: ignore[attr-defined]
    yield process
    process.stop()


def test_never_ending_request_head_is_refused_without_being_buffered(limited: Any) -> None:
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Carerix-Secret: {SECRET}\r\nX-Pad: ".encode()
    )
    # A header that never ends: the server answers once the head passes its limit and stops reading.
    assert _raw_http(limited.url, head, iter([b"a" * 8192] * 64)).startswith(b"HTTP/1.1 431")
    assert post(limited.url, event_body()).status_code == 201  # ordinary requests unaffected


def test_half_open_connections_are_closed_after_the_header_timeout(limited: Any) -> None:
    silent = _connect(limited.url)
    partial = _connect(limited.url)
    partial.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    try:
        assert _closed_within(silent, 15) is not None
        assert _closed_within(partial, 15) is not None
    finally:
        silent.close()
        partial.close()


def test_idle_keep_alive_connections_are_closed(limited: Any) -> None:
    sock = _connect(limited.url)
    try:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _closed_within(sock, 15)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_idle_connection_outlives_the_senders_pool(tmp_path: Path) -> None:
    """The server keeps an idle keep-alive connection open longer than a sender's pool keeps it (httpx, like
    Node, 5 s), so the sender retires it first: a server closing it while the sender reuses it would lose that
    request in flight (``ReadError``). uvicorn's own default is exactly those 5 s."""
    pool_expiry = httpx.Limits().keepalive_expiry
    assert pool_expiry is not None
    base, stop = start_receiver(f"sqlite:///{tmp_path / 'events.db'}", SECRET)
    sock = _connect(base)
    try:
        request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request)
        answer = b""
        while b'"alive"' not in answer:
            part = sock.recv(65536)
            assert part, answer
            answer += part
        assert answer.startswith(b"HTTP/1.1 200")
        # Idle for as long as the sender's pool would still reuse it, and a second more.
        assert _closed_within(sock, pool_expiry + 1) is None, "the server closed an idle connection first"
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
        stop()


def test_idle_connections_make_room_and_busy_ones_are_kept(tmp_path: Path) -> None:
    """At the connection limit (20 here), a new connection closes the one that waited longest without a request;
    when every connection is busy with a request, the new one gets 503 and is closed."""
    limited = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}",
        secrets=[SECRET],
        log_dir=tmp_path,
        extra_args=["--max-connections", "20", "--body-timeout", "60", "--min-body-rate", "0"],
    )
    try:
        _room_made_and_busy_kept(limited)
    finally:
        limited.stop()
    assert (
        "Closed 1 idle connection(s) that sent no request, to admit new ones (limit 20 open)" in limited.log
    )


def _room_made_and_busy_kept(limited: Any) -> None:
    idle = [_connect(limited.url) for _ in range(20)]
    try:
        time.sleep(0.3)
        # httpx's connection is the 21st: the oldest idle one makes room, nothing gets 503.
        with httpx.Client(limits=httpx.Limits(max_connections=1)) as client:
            response = client.post(f"{limited.url}/events", content=event_body(), headers=HEADERS)
        assert response.status_code == 201
        assert _closed_within(idle[0], 5) is not None  # the oldest idle connection went first
        assert all(_closed_within(sock, 0.01) is None for sock in idle[1:])  # the others are kept
    finally:
        for sock in idle:
            sock.close()
    # Busy: an authenticated request whose body is still coming (no deadline passes within the test).
    time.sleep(0.3)  # the closed ones are gone from the server's count
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Carerix-Secret: {SECRET}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    busy = [_connect(limited.url) for _ in range(20)]
    try:
        for sock in busy:
            sock.sendall(head)
        time.sleep(0.3)
        extra = _connect(limited.url)
        answer = _closed_within(extra, 15)
        extra.close()
        assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 15
    while httpx.get(f"{limited.url}/health", timeout=30).status_code != 200:
        assert time.monotonic() < deadline


def test_x_forwarded_for_is_believed_only_from_configured_proxies(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    headers = {**HEADERS, "X-Carerix-Secret": "wrong", "X-Forwarded-For": "203.0.113.66"}
    for extra, expected in (([], "127.0.0.1"), (["--trusted-proxy", "127.0.0.1"], "203.0.113.66")):
        process = start_receiver_process(store_url, secrets=[SECRET], log_dir=tmp_path, extra_args=extra)
        try:
            assert post(process.url, event_body(), headers).status_code == 401
        finally:
            process.stop()
        [line] = [ln for ln in process.log.splitlines() if "Rejected Carerix delivery" in ln]
        assert f"from {expected}:" in line, line
