"""What the Carerix page shows beyond the events themselves: consumers with their lag and age, the last event
of each type, and the webhooks with their health.

Kept apart from :mod:`.queries` because these read state other parts of the provider write: consumers come
from the event store's cursor and consumer tables (written by watchers and by tasks that claim events), the
webhooks from the snapshot the provisioning sync records after each run (what it left in Carerix) and from
what the last webhook health check saw of Carerix's statuses and delivery log (the page never calls Carerix).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store import schema as store_module

__all__ = ["LAG_CAP", "consumers", "last_events", "page_sections", "store_section", "webhooks"]

# Counting a consumer's lag reads index entries after its cursor; past this many the page shows "10000+".
LAG_CAP = 10_000
_PROCESSED = ":processed"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _table(name: str) -> sa.Table | None:
    table = store_module.metadata.tables.get(name)
    return table


def consumers(store: EventStore) -> list[dict[str, Any]]:
    """Every consumer with its processed cursor, lag (matching events not processed yet) and owner."""
    store.ping()
    cursors = store_module.cursors
    events = store_module.events
    table = _table("carerix_consumers")
    now = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(cursors.c.name, cursors.c.sequence, cursors.c.updated_at).where(
                cursors.c.name.endswith(_PROCESSED, autoescape=True)
            )
        ).all()
        meta: dict[str, Any] = {}
        if table is not None:
            meta = {row.name: row for row in conn.execute(sa.select(table)).all()}
        result = []
        for row in rows:
            name = row.name[: -len(_PROCESSED)]
            info = meta.get(name)
            filters = _filters(info)
            stmt = sa.select(events.c.sequence).where(events.c.sequence > row.sequence)
            clause = store_module.type_filter(filters.get("event_types") or ["*"])
            if clause is not None:
                stmt = stmt.where(clause)
            for column in ("webhook_id", "application_id", "tenant"):
                if filters.get(column):
                    stmt = stmt.where(events.c[column] == filters[column])
            lag = conn.execute(
                sa.select(sa.func.count()).select_from(stmt.limit(LAG_CAP + 1).subquery())
            ).scalar_one()
            # The oldest event waiting: the first after the cursor (by sequence, so by receipt).
            oldest_sequence = stmt.order_by(events.c.sequence).limit(1).scalar_subquery()
            oldest = conn.execute(
                sa.select(events.c.received_at).where(events.c.sequence == oldest_sequence)
            ).scalar()
            result.append(
                {
                    "name": name,
                    "dag_id": getattr(info, "owner", None),
                    "event_types": filters.get("event_types") or ["*"],
                    "condition": filters.get("condition"),
                    "processed": int(row.sequence),
                    "lag": min(int(lag), LAG_CAP),
                    "lag_capped": int(lag) > LAG_CAP,
                    # The condition is evaluated in Python, not SQL: with one, the lag is an upper bound.
                    "lag_is_upper_bound": bool(filters.get("condition")),
                    "last_processed_at": _iso(row.updated_at),
                    "oldest_unprocessed_at": _iso(oldest),
                    "age_seconds": _age(oldest, now),
                }
            )
    return sorted(result, key=lambda item: item["name"])


def _filters(info: Any) -> dict[str, Any]:
    raw = getattr(info, "filter", None) if info is not None else None
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _age(value: datetime | None, now: datetime) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return max((now - value).total_seconds(), 0.0)


def last_events(store: EventStore) -> list[dict[str, Any]]:
    """The newest event of each type seen, with its age: one index seek per type on ``(type, sequence)``."""
    store.ping()
    events = store_module.events
    now = datetime.now(timezone.utc)
    out = []
    with store.engine.connect() as conn:
        types = [r[0] for r in conn.execute(sa.select(events.c.type).distinct().order_by(events.c.type))]
        for event_type in types:
            newest = (
                sa.select(sa.func.max(events.c.sequence)).where(events.c.type == event_type).scalar_subquery()
            )
            row = conn.execute(
                sa.select(events.c.sequence, events.c.received_at).where(events.c.sequence == newest)
            ).first()
            if row is None:
                continue
            out.append(
                {
                    "type": event_type,
                    "sequence": int(row.sequence),
                    "received_at": _iso(row.received_at),
                    "age_seconds": _age(row.received_at, now),
                }
            )
    return out


def _health(conn: sa.Connection) -> dict[tuple[str, str], dict[str, Any]]:
    """What the last webhook health check recorded, by (application id, webhook id)."""
    table = _table("carerix_webhook_health")
    if table is None:
        return {}
    out = {}
    for row in conn.execute(sa.select(table)).all():
        try:
            problems = json.loads(row.problems or "[]")
        except ValueError:
            problems = []
        out[(row.application_id, row.webhook_id)] = {
            "application_name": row.application_name,
            "url": row.url,
            "status": row.status,
            "attempts": int(row.attempts),
            "failed": int(row.failed),
            "failure_rate": row.failure_rate,
            "last_failure_status": row.last_failure_status,
            "last_failure_at": _iso(row.last_failure_at),
            "problems": problems,
            "window_start": _iso(row.window_start),
            "checked_at": _iso(row.checked_at),
        }
    return out


def webhooks(store: EventStore) -> list[dict[str, Any]]:
    """The webhooks as the last provisioning sync listed them (empty until a sync ran against this store), each
    with what the last health check saw of it (``health``: status, failure rate, last failure; ``None`` before
    a check ran). Webhooks only a health check saw (in the spec's applications, not made by the sync) follow."""
    table = _table("carerix_webhooks")
    if table is None:
        return []
    store.ping()
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.application_id, table.c.url)).all()
        health = _health(conn)
    out = []
    for row in rows:
        try:
            filters = json.loads(row.filters or "[]")
        except ValueError:
            filters = []
        out.append(
            {
                "webhook_id": row.webhook_id,
                "application_id": row.application_id,
                "application_name": row.application_name,
                "url": row.url,
                "filters": filters,
                "status": row.status,
                "sync_action": row.sync_action,
                "seen_at": _iso(row.seen_at),
                "health": health.pop((row.application_id, row.webhook_id), None),
            }
        )
    for (application_id, webhook_id), seen in sorted(health.items()):
        out.append(
            {
                "webhook_id": webhook_id,
                "application_id": application_id,
                "application_name": seen["application_name"],
                "url": seen["url"],
                "filters": [],
                "status": seen["status"],
                "sync_action": None,
                "seen_at": None,
                "health": seen,
            }
        )
    return out


