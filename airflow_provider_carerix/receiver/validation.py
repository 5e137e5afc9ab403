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
import re
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from airflow_provider_carerix.definitions.event_types import EventTypeError, parse_event_type
from airflow_provider_carerix.definitions.models import EventPayload

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

DEFAULT_MAX_BODY = 1024 * 1024
#: The largest request head (request line and headers) in bytes: Carerix sends well under 2 KiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: Seconds a body has to arrive in full once the request head is in (Carerix's bodies are a few hundred bytes).
DEFAULT_BODY_TIMEOUT = 10.0
#: Bytes per second a body must keep up with, after :data:`BODY_RATE_GRACE` seconds (0: no minimum rate).
DEFAULT_MIN_BODY_RATE = 1024
BODY_RATE_GRACE = 1.0
#: No Carerix event is older; an earlier ``time`` is a client's mistake (or year 0001).
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: How far ahead of this receiver's clock an event's ``time`` may be (clock skew, generously).
MAX_TIME_AHEAD = timedelta(hours=24)
_ID_MAX = 255
# A date first: pydantic would read "1700000000" (or a number) as seconds since 1970.
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Only a number with an exponent of 3 digits or more, or of 300 digits, can be beyond a double's range: a cheap
# scan of the raw body for such a number token (hex ids like "9e461" are not); what it finds is then checked on
# the parsed values (the scan may also find one inside a string). Two patterns: one alternation is slower.
_MAYBE_HUGE = (
    re.compile(rb"[:,\[]\s*-?[0-9]+(?:\.[0-9]+)?[eE]\+?0*[0-9]{3}"),
    re.compile(rb"[0-9]{300}"),
)
_FLOAT_MAX = sys.float_info.max
_POSITION = re.compile(r"line (\d+) column (\d+)")
# The parser points at the N of NaN, or at the I after the sign of -Infinity: the two characters from there.
_NOT_A_NUMBER = re.compile(r".?-?(NaN|Infinity)")
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "datetime", "list", "dict"})


class DeliveryRejected(Exception):
    """A delivery the receiver will not store; ``status_code`` is the answer, ``field`` the culprit if any."""

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field


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


def _field_of(error: dict[str, Any]) -> str:
    # Unions add the member that failed ("str", "int", "function-after[...]") to loc: not a field name.
    loc = [
        str(part) for part in error.get("loc", ()) if str(part) not in _UNION_TAGS and "[" not in str(part)
    ]
    return ".".join(loc) or "body"


def parse_event(body: bytes, *, now: datetime | None = None) -> EventPayload:
    """The body as a :class:`EventPayload`, or :class:`DeliveryRejected` naming what is wrong and where."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeliveryRejected(400, f"body is not UTF-8 encoded JSON (byte {exc.start})") from None
    try:
        document = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise _not_json(text, str(exc)) from None
    if not isinstance(document, (dict, list)) or _MAYBE_HUGE[0].search(body) or _MAYBE_HUGE[1].search(body):
        _check_number_range(document)
    if not isinstance(document, dict):
        raise DeliveryRejected(422, "a Carerix event is a JSON object", "body")
    raw_time = document.get("time")
    if raw_time is not None and not (isinstance(raw_time, str) and _ISO_DATE.match(raw_time)):
        raise DeliveryRejected(
            422, "time: expected an ISO 8601 date and time as a string, e.g. 2024-02-14T14:24:40Z", "time"
        )
    try:
        event = EventPayload.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = _field_of(first)
        raise DeliveryRejected(422, f"{field}: {first.get('msg', 'invalid')}", field) from None
    try:
        parse_event_type(event.type)
    except EventTypeError:
        raise DeliveryRejected(
            422, "type: expected <entity>:<action>, e.g. cremployee:updated", "type"
        ) from None
    for name, value in (
        ("id", event.id),
        ("type", event.type),
        ("tenant", event.tenant),
        ("applicationId", event.application_id),
        ("webhookId", event.webhook_id),
        ("data.entityId", None if event.data is None else event.data.entity_id),
    ):
        if value is not None:
            _check_identifier(name, str(value))
    _check_time(event, now or datetime.now(timezone.utc))
    return event


def _not_json(text: str, reason: str) -> DeliveryRejected:
    if "recursion limit" in reason:
        # Valid JSON, but deeper than the parser goes: say so, "not valid JSON" would mislead.
        return DeliveryRejected(422, "body: JSON nested too deeply (more than about 200 levels)", "body")
    where = _POSITION.search(reason)
    if where is None:
        return DeliveryRejected(400, "body is not valid JSON")
    line, column = int(where.group(1)), int(where.group(2))
    lines = text.split("\n", line)
    at = lines[line - 1][max(0, column - 2) :] if len(lines) >= line else ""
    hint = ": NaN and Infinity are not JSON numbers" if _NOT_A_NUMBER.match(at) else ""
    return DeliveryRejected(400, f"body is not valid JSON (at {where.group(0)}){hint}")


def _check_number_range(document: Any) -> None:
    """A number a double cannot hold (``1e999``, 400 digits) is refused with its path, not read as infinity."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(
                (f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value)
            )
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not -_FLOAT_MAX <= value <= _FLOAT_MAX
        ):
            field = printable(path)[:200] or "body"
            raise DeliveryRejected(
                422, f"{field}: number outside the range of a double (about ±1.8e308)", field
            )


def _check_identifier(name: str, text: str) -> None:
    if len(text) > _ID_MAX:
        raise DeliveryRejected(422, f"{name}: longer than {_ID_MAX} characters", name)
    if not text.isprintable():
        char = next(c for c in text if not c.isprintable())
        raise DeliveryRejected(
            422,
            f"{name}: contains the non-printable character U+{ord(char):04X} (a control, format or separator character)",
            name,
        )
    if text != text.strip():
        raise DeliveryRejected(422, f"{name}: starts or ends with whitespace", name)


def printable(text: str) -> str:
    """``text`` with each character that is not printable escaped (``\\n``, ``\\x1b``, ``\\u2028``): one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _check_time(event: EventPayload, now: datetime) -> None:
    """Naive times are read as UTC; the store keeps UTC, within a plausible window around now."""
    time = event.time
    if time.tzinfo is None:
        time = time.replace(tzinfo=timezone.utc)
    try:
        utc = time.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        # Year 9999 west of UTC (or 0001 east of it) has no UTC equivalent: no store can keep it.
        raise DeliveryRejected(
            422, "time: out of the representable range once converted to UTC", "time"
        ) from None
    if utc < EARLIEST_TIME:
        raise DeliveryRejected(
            422,
            f"time: before {EARLIEST_TIME.isoformat().replace('+00:00', 'Z')}, not a Carerix event's time",
            "time",
        )
    if utc > now + MAX_TIME_AHEAD:
        hours = int(MAX_TIME_AHEAD.total_seconds() // 3600)
        raise DeliveryRejected(422, f"time: more than {hours} hours ahead of the receiver's clock", "time")


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
