"""The receiver as an internet-facing door, probed from outside against a real ``carerix-receiver serve``.

What an unauthenticated client can hold (connections, a trickled body, a huge head), what it can make the
receiver store or log, whether a signature can be sidestepped, and whether ``/health`` tells the truth about
the disk. Every test talks to the server process over TCP, by hand where a polite client would not do what an
attacker does. The same door inside Airflow's API server: tests/test_receiver_api_server.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_carerix.store import EventStore
from tests.fixtures.receiver import ReceiverProcess, start_receiver_app, start_receiver_process

SECRET = "door-" + uuid.uuid4().hex
HEADERS = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}
NOW = datetime.now(timezone.utc)


def event(event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": event_id or str(uuid.uuid4()),
        "time": "2024-02-14T14:24:40Z",
        "type": "cremployee:updated",
        "applicationId": "app-1",
        "webhookId": "wh-1",
        "tenant": "demo",
        "data": {"entityId": "1", "changedFields": ["touser"]},
    }
    body.update(fields)
    return body


def body_of(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


# -- speaking HTTP by hand -----------------------------------------------------------------------------------------


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def connect(url: str) -> socket.socket:
    return socket.create_connection(_address(url), timeout=30)


def head(
    path: str = "/events", *, length: int | None = 1000, secret: str | None = SECRET, extra: str = ""
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: receiver", "Content-Type: application/json"]
    if secret is not None:
        lines.append(f"X-Carerix-Secret: {secret}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class Answer:
    """One HTTP response read off a socket: status, headers (lower-case names), body, and when it came."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, after: float) -> None:
        self.status, self.headers, self.body, self.after = status, headers, body, after

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, started: float, timeout: float = 30) -> Answer | None:
    """The next response on ``sock`` (None if the server closed without one)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return None
        data += part
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        part = sock.recv(65536)
        if not part:
            break
        rest += part
    return Answer(int(lines[0].split()[1]), headers, rest[:length], time.monotonic() - started)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/events"
) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", content=body, headers=HEADERS if headers is None else headers, timeout=30
    )


# -- the server under test -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """``carerix-receiver serve`` with its defaults (256 connections, 16 KiB heads, 10 s / 1 KiB/s bodies)."""
    home = tmp_path_factory.mktemp("door")
    process = start_receiver_process(f"sqlite:///{home / 'events.db'}", secrets=[SECRET], log_dir=home)
    process.store_url = f"sqlite:///{home / 'events.db'}"  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.fixture(scope="module")
def door_store(door: ReceiverProcess) -> Iterator[EventStore]:
    store = EventStore(door.store_url)  # type: ignore[attr-defined]
    yield store
    store.close()


def stored(store: EventStore, event_id: str) -> bool:
    return store.event_by_id(event_id) is not None


# -- 1. authenticated from the head, before any body --------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "extra", "field"),
    [
        (None, "", "X-Carerix-Secret"),
        ("wrong", "", "X-Carerix-Secret"),
        (SECRET, f"X-Carerix-Secret: {SECRET}\r\n", "X-Carerix-Secret"),
        (SECRET, "Cx-Signature: a\r\nCx-Signature: b\r\n", "Cx-Signature"),
    ],
    ids=["no-secret", "wrong-secret", "two-secrets", "two-signatures"],
)
def test_refused_from_the_head_at_once_without_reading_the_body(
    door: ReceiverProcess, secret: str | None, extra: str, field: str
) -> None:
    """1,000 body bytes announced, none sent: the 401 can only come from the head, and the door closes."""
    with connect(door.url) as sock:
        started = time.monotonic()
        sock.sendall(head(secret=secret, extra=extra))
        answer = read_answer(sock, started)
        assert answer is not None and answer.status == 401, answer and answer.body
        assert answer.after < 2.0  # not after a body deadline
        assert answer.json()["field"] == field
        assert answer.headers["connection"] == "close"
        assert closed_within(sock, 5)


def test_a_missing_signature_is_refused_from_the_head_once_a_key_is_recorded(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(store_url) as store:
        store.record_signing_key("app-1", _key_pair()[1])
    process = start_receiver_process(store_url, secrets=[SECRET], log_dir=tmp_path)
    try:
        with connect(process.url) as sock:
            started = time.monotonic()
            sock.sendall(head())  # the secret, no Cx-Signature, no body
            answer = read_answer(sock, started)
        assert answer is not None and answer.status == 401 and answer.after < 2.0
        assert answer.json()["field"] == "Cx-Signature"
        assert "signatures are required" in answer.json()["detail"]
    finally:
        process.stop()


# -- 1. a body within a deadline and at a minimum rate -------------------------------------------------------------


def trickle(sock: socket.socket, piece: bytes, interval: float, stop: threading.Event) -> threading.Thread:
    def send() -> None:
        while not stop.is_set():
            try:
                sock.sendall(piece)
            except OSError:
                return
            time.sleep(interval)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def test_a_trickled_body_is_cut_off_by_the_minimum_rate(door: ReceiverProcess) -> None:
    """One byte every 0.3 s is far below 1,024 bytes/s: 408 after the first second's grace, not after 10 s."""
    stop = threading.Event()
    try:
        with connect(door.url) as sock:
            started = time.monotonic()
            sock.sendall(head(length=5000))
            trickle(sock, b" ", 0.3, stop)
            answer = read_answer(sock, started, timeout=15)
    finally:
        stop.set()
    assert answer is not None and answer.status == 408
    assert answer.json() == {"detail": "body arriving slower than 1024 bytes per second", "field": "body"}
    assert answer.after < 5.0


