"""Read-only questions the Carerix page asks the event store, each one query shaped to stay fast at scale.

Every list is paginated on the server with a keyset on ``sequence`` (no ``OFFSET``: page 1,000 costs what page
1 costs), and every aggregate is bounded by an index (``received_at`` for the chart, ``(type, sequence)`` for a
consumer's lag). Payloads are only read one at a time, on demand: the page never ships personal data it does
not show.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from airflow_provider_carerix.store import EventStore, StoreUnavailable
from airflow_provider_carerix.store import schema as store_module

__all__ = ["EventBrowser", "EventQuery"]

MAX_PAGE = 200
CHART_HOURS = 24
# A minute this long over is final: a commit in flight when it ended has been stamped and committed by then.
SETTLED = timedelta(minutes=2)


@dataclass(frozen=True)
class EventQuery:
    """Filters of the events table; ``before`` is the keyset cursor (sequence of the last row shown)."""

    event_type: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 50


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def _optional_columns(table: sa.Table, *names: str) -> list[sa.Column[Any]]:
    """Columns later schema versions add (signature verified, recovered): shown when the store has them."""
    return [table.c[name] for name in names if name in table.c]


class EventBrowser:
    """The page's view of one store. Thread-safe like the store; every method is one or two queries."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        # (window start, counted until, (minute, type) -> n) of minutes that can no longer change.
        self._chart: tuple[datetime | None, datetime | None, dict[tuple[str, str], int]] = (None, None, {})
        self._chart_lock = threading.Lock()

    def _connect(self) -> sa.Connection:
        self.store.ping()  # creates or migrates the schema on first use, like every other reader
        return self.store.engine.connect()

    # -- events -------------------------------------------------------------------------------------------

    def events(self, query: EventQuery) -> dict[str, Any]:
        t = store_module.events
        limit = max(1, min(int(query.limit), MAX_PAGE))
        flags = _optional_columns(t, "signature_verified", "recovered")
        stmt = sa.select(
            t.c.sequence,
            t.c.event_id,
            t.c.type,
            t.c.time,
            t.c.received_at,
            t.c.tenant,
            t.c.application_id,
            t.c.webhook_id,
            t.c.entity_id,
            *flags,
        )
        if query.event_type:
            stmt = stmt.where(t.c.type == query.event_type.strip().lower())
        if query.entity_id:
            stmt = stmt.where(t.c.entity_id == query.entity_id.strip())
        if query.since is not None:
            stmt = stmt.where(t.c.received_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(t.c.received_at < query.until)
        if query.before is not None:
            stmt = stmt.where(t.c.sequence < int(query.before))
        stmt = stmt.order_by(t.c.sequence.desc()).limit(limit + 1)
        with self._connect() as conn:
            rows = conn.execute(stmt).all()
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for row in rows:
            item = {
                "sequence": row.sequence,
                "event_id": row.event_id,
                "type": row.type,
                "time": _iso(row.time),
                "received_at": _iso(row.received_at),
                "tenant": row.tenant,
                "application_id": row.application_id,
                "webhook_id": row.webhook_id,
                "entity_id": row.entity_id,
            }
            mapping = row._mapping
            for column in flags:
                item[column.name] = bool(mapping[column.name])
            items.append(item)
        return {
            "items": items,
            "next_before": items[-1]["sequence"] if more and items else None,
            "flags": [column.name for column in flags],
        }

    def event(self, sequence: int) -> dict[str, Any] | None:
        t = store_module.events
        with self._connect() as conn:
            row = conn.execute(
                sa.select(t.c.sequence, t.c.event_id, t.c.type, t.c.payload).where(t.c.sequence == sequence)
            ).first()
        if row is None:
            return None
        try:
            payload: Any = json.loads(row.payload)
        except ValueError:
            payload = row.payload
        return {"sequence": row.sequence, "event_id": row.event_id, "type": row.type, "payload": payload}

    def event_types(self) -> list[str]:
        """Distinct types seen, for the filter; an index-only scan of ``(type, sequence)``."""
        t = store_module.events
        with self._connect() as conn:
            return [r[0] for r in conn.execute(sa.select(t.c.type).distinct().order_by(t.c.type))]

    # -- chart --------------------------------------------------------------------------------------------

    def _count_minutes(self, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
        """(minute, type) -> events received in ``[start, end)``; one grouped, index-only query."""
        t = store_module.events
        if self.store.dialect == "postgresql":
            bucket: sa.ColumnElement[Any] = sa.func.to_char(
                sa.func.date_trunc("minute", sa.func.timezone("UTC", t.c.received_at)),
                'YYYY-MM-DD"T"HH24:MI',
            )
        else:  # naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff": the first 16 characters are the minute
            bucket = sa.func.substr(t.c.received_at, 1, 16)
        stmt = (
            sa.select(bucket.label("minute"), t.c.type, sa.func.count().label("n"))
            .where(t.c.received_at >= start, t.c.received_at < end)
            .group_by(bucket, t.c.type)
        )
        with self._connect() as conn:
            return {(row.minute.replace(" ", "T"), row.type): int(row.n) for row in conn.execute(stmt)}

    def per_minute(self, *, hours: int = CHART_HOURS, now: datetime | None = None) -> dict[str, Any]:
        """Counts per (minute, type) over the last ``hours``; minutes without events are left out.

        A minute that ended more than :data:`SETTLED` ago never changes again (``received_at`` is stamped at
        commit time, so nothing arrives late), so its counts are kept and each call only counts what is newer:
        the first call scans the day once, later ones a few minutes.
        """
        end = (now or datetime.now(timezone.utc)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        start = end - timedelta(hours=hours)
        settled = end - timedelta(minutes=1) - SETTLED
        with self._chart_lock:
            cached_from, cached_until, counts = self._chart
            if cached_until is None or cached_from is None or cached_from > start or cached_until < start:
                cached_until, counts = start, {}
            if settled > cached_until:
                counts = {**counts, **self._count_minutes(cached_until, settled)}
                cached_until = settled
            first = start.strftime("%Y-%m-%dT%H:%M")
            counts = {key: n for key, n in counts.items() if key[0] >= first}
            self._chart = (start, cached_until, counts)
        fresh = self._count_minutes(cached_until, end)
        series: dict[str, dict[str, int]] = {}
        for (minute, event_type), n in sorted({**counts, **fresh}.items()):
            series.setdefault(event_type, {})[minute] = n
        return {
            "start": _iso(start),
            "end": _iso(end),
            "minutes": hours * 60,
            "series": series,
            "total": sum(sum(v.values()) for v in series.values()),
        }

    # -- receiver health ----------------------------------------------------------------------------------

    def health(self, *, now: datetime | None = None) -> dict[str, Any]:
        """Whether the store answers, and when the receiver last stored something."""
        t = store_module.events
        now = now or datetime.now(timezone.utc)
        try:
            with self._connect() as conn:
                last = conn.execute(
                    sa.select(t.c.sequence, t.c.received_at).order_by(t.c.sequence.desc()).limit(1)
                ).first()
                hour = conn.execute(
                    sa.select(sa.func.count()).where(t.c.received_at >= now - timedelta(hours=1))
                ).scalar_one()
        except StoreUnavailable as exc:
            return {"store": "unavailable", "detail": str(exc)}
        return {
            "store": "ok",
            "dialect": self.store.dialect,
            "last_sequence": last.sequence if last else 0,
            "last_received_at": _iso(last.received_at) if last else None,
            "events_last_hour": int(hour),
        }
