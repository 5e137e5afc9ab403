"""Durations and times as people write them on a command line or in a DAG: ``30d``, ``12h``, an ISO 8601 time.

One syntax for retention (``carerix-receiver purge --older-than``), recovery (``--since``), a consumer's
``start_from`` and the readers' ``receiver_silence_warning``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["parse_duration", "parse_since"]

_MAX_DURATION_SECONDS = 36500 * 86400
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``: the retention syntax of ``carerix-receiver purge``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h, d or w, e.g. 30d")
    amount, unit = int(match.group(1)), match.group(2).lower()
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text.strip()!r} too large: at most 36500d (100 years)")
    return timedelta(seconds=seconds)


def parse_since(value: datetime | str | timedelta | None, *, now: datetime | None = None) -> datetime | None:
    """``None`` (everything), an aware datetime, an ISO 8601 time, or a duration back from now (``2h``, ``7d``)."""
    now = now or datetime.now(timezone.utc)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, timedelta):
        return now - value
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since: expected a duration (2h, 30m, 7d) or an ISO 8601 time, got {text!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