def test_a_body_must_be_complete_within_the_deadline(tmp_path: Path) -> None:
    """Fast enough for any rate, never complete: 408 at the body deadline (2 s here)."""
    process = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}",
        secrets=[SECRET],
        log_dir=tmp_path,
        extra_args=["--body-timeout", "2", "--min-body-rate", "0"],
    )
    stop = threading.Event()
    try:
        with connect(process.url) as sock:
            started = time.monotonic()
            sock.sendall(head(length=500_000))
            trickle(sock, b" " * 100, 0.05, stop)
            answer = read_answer(sock, started, timeout=15)
        assert answer is not None and answer.status == 408
        assert answer.json()["detail"] == "body not complete within 2 s"
        assert 1.5 < answer.after < 6.0
    finally:
        stop.set()
        process.stop()


# -- 2. unauthenticated load does not starve deliveries ------------------------------------------------------------


def _timed_delivery(url: str, store: EventStore) -> float:
    """A real delivery on a fresh connection: answered 2xx and stored; returns how long it took."""
    body = body_of(event())
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/events", content=body, headers=HEADERS)
    took = time.monotonic() - started
    assert response.status_code == 201, (response.status_code, response.text)
    assert stored(store, json.loads(body)["id"])
    return took


def test_300_slow_unauthenticated_bodies_do_not_starve_a_delivery(
    door: ReceiverProcess, door_store: EventStore
) -> None:
    """Each sends its head (no secret) and one byte of body, then nothing: each is answered 401 and closed at
    once, so none holds one of the 256 connections while a real delivery arrives."""
    slow = [connect(door.url) for _ in range(300)]
    try:
        for sock in slow:
            sock.sendall(head(secret=None, length=100) + b"{")
        took = _timed_delivery(door.url, door_store)
        assert took < 3.0
        answers = [read_answer(sock, time.monotonic(), timeout=10) for sock in slow[:20]]
        assert {a.status for a in answers if a is not None} == {401}
    finally:
        for sock in slow:
            sock.close()


def test_1000_idle_connections_do_not_starve_a_delivery(
    door: ReceiverProcess, door_store: EventStore
) -> None:
    """1,000 connections that send nothing (the limit is 256): the delivery's connection takes the place of the
    one that waited longest, at once; the idle ones would otherwise hold every place for the 10 s head timeout."""
    idle = [connect(door.url) for _ in range(1000)]
    try:
        time.sleep(0.5)
        took = _timed_delivery(door.url, door_store)
        assert took < 3.0
    finally:
        for sock in idle:
            sock.close()


# -- 5. the request head: one limit, however it arrives --------------------------------------------------------------


def test_a_60_kb_head_sent_in_one_write_is_431(door: ReceiverProcess) -> None:
    with connect(door.url) as sock:
        started = time.monotonic()
        sock.sendall(head(length=2, extra=f"X-Pad: {'a' * 60_000}\r\n") + b"{}")
        answer = read_answer(sock, started)
    assert answer is not None and answer.status == 431
    assert answer.body == b"request head larger than 16384 bytes"


def test_a_large_head_behind_a_small_request_in_the_same_write_is_431(door: ReceiverProcess) -> None:
    """Pipelined: the large head arrives in the same read as the request before it, so the bytes counted per
    read miss part of it; the parser's count refuses it before any route (here one without a check of its own)
    sees it."""
    small = b"GET /health/live HTTP/1.1\r\nHost: receiver\r\n\r\n"
    large = f"GET /health/live HTTP/1.1\r\nHost: receiver\r\nX-Pad: {'a' * 20_000}\r\n\r\n".encode()
    answers = []
    with connect(door.url) as sock:
        started = time.monotonic()
        sock.sendall(small + large)
        while (answer := read_answer(sock, started)) is not None:
            answers.append((answer.status, answer.body))
    # The small request may or may not be answered before the connection is closed.
    assert answers[-1] == (431, b"request head larger than 16384 bytes"), answers
    assert [status for status, _ in answers[:-1]] in ([], [200])


