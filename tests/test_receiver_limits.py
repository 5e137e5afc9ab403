"""The receiver's body-size limit at its boundary: exactly the limit is accepted, one byte more is refused.

A real receiver on loopback; the body arrives once with a ``Content-Length`` (refused from the header) and
once chunked (refused while reading), so both checks are pinned to ``>``, not ``>=``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_carerix.receiver.validation import (
    DeliveryRejected,
    check_content_encoding,
    check_declared_length,
    is_json_media_type,
    read_body,
)
from airflow_provider_carerix.store import EventStore
from tests.fixtures.receiver import start_receiver

SECRET = "limits-" + uuid.uuid4().hex
HEADERS = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}
LIMIT = 4096


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, EventStore]]:
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    url, stop = start_receiver(store_url, SECRET, max_body=LIMIT, verify_signatures=False)
    store = EventStore(store_url)
    try:
        yield url, store
    finally:
        stop()
        store.close()


def body_of_size(size: int) -> tuple[str, bytes]:
    """A valid event padded with trailing whitespace (still valid JSON) to exactly ``size`` bytes."""
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "id": event_id,
            "time": "2024-02-14T14:24:40Z",
            "type": "cremployee:updated",
            "applicationId": "app-1",
            "webhookId": "wh-1",
            "tenant": "demo",
            "data": {"entityId": "1"},
        }
    ).encode()
    assert len(body) <= size
    return event_id, body + b" " * (size - len(body))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_stored_and_one_byte_more_is_413(
    receiver: tuple[str, EventStore], chunked: bool
) -> None:
    url, store = receiver

    def post(body: bytes) -> httpx.Response:
        # A generator makes httpx send the body chunked, without a Content-Length.
        content = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body
        return httpx.post(f"{url}/events", content=content, headers=HEADERS, timeout=30)

    at_limit_id, at_limit = body_of_size(LIMIT)
    assert len(at_limit) == LIMIT
    assert post(at_limit).status_code == 201
    over_id, over = body_of_size(LIMIT + 1)
    response = post(over)
    assert response.status_code == 413
    assert f"larger than {LIMIT} bytes" in response.text
    assert [e.event_id for e in store.events_after(0)] == [at_limit_id]
    assert store.event_by_id(over_id) is None


# -- the checks before and while reading, as the receiver (and any other server) calls them --------------


def test_declared_length_is_refused_from_the_header_alone() -> None:
    check_declared_length(None, LIMIT)  # chunked: checked while reading
    check_declared_length(str(LIMIT), LIMIT)
    with pytest.raises(DeliveryRejected) as info:
        check_declared_length(str(LIMIT + 1), LIMIT)
    assert (info.value.status_code, info.value.detail) == (413, f"body larger than {LIMIT} bytes")
    with pytest.raises(DeliveryRejected) as info:
        check_declared_length("12 bytes", LIMIT)
    assert (info.value.status_code, info.value.detail) == (400, "invalid Content-Length")


def test_reading_stops_at_the_first_chunk_past_the_limit() -> None:
    taken: list[int] = []

    async def chunks(sizes: list[int]) -> AsyncIterator[bytes]:
        for i, size in enumerate(sizes):
            taken.append(i)
            yield b"x" * size

    assert asyncio.run(read_body(chunks([LIMIT - 1, 1]), LIMIT)) == b"x" * LIMIT
    assert asyncio.run(read_body(chunks([]), LIMIT)) == b""
    taken.clear()
    with pytest.raises(DeliveryRejected) as info:
        asyncio.run(read_body(chunks([LIMIT, 1, 10, 10]), LIMIT))
    assert (info.value.status_code, info.value.detail) == (413, f"body larger than {LIMIT} bytes")
    assert taken == [0, 1]  # the rest of the body is never read


@pytest.mark.parametrize(
    ("content_encoding", "refused"),
    [
        (None, False),
        ("identity", False),
        (" Identity , ", False),
        ("", False),
        ("gzip", True),
        ("identity, br", True),
    ],
)
def test_only_uncompressed_bodies_are_read(content_encoding: str | None, refused: bool) -> None:
    if not refused:
        check_content_encoding(content_encoding)
        return
    with pytest.raises(DeliveryRejected) as info:
        check_content_encoding(content_encoding)
    assert info.value.status_code == 415
    assert info.value.detail.startswith("Content-Encoding is not supported: send the JSON body uncompressed")


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        (' Application/JSON ; Charset="UTF-8"', True),
        ("application/json; charset=utf8; profile=x", True),
        ("application/cloudevents+json", True),
        ("application/problem+json;charset=utf-8", True),
        ("application/json; foo", True),
        (None, False),
        ("", False),
        ("application/json; charset=latin-1", False),
        ("application/json; charset=latin-1=utf-8", False),  # the value is all after the first "="
        ("application/json; charset=Xutf-8X", False),  # only quotes are taken off
        ("application/jsonp", False),
        ("text/json", False),
        ("text/x+json", False),
        ("application/json+xml", False),
    ],
)
def test_json_media_types(content_type: str | None, json: bool) -> None:
    assert is_json_media_type(content_type) is json
