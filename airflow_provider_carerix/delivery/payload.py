"""One delivery body, strictly parsed into an event: what the receiver and recovery both accept.

Every refusal is a :class:`DeliveryRejected` carrying the HTTP status and, when one field is at fault, its
name. Messages never repeat payload values. Strict means what another JSON reader downstream would choke on or
misread is refused before it is stored: JSON as RFC 8259 has it (no ``NaN``/``Infinity``, no number beyond a
double), identifiers of printable characters without surrounding whitespace (an id with a line break can forge
a log line), ``time`` an ISO 8601 date and time within :data:`EARLIEST_TIME` and :data:`MAX_TIME_AHEAD` from now.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from airflow_provider_carerix.definitions.event_types import EventTypeError, parse_event_type
from airflow_provider_carerix.definitions.models import EventPayload

log = logging.getLogger(__name__)


DEFAULT_MAX_BODY = 1024 * 1024


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


def _field_of(error: Mapping[str, Any]) -> str:
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