def test_a_head_of_exactly_the_limit_is_read_and_one_byte_more_is_431(door: ReceiverProcess) -> None:
    body = body_of(event())
    pad = 16 * 1024 - len(head(length=len(body), extra="X-Pad: \r\n"))
    for extra, status in ((0, 201), (1, 431)):
        exact = head(length=len(body), extra=f"X-Pad: {'a' * (pad + extra)}\r\n")
        assert len(exact) == 16 * 1024 + extra
        with connect(door.url) as sock:
            started = time.monotonic()
            sock.sendall(exact + body)
            answer = read_answer(sock, started)
        assert answer is not None and answer.status == status, (extra, answer and answer.body)


# -- 5. no redirects --------------------------------------------------------------------------------------------


def test_no_redirect_for_a_trailing_slash(door: ReceiverProcess) -> None:
    response = post(door.url, body_of(event()), {**HEADERS, "Host": "evil.example"}, path="/events/")
    assert response.status_code == 404
    assert "location" not in response.headers
    assert httpx.get(f"{door.url}/events", timeout=30).status_code == 405


# -- 5. strict input ----------------------------------------------------------------------------------------------


def _raw(fields: dict[str, Any], **replace: str) -> bytes:
    """JSON text with placeholders replaced by what ``json.dumps`` cannot write (NaN, 1e999, ...)."""
    text = json.dumps(fields)
    for placeholder, token in replace.items():
        text = text.replace(f'"{placeholder}"', token)
    return text.encode()


STRICT_CASES = {
    "nan": (lambda i: _raw(event(i, data={"score": "@"}), **{"@": "NaN"}), 400, None),
    "minus-infinity": (lambda i: _raw(event(i, data={"score": "@"}), **{"@": "-Infinity"}), 400, None),
    "1e999": (lambda i: _raw(event(i, data={"score": "@"}), **{"@": "1e999"}), 422, "data.score"),
    "400-digits": (lambda i: _raw(event(i, data={"n": ["@"]}), **{"@": "9" * 400}), 422, "data.n.0"),
    "id-of-spaces": (lambda i: body_of(event("   ")), 422, "id"),
    "id-with-newline": (lambda i: body_of(event(i + "\n2026-01-01 CRITICAL forged")), 422, "id"),
    "id-with-escape": (lambda i: body_of(event(i + "\x1b[31m")), 422, "id"),
    "id-with-zero-width-space": (lambda i: body_of(event(i + "\u200b")), 422, "id"),
    "id-trailing-space": (lambda i: body_of(event(i + " ")), 422, "id"),
    "tenant-leading-space": (lambda i: body_of(event(i, tenant=" demo")), 422, "tenant"),
    "application-tab": (lambda i: body_of(event(i, applicationId="app-1\t")), 422, "applicationId"),
    "entity-line-separator": (
        lambda i: body_of(event(i, data={"entityId": "1\u2028"})),
        422,
        "data.entityId",
    ),
    "time-year-9999": (lambda i: body_of(event(i, time="9999-12-31T00:00:00Z")), 422, "time"),
    "time-year-0001": (lambda i: body_of(event(i, time="0001-01-01T00:00:00Z")), 422, "time"),
    "time-before-2000": (lambda i: body_of(event(i, time="1999-12-31T23:59:59Z")), 422, "time"),
    "time-2-days-ahead": (
        lambda i: body_of(event(i, time=(NOW + timedelta(days=2)).isoformat())),
        422,
        "time",
    ),
    "time-as-number": (lambda i: body_of(event(i, time=1700000000)), 422, "time"),
    "time-as-digits": (lambda i: body_of(event(i, time="1700000000")), 422, "time"),
}


@pytest.mark.parametrize("case", STRICT_CASES)
def test_strict_input_is_refused_naming_the_field(
    door: ReceiverProcess, door_store: EventStore, case: str
) -> None:
    make, status, field = STRICT_CASES[case]
    event_id = "strict-" + uuid.uuid4().hex
    response = post(door.url, make(event_id))
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer.get("field") == field
    assert (field or "not valid JSON") in answer["detail"]
    for candidate in (event_id, "   ", event_id + " "):
        assert not stored(door_store, candidate)


