"""Business hours: the weekly windows in which silence or a backlog counts, in a time zone the user gives.

A freshness check that allows "two hours without an event" means two hours of the working week: no events on
Sunday is no outage. :meth:`BusinessHours.elapsed` counts only the time inside the windows, so Friday 17:30
to Monday 09:00 with ``Mon-Fri 08:00-18:00`` is 1.5 hours, and a check running at night sees the age it had
at closing time.

The format, one window per entry (a list, or entries separated by ``;``)::

    Mon-Fri 08:00-18:00
    Mon,Wed,Fri 09:00-12:30; Sat 10:00-14:00
    Mon-Sun 00:00-24:00          # every hour of the week

Days are English three-letter names (``Mon`` .. ``Sun``), single, comma-separated or as a range
(``Fri-Mon`` wraps over the weekend). Times are ``HH:MM`` in 24-hour form, ``24:00`` for the end of a day; a
window ends after it starts (split one that runs past midnight in two). Local times follow the zone's
daylight saving changes (``zoneinfo``). Pure: no Airflow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["BusinessHours"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?P<days>[A-Za-z,\s-]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


def _minutes(text: str, where: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{where}: {text!r} is not a time of day (HH:MM, 00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, where: str) -> set[int]:
    found: set[int] = set()
    for part in text.split(","):
        bounds = [b.strip().lower()[:3] for b in part.split("-")]
        if len(bounds) not in (1, 2) or any(b not in DAYS for b in bounds):
            raise ValueError(
                f"{where}: {part.strip()!r} is not a day or range of days (Mon, Tue, ... Sun; e.g. Mon-Fri)"
            )
        first, last = DAYS.index(bounds[0]), DAYS.index(bounds[-1])
        day = first
        while True:
            found.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return found


@dataclass(frozen=True)
class BusinessHours:
    """Weekly windows ``(weekday, start minute, end minute)`` in ``zone`` (Monday is 0)."""

    windows: tuple[tuple[int, int, int], ...]
    zone: str = "UTC"
    text: str = ""

    @classmethod
    def parse(cls, spec: str | Sequence[str], zone: str = "UTC") -> BusinessHours:
        """Windows from text (see the module docstring); a bad entry raises ``ValueError`` naming it."""
        entries = [e for e in (spec.split(";") if isinstance(spec, str) else list(spec)) if str(e).strip()]
        if not entries:
            raise ValueError("business hours: no window given (e.g. 'Mon-Fri 08:00-18:00')")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"business hours: unknown time zone {zone!r} (an IANA name: Europe/Amsterdam)"
            ) from None
        windows: list[tuple[int, int, int]] = []
        for entry in entries:
            where = f"business hours {str(entry).strip()!r}"
            match = _WINDOW.match(str(entry))
            if match is None:
                raise ValueError(f"{where}: expected days and a time range, e.g. 'Mon-Fri 08:00-18:00'")
            start, end = _minutes(match["start"], where), _minutes(match["end"], where)
            if end <= start:
                raise ValueError(
                    f"{where}: the window ends at or before it starts; split a window past midnight in two"
                )
            windows += [(day, start, end) for day in sorted(_days(match["days"], where))]
        text = "; ".join(str(e).strip() for e in entries)
        return cls(tuple(sorted(set(windows))), zone, text)

    def describe(self) -> str:
        return f"{self.text} ({self.zone})"

    def _spans(self, day: date) -> list[tuple[datetime, datetime]]:
        """The windows of one local date, as UTC instants."""
        tz = ZoneInfo(self.zone)
        spans = []
        for weekday, start, end in self.windows:
            if weekday != day.weekday():
                continue
            # Local wall-clock times: zoneinfo gives each its own offset, so a daylight saving change is honoured.
            begin = datetime.combine(day, time(start // 60, start % 60), tzinfo=tz)
            if end == 24 * 60:
                finish = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
            else:
                finish = datetime.combine(day, time(end // 60, end % 60), tzinfo=tz)
            spans.append((begin.astimezone(timezone.utc), finish.astimezone(timezone.utc)))
        return spans

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """The time between ``start`` and ``end`` that falls inside the windows."""
        start, end = _aware(start), _aware(end)
        if end <= start:
            return timedelta(0)
        tz = ZoneInfo(self.zone)
        day = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date() + timedelta(days=1)
        total = timedelta(0)
        while day <= last:
            for begin, finish in self._spans(day):
                overlap = min(finish, end) - max(begin, start)
                if overlap > timedelta(0):
                    total += overlap
            day += timedelta(days=1)
        return total

    def contains(self, when: datetime) -> bool:
        when = _aware(when)
        day = when.astimezone(ZoneInfo(self.zone)).date()
        return any(begin <= when < finish for begin, finish in self._spans(day))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
