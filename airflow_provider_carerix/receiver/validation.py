"""What the receiver accepts as a delivery: media type, size, timing, strict JSON, field limits.

Every refusal is a :class:`DeliveryRejected` carrying the HTTP status and, when one field is at fault, its
name: Carerix (or whoever operates the webhook) must be able to tell from the answer what to fix, and a 4xx
tells Carerix that retrying the same delivery cannot help. Messages never repeat payload values.

Strict means what another JSON reader downstream would choke on or misread is refused here, before it is
stored and acknowledged:

* **JSON as RFC 8259 has it**: no ``NaN``/``Infinity`` (Python's ``json`` writes them, nothing else reads
  them), no number beyond the range of a double (``1e999`` would be read as infinity);
* **identifiers** (``id``, ``type``, ``tenant``, ``applicationId``, ``webhookId``, ``data.entityId``) of printable
  characters only, without surrounding whitespace: they go into logs, file names and SQL filters, and an id
  with a line break can forge a log line;
* **``time``** an ISO 8601 date and time (a number would be read as seconds since 1970) within
  :data:`EARLIEST_TIME` and :data:`MAX_TIME_AHEAD` from now: a time in year 9999 would never be purged.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

from airflow_provider_carerix.delivery.payload import (
    DEFAULT_MAX_BODY,
    EARLIEST_TIME,
    MAX_TIME_AHEAD,
    DeliveryRejected,
    parse_event,
    printable,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MIN_BODY_RATE",
    "EARLIEST_TIME",
    "MAX_TIME_AHEAD",
    "ClientGone",
    "DeliveryRejected",
    "check_content_encoding",
    "check_declared_length",
    "is_json_media_type",
    "parse_event",
    "printable",
    "read_body",
    "receive_body",
]

#: The largest request head (request line and headers) in bytes: Carerix sends well under 2 KiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: Seconds a body has to arrive in full once the request head is in (Carerix's bodies are a few hundred bytes).
DEFAULT_BODY_TIMEOUT = 10.0
#: Bytes per second a body must keep up with, after :data:`BODY_RATE_GRACE` seconds (0: no minimum rate).
DEFAULT_MIN_BODY_RATE = 1024
BODY_RATE_GRACE = 1.0


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, UTF-8 or no charset."""
    if not content_type:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def check_content_encoding(content_encoding: str | None) -> None:
    """Compressed bodies are refused with a clear 415 rather than misread as "not valid JSON".

    Decoding them would need a second size limit (a small gzip body can expand a thousandfold) for no gain:
    Carerix sends plain JSON.
    """
    if content_encoding is None:
        return
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    if any(c != "identity" for c in codings):
        raise DeliveryRejected(
            415, "Content-Encoding is not supported: send the JSON body uncompressed (no gzip/deflate/br)"
        )


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse from the header alone when the announced body is too large (nothing is read)."""
    if content_length is None:
        return
    value = content_length.strip(" \t")
    if not (value.isascii() and value.isdigit()):
        raise DeliveryRejected(400, "invalid Content-Length")
    if int(value) > limit:
        raise DeliveryRejected(413, f"body larger than {limit} bytes")


async def read_body(stream: AsyncIterable[bytes], limit: int) -> bytes:
    """Read at most ``limit`` bytes and stop: a huge body is refused without being received in full."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise DeliveryRejected(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ClientGone(Exception):
    """The client disconnected before its body was complete: nobody is left to answer."""


async def receive_body(
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    limit: int,
    *,
    timeout: float = DEFAULT_BODY_TIMEOUT,
    min_rate: int = DEFAULT_MIN_BODY_RATE,
) -> bytes:
    """The request body from ASGI ``receive``, bounded in size, total time and rate.

    Works wherever the app runs (standalone or inside Airflow's API server, whose server settings are not
    ours): the body must be complete within ``timeout`` seconds, and after :data:`BODY_RATE_GRACE` seconds
    keep up with ``min_rate`` bytes per second (so a trickle is cut off in seconds, not at the deadline).
    Raises ``DeliveryRejected`` 408 (too slow) or 413 (too large, the rest is never read), ``ClientGone``.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        due = min(deadline, start + BODY_RATE_GRACE + size / min_rate) if min_rate > 0 else deadline
        try:
            message = await _receive_by(receive, due, loop)
        except asyncio.TimeoutError:
            if due < deadline:
                raise DeliveryRejected(
                    408, f"body arriving slower than {min_rate} bytes per second", "body"
                ) from None
            raise DeliveryRejected(408, f"body not complete within {timeout:g} s", "body") from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise DeliveryRejected(413, f"body larger than {limit} bytes")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


if sys.version_info >= (3, 11):

    async def _receive_by(
        receive: Callable[[], Awaitable[Mapping[str, Any]]], when: float, loop: asyncio.AbstractEventLoop
    ) -> Mapping[str, Any]:
        async with asyncio.timeout_at(when):  # a timer, no extra task
            return await receive()

else:  # pragma: no cover - Python 3.10

    async def _receive_by(
        receive: Callable[[], Awaitable[Mapping[str, Any]]], when: float, loop: asyncio.AbstractEventLoop
    ) -> Mapping[str, Any]:
        return await asyncio.wait_for(receive(), max(0.0, when - loop.time()))
