"""What the Carerix page shows beyond the events themselves: consumers with their lag, and the webhooks.

Kept apart from :mod:`.queries` because both read state other parts of the provider write: consumers come
from the event store's cursor and consumer tables (written by watchers and by tasks that claim events), the
webhooks from the snapshot the provisioning sync records after each run (what it left in Carerix).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store import schema as store_module

__all__ = ["LAG_CAP", "consumers", "page_sections", "store_section", "webhooks"]

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


def webhooks(store: EventStore) -> list[dict[str, Any]]:
    """The webhooks as the last provisioning sync listed them (empty until a sync ran against this store)."""
    table = _table("carerix_webhooks")
    if table is None:
        return []
    store.ping()
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.application_id, table.c.url)).all()
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
        "webhooks": lambda: webhooks(store),
        "store": lambda: store_section(store, source),
    }