@pytest.mark.parametrize(
    "fields",
    [
        {"time": "2000-01-01T00:00:00Z"},
        {"time": (NOW + timedelta(hours=23)).isoformat()},
        {"time": "2024-02-14T14:24:40"},  # no zone: read as UTC
        {"data": {"score": 1.5e308, "entityId": 7}},
        {"tenant": "Zoë's agency"},
    ],
)
def test_plausible_input_at_the_edges_is_stored(
    door: ReceiverProcess, door_store: EventStore, fields: dict[str, Any]
) -> None:
    body = event(**fields)
    assert post(door.url, body_of(body)).status_code == 201
    assert stored(door_store, body["id"])


def test_one_of_each_framing_header(door: ReceiverProcess) -> None:
    body = body_of(event())
    headers = [("X-Carerix-Secret", SECRET), ("Content-Type", "application/json")]
    response = httpx.post(
        f"{door.url}/events",
        content=body,
        headers=[*headers, ("Content-Type", "text/plain")],
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["field"] == "Content-Type"


# -- 5. nothing a client sends forges a log line --------------------------------------------------------------


def test_no_client_value_starts_a_line_of_the_log(tmp_path: Path) -> None:
    """The issue's forgery: an id with a line break, sent again with another body, made the store's "different
    body" warning print a line of the client's choosing. Such an id is refused now; and the path, which uvicorn's
    access log prints, is percent-encoded there."""
    marker = "FORGED-" + uuid.uuid4().hex[:8]
    forged_line = f"2026-01-01 00:00:00,000 CRITICAL airflow_provider_carerix: {marker}"
    process = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}",
        secrets=[SECRET],
        log_dir=tmp_path,
        extra_args=["--access-log", "--log-level", "info"],
    )
    try:
        event_id = "x\n" + forged_line
        assert post(process.url, body_of(event(event_id))).status_code == 422
        assert post(process.url, body_of(event(event_id, tenant="other"))).status_code == 422
        with connect(process.url) as sock:
            path = "/health/live%0A" + forged_line.replace(" ", "%20")
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_answer(sock, time.monotonic()) is not None
    finally:
        process.stop()
    lines = process.log.splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01 00:00:00,000")]
    assert [line for line in lines if marker in line] == [
        line for line in lines if "uvicorn.access" in line and "%0A2026-01-01" in line
    ]