def store_section(store: EventStore, source: str | None = None) -> dict[str, Any]:
    """Which store the page reads (its id is the same for every component that shares it) and the receivers
    that recorded a heartbeat in it during the last day: a receiver missing here writes elsewhere."""
    from airflow_provider_carerix.receiver.heartbeat import HEARTBEAT_INTERVAL

    identity = store.identity()
    now = datetime.now(timezone.utc)
    return {
        "store_id": identity.store_id,
        "url": identity.url,
        "source": source,
        "created_at": _iso(identity.created_at),
        "receivers": [
            {
                "receiver_id": r.receiver_id,
                "kind": r.kind,
                "host": r.host,
                "pid": r.pid,
                "version": r.version,
                "started_at": _iso(r.started_at),
                "last_seen": _iso(r.last_seen),
                "alive": (now - r.last_seen).total_seconds() <= 3 * HEARTBEAT_INTERVAL,
            }
            for r in store.receivers_seen(within=timedelta(days=1))
        ],
    }


def page_sections(store: EventStore, source: str | None = None) -> dict[str, Callable[[], Any]]:
    return {
        "consumers": lambda: consumers(store),
        "last_events": lambda: last_events(store),
        "webhooks": lambda: webhooks(store),
        "store": lambda: store_section(store, source),
    }
