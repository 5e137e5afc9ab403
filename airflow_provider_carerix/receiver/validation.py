"""What the receiver accepts as a delivery: media type, size, JSON shape, field limits.

Every refusal is a :class:`DeliveryRejected` carrying the HTTP status and, when one field is at fault, its
name: Carerix (or whoever operates the webhook) must be able to tell from the answer what to fix, and a 4xx
tells Carerix that retrying the same delivery cannot help. Messages never repeat payload values.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from datetime import timezone
from typing import Any

from pydantic import ValidationError

from airflow_provider_carerix.definitions.event_types import EventTypeError, parse_event_type
from airflow_provider_carerix.definitions.models import WebhookEvent

__all__ = [
    "DEFAULT_MAX_BODY",
    "DeliveryRejected",
    "check_content_encoding",
    "check_declared_length",
    "is_json_media_type",
    "parse_event",
    "read_body",
]

DEFAULT_MAX_BODY = 1024 * 1024
_ID_MAX = 255
_POSITION = re.compile(r"line \d+ column \d+")
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


def parse_event(body: bytes) -> WebhookEvent:
    """The body as a :class:`WebhookEvent`, or :class:`DeliveryRejected` naming what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DeliveryRejected(400, "body is not UTF-8 encoded JSON") from None
    try:
        event = WebhookEvent.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        for error in errors:
            if error.get("type") == "json_invalid":
                reason = str((error.get("ctx") or {}).get("error", ""))
                if "recursion limit" in reason:
                    # Valid JSON, but deeper than the parser goes: say so, "not valid JSON" would mislead.
                    raise DeliveryRejected(
                        422, "body: JSON nested too deeply (more than about 200 levels)", "body"
                    ) from None
                where = _POSITION.search(reason)
                raise DeliveryRejected(
                    400, "body is not valid JSON" + (f" (at {where.group(0)})" if where else "")
                ) from None
        first = errors[0]
        field = _field_of(first)
        if first.get("type") == "model_type" and not first.get("loc"):
            raise DeliveryRejected(422, "a Carerix event is a JSON object", "body") from None
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
        if value is None:
            continue
        text = str(value)
        if len(text) > _ID_MAX:
            raise DeliveryRejected(422, f"{name}: longer than {_ID_MAX} characters", name)
        if "\x00" in text:
            # Stored in its own column; PostgreSQL text cannot hold NUL, so no store would keep it.
            raise DeliveryRejected(422, f"{name}: contains a NUL character", name)
    _check_time(event)
    return event


def _check_time(event: WebhookEvent) -> None:
    """The store keeps UTC: a time that has no UTC equivalent (year 9999 west of UTC) cannot be stored."""
    time = event.time
    if time.tzinfo is None:
        return  # read as UTC
    try:
        time.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise DeliveryRejected(
            422, "time: out of the representable range once converted to UTC", "time"
        ) from None


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
    try:
        declared = int(content_length)
    except ValueError:
        raise DeliveryRejected(400, "invalid Content-Length") from None
    if declared > limit:
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