def test_each_log_record_of_the_standalone_receiver_is_one_line() -> None:
    """Whatever a message carries (a value from a client, should one ever reach it), the record stays one line;
    a traceback keeps its lines (the code writes those, not a client)."""
    import io
    import logging

    from airflow_provider_carerix.receiver.cli import OneLineFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.one-line")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("event %s stored", "x\nCRITICAL forged\r\x1b[2J\u2028")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING event x\\nCRITICAL forged\\r\\x1b[2J\\u2028 stored"
    assert lines[1] == "ERROR failed" and lines[2].startswith("Traceback")


# -- 3. signatures cannot be sidestepped ----------------------------------------------------------------------------


def _key_pair() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem.decode()


def _sign(private: Any, body: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return base64.b64encode(private.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


@pytest.fixture
def signed_store(tmp_path: Path) -> Iterator[tuple[EventStore, Any]]:
    private, pem = _key_pair()
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.record_signing_key("app-1", pem, "SHA256withRSA")
    yield store, private
    store.close()


def _signed_post(url: str, private: Any, fields: dict[str, Any], *, sign: bool = True) -> httpx.Response:
    body = body_of(event(**fields))
    headers = {**HEADERS, "Cx-Signature": _sign(private, body)} if sign else HEADERS
    return post(url, body, headers)


@pytest.mark.parametrize(
    ("application", "status", "field"),
    [
        ("app-1", 201, None),
        ("APP-1", 401, "applicationId"),
        ("App-1", 401, "applicationId"),
        ("app-1 ", 422, "applicationId"),
        ("app-2", 401, "applicationId"),
        ("", 401, "applicationId"),
        (None, 401, "applicationId"),
    ],
)
def test_once_a_key_is_recorded_deliveries_must_name_exactly_a_known_application(
    signed_store: tuple[EventStore, Any], application: str | None, status: int, field: str | None
) -> None:
    """Signed with app-1's key, the secret given: only a delivery naming exactly app-1 is stored."""
    store, private = signed_store
    running = start_receiver_app(_app(store))
    try:
        fields: dict[str, Any] = {"applicationId": application}
        response = _signed_post(running.url, private, fields)
        assert response.status_code == status, response.text
        assert response.json().get("field") == field
        assert len(store.events_after(0)) == (1 if status == 201 else 0)
    finally:
        running.stop()


def test_two_signatures_are_refused_even_before_any_key_is_recorded(tmp_path: Path) -> None:
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    running = start_receiver_app(_app(store))
    try:
        headers = [*HEADERS.items(), ("Cx-Signature", "a"), ("Cx-Signature", "b")]
        response = httpx.post(f"{running.url}/events", content=body_of(event()), headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["field"] == "Cx-Signature"
        assert post(running.url, body_of(event())).status_code == 201  # one (none) is fine: no key recorded
    finally:
        running.stop()
        store.close()


def test_allow_unsigned_applications_is_an_explicit_opt_out(signed_store: tuple[EventStore, Any]) -> None:
    store, private = signed_store
    running = start_receiver_app(_app(store, allow_unsigned_applications=True))
    try:
        assert _signed_post(running.url, private, {"applicationId": "app-2"}, sign=False).status_code == 201
        assert _signed_post(running.url, private, {"applicationId": None}, sign=False).status_code == 201
        # An application with a recorded key still needs its signature.
        assert _signed_post(running.url, private, {"applicationId": "app-1"}, sign=False).status_code == 401
        assert _signed_post(running.url, private, {"applicationId": "app-1"}).status_code == 201
        flags = sorted(str(e.signature_verified) for e in store.events_after(0))
        assert flags == ["False", "False", "True"]
    finally:
        running.stop()


def _app(store: EventStore, **kwargs: Any) -> Any:
    from airflow_provider_carerix.receiver import create_app

    return create_app(store, secrets=[SECRET], **kwargs)


# -- 4. /health tells the truth about the disk ------------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def _health(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{url}/health", timeout=30)
    return response.status_code, response.json()


def test_a_full_disk_is_named_in_answers_health_and_log_and_passes(
    small_volume: Path, tmp_path: Path
) -> None:
    process = start_receiver_process(
        f"sqlite:///{small_volume / 'events.db'}", secrets=[SECRET], log_dir=tmp_path
    )
    try:
        assert post(process.url, body_of(event())).status_code == 201
        _fill(small_volume / "filler")
        refused = post(process.url, body_of(event()))
        assert refused.status_code == 503 and refused.json()["cause"] == "disk_full"
        # Right after: the last write says it. Later (no write for 2 s): the probe's own commit finds it.
        status, health = _health(process.url)
        assert (status, health["cause"], health["checked"]) == (503, "disk_full", "last write")
        time.sleep(2.5)
        status, health = _health(process.url)
        assert (status, health["cause"], health["checked"]) == (503, "disk_full", "probe")
        assert "disk full" in health["reason"]
        (small_volume / "filler").unlink()
        assert post(process.url, body_of(event())).status_code == 201  # recovered by itself
        assert _health(process.url)[0] == 200
    finally:
        process.stop()
    assert "503 event store unavailable: disk full" in process.log
    assert "not ready" in process.log and "[disk_full]" in process.log


def _chattr(flag: str, *paths: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_a_store_opened_read_only_recovers_once_writable(tmp_path: Path) -> None:
    """Opened while the file was immutable, SQLite falls back to read-only: once the file is writable again the
    receiver reopens its connections by itself (it used to stay 503 until restarted)."""
    path = tmp_path / "events.db"
    with EventStore(f"sqlite:///{path}") as setup:
        setup.ping()
    if not _chattr("+i", path):
        pytest.skip("chattr +i not possible here (needs root and a file system that supports it)")
    try:
        process = start_receiver_process(f"sqlite:///{path}", secrets=[SECRET], log_dir=tmp_path)
        try:
            refused = post(process.url, body_of(event()))
            assert refused.status_code == 503 and refused.json()["cause"] == "read_only"
            status, health = _health(process.url)
            assert (status, health["cause"]) == (503, "read_only")
            assert httpx.get(f"{process.url}/health/live", timeout=30).status_code == 200
            assert _chattr("-i", path)
            deadline = time.monotonic() + 10
            while post(process.url, body_of(event())).status_code != 201:
                assert time.monotonic() < deadline, "still refused after the file became writable"
                time.sleep(0.2)
            assert _health(process.url)[0] == 200
        finally:
            process.stop()
    finally:
        _chattr("-i", path)


def test_an_answer_before_the_body_closes_the_connection(door: ReceiverProcess) -> None:
    """Any route that answers without reading the announced body (here Starlette's 405 for POST /health/live):
    the server closes the connection instead of waiting for a body nobody reads."""
    with connect(door.url) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        answer = read_answer(sock, started)
        assert answer is not None and answer.status == 405
        assert closed_within(sock, 3)
