"""What a watcher, the sensor or a task wants from the event store, and what Airflow gets to see of an event.

Shared by the triggers, the sensor and the event store hook (the way the Amazon provider's SQS trigger and
sensor share ``utils/sqs.py``). The filter is pushed into the store's query where SQL can express it (types,
webhook, application, tenant); the condition is evaluated here on the stored payload.

Trigger events and XCom carry a *reference* to a stored event, never its payload: Airflow logs every fired
trigger event and keeps it as asset-event extra in its database, and payloads hold personal data. Tasks read
payloads from the store (:class:`~airflow_provider_carerix.hooks.event_store.CarerixEventStoreHook`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.definitions.event_types import matches_any, normalise_patterns

if TYPE_CHECKING:
    from airflow_provider_carerix.definitions.conditions import Condition
    from airflow_provider_carerix.store import StoredEvent

__all__ = [
    "EventFilter",
    "clean_id",
    "error_payload",
    "event_payload",
    "iso",
    "parse_time",
]

log = logging.getLogger(__name__)


def clean_id(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_condition(text: str) -> Condition:
    from airflow_provider_carerix.definitions.conditions import parse

    return parse(text)


def validate_condition(condition: str | None) -> str | None:
    """The condition text, stripped; ``ConditionSyntaxError`` if it does not parse."""
    if condition is None or not str(condition).strip():
        return None
    text = str(condition).strip()
    _parse_condition(text)  # ConditionSyntaxError (a ValueError) says what and where
    return text


@dataclass(frozen=True)
class EventFilter:
    """Event types, condition, webhook, application and tenant; normalised so equal filters compare equal."""

    event_types: tuple[str, ...] = ("*",)
    condition: str | None = None
    webhook_id: str | None = None
    application_id: str | None = None
    tenant: str | None = None
    _parsed: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        event_types: str | Iterable[str] | None = None,
        condition: str | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
    ) -> EventFilter:
        """Validated and normalised: a bad pattern or condition raises ``ValueError`` here, not later."""
        return cls(
            event_types=tuple(normalise_patterns(event_types)),
            condition=validate_condition(condition),
            webhook_id=clean_id(webhook_id),
            application_id=clean_id(application_id),
            tenant=clean_id(tenant),
        )

    def serialize(self) -> dict[str, Any]:
        """The filter part of a trigger's kwargs: primitives only."""
        return {
            "event_types": list(self.event_types),
            "condition": self.condition,
            "webhook_id": self.webhook_id,
            "application_id": self.application_id,
            "tenant": self.tenant,
        }

    def fingerprint(self) -> str:
        """Short stable digest of the filter (default consumer names)."""
        spec = json.dumps(list(self.serialize().values()), separators=(",", ":"))
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def parsed_condition(self) -> Condition | None:
        if self.condition is None:
            return None
        if self._parsed is None:
            object.__setattr__(self, "_parsed", _parse_condition(self.condition))
        return self._parsed

    def query_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``EventStore.events_after`` for the SQL-expressible part."""
        return {
            "event_types": None if self.event_types == ("*",) else list(self.event_types),
            "webhook_id": self.webhook_id,
            "application_id": self.application_id,
            "tenant": self.tenant,
        }

    def matches(self, stored: StoredEvent) -> bool:
        """The whole filter on one stored event (events on a shared stream arrive unfiltered)."""
        if not matches_any(self.event_types, stored.type):
            return False
        if self.webhook_id is not None and stored.webhook_id != self.webhook_id:
            return False
        if self.application_id is not None and stored.application_id != self.application_id:
            return False
        if self.tenant is not None and stored.tenant != self.tenant:
            return False
        condition = self.parsed_condition()
        if condition is None:
            return True
        try:
            return bool(condition.matches(stored.payload))
        except Exception:  # conditions never raise by contract; a bug must not stop a watcher
            log.exception("Carerix condition failed on event %s; skipped", stored.event_id)
            return False


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def parse_time(value: str | datetime | None) -> datetime | None:
    """ISO 8601 text (``Z`` allowed) or a datetime; naive means UTC."""
    if value is None or value == "":
        return None
    parsed = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def event_payload(stored: StoredEvent) -> dict[str, Any]:
    """What Airflow sees of one stored event: where it is and what it is about, never its payload."""
    return {
        "status": "event",
        "event_id": stored.event_id,
        "type": stored.type,
        "entity_id": stored.entity_id,
        "sequence": stored.sequence,
        "received_at": iso(stored.received_at),
    }


def error_payload(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}
