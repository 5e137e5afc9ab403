"""The ``entity:action`` vocabulary of Carerix event types, in one place.

Carerix names every event ``<entity>:<action>`` (``cremployee:updated``). Filters (webhook definitions,
watchers, the sensor) take patterns: an exact type, ``entity:*`` (every action of one entity), ``*:action``
(one action of every entity) or ``*`` (everything). Stored and compared types are lowercase, so
``CREmployee:Updated`` and ``cremployee:updated`` are one type.

The receiver, the emulator, spec validation, the triggers and the store's SQL translation all use these
functions, so a pattern means the same everywhere. Nothing here knows about Airflow or SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ANY",
    "EventTypeError",
    "matches",
    "matches_any",
    "normalise_patterns",
    "parse_event_type",
    "parse_pattern",
]

ANY = "*"
_EXAMPLES = "e.g. cremployee:updated, crmatch:*, *:created or *"


class EventTypeError(ValueError):
    """A text that is not an ``entity:action`` event type or pattern; the message names the text."""


def _split(text: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise EventTypeError(f"{what} must be a string like 'cremployee:updated', got {type(text).__name__}")
    lowered = text.strip().lower()
    if any(ch.isspace() for ch in lowered):
        raise EventTypeError(f"invalid {what} {text!r}: contains whitespace")
    entity, sep, action = lowered.partition(":")
    if not sep or not entity or not action or ":" in action:
        raise EventTypeError(f"invalid {what} {text!r}: use <entity>:<action>, {_EXAMPLES}")
    return entity, action


def parse_event_type(text: str) -> tuple[str, str]:
    """``(entity, action)`` of a concrete event type as Carerix sends it (no wildcards), lowercased."""
    entity, action = _split(text, "event type")
    if ANY in (entity, action):
        raise EventTypeError(f"invalid event type {text!r}: a delivered event type has no wildcard")
    return entity, action


def parse_pattern(text: str) -> tuple[str, str]:
    """``(entity, action)`` of a pattern, lowercased; ``*`` and ``*:*`` give ``("*", "*")``."""
    if isinstance(text, str) and text.strip() in (ANY, "*:*"):
        return ANY, ANY
    return _split(text, "event type")


def normalise_patterns(patterns: str | Iterable[str] | None) -> list[str]:
    """Lowercase, deduplicated, sorted; ``["*"]`` when any pattern matches everything (or none is given).

    Deterministic on purpose: equal filters must serialise equal (Airflow identifies a watcher by a hash of
    its trigger's kwargs).
    """
    if patterns is None:
        return [ANY]
    if isinstance(patterns, str):
        patterns = [patterns]
    result: set[str] = set()
    for item in patterns:
        entity, action = parse_pattern(item)
        if entity == ANY and action == ANY:
            return [ANY]
        result.add(f"{entity}:{action}")
    if not result:
        raise EventTypeError("event_types must not be empty (use ['*'] for every event)")
    return sorted(result)


def matches(pattern: str, event_type: str) -> bool:
    """Whether one pattern covers one event type (case-insensitive)."""
    p_entity, p_action = parse_pattern(pattern)
    entity, _, action = event_type.strip().lower().partition(":")
    return p_entity in (ANY, entity) and p_action in (ANY, action)


def matches_any(patterns: Iterable[str], event_type: str) -> bool:
    return any(matches(pattern, event_type) for pattern in patterns)
