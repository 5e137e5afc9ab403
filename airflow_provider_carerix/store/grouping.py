"""One group of deliveries on its way in: what is a duplicate (inside the group or already stored), what may
be a replay of a purged event, and the body check of a redelivery. Shared by both dialects' insert paths.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store.errors import EventRejected
from airflow_provider_carerix.store.records import _DELIVERED, _Item
from airflow_provider_carerix.store.schema import events

log = logging.getLogger(__name__)


def _entity_id(event: EventPayload) -> str | None:
    value = event.data.entity_id if event.data is not None else None
    return None if value is None else str(value)


def _known_sequences(
    conn: Connection, ids: Sequence[str], payloads: dict[str, str] | None = None
) -> dict[str, int]:
    """Sequences of the ids already stored; their stored bodies go to ``payloads`` when given."""
    known: dict[str, int] = {}
    columns = [events.c.event_id, events.c.sequence] + ([events.c.payload] if payloads is not None else [])
    for start in range(0, len(ids), 500):
        found = conn.execute(sa.select(*columns).where(events.c.event_id.in_(ids[start : start + 500])))
        for row in found:
            known[row.event_id] = int(row.sequence)
            if payloads is not None:
                payloads[row.event_id] = row.payload
    return known


def _plan_group(
    items: Sequence[_Item], known: dict[str, int], known_payloads: dict[str, str] | None = None
) -> tuple[list[tuple[int, bool]], list[dict[str, Any]], list[int], list[tuple[int, int]]]:
    """Results so far, new rows (without received_at), result slot of each row, (repeat, first) slots."""
    results: list[tuple[int, bool]] = []
    rows: list[dict[str, Any]] = []
    slots: list[int] = []  # index into results of each new row, in insertion order
    pending: dict[str, int] = {}  # event id -> result index of its first occurrence in this group
    repeats: list[tuple[int, int]] = []  # (result index, result index of the first occurrence)
    first_raw: dict[str, bytes | str] = {}
    for item in items:
        raw, event = item[0], item[1]
        provenance = item[2] if len(item) > 2 else _DELIVERED
        if event.id in known:
            if known_payloads is not None and event.id in known_payloads:
                _warn_if_body_differs(event.id, known_payloads[event.id], raw)
            results.append((known[event.id], False))
            continue
        if event.id in pending:
            _warn_if_body_differs(event.id, first_raw[event.id], raw)
            repeats.append((len(results), pending[event.id]))
            results.append((0, False))  # sequence filled in after the insert
            continue
        pending[event.id] = len(results)
        first_raw[event.id] = raw
        slots.append(len(results))
        results.append((0, True))
        rows.append(
            {
                "event_id": event.id,
                "type": event.type.lower(),
                "time": event.time,
                "tenant": event.tenant,
                "application_id": event.application_id,
                "webhook_id": event.webhook_id,
                "entity_id": _entity_id(event),
                "payload": raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw,
                "signature_verified": provenance.signature_verified,
                "recovered": provenance.recovered,
            }
        )
    return results, rows, slots, repeats


def _purged_replay(event: EventPayload, horizon: datetime) -> EventRejected:
    return EventRejected(
        f"time is before the store's purge horizon {horizon.isoformat()}: a replay of a purged event is not "
        "stored again",
        event.id,
        "time",
    )


def _with_refused(
    results: Sequence[tuple[int, bool]], refused: dict[int, EventRejected], count: int
) -> list[tuple[int, bool] | EventRejected]:
    """The results of the items kept, with the refused ones put back in their places."""
    if not refused:
        return list(results)
    done = iter(results)
    return [refused[i] if i in refused else next(done) for i in range(count)]


def _digest(raw: bytes | str) -> str:
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    return hashlib.sha256(data).hexdigest()[:16]


def _warn_if_body_differs(event_id: str, stored: bytes | str, new: bytes | str) -> None:
    """Same id, different body: Carerix should never do that. Keep the first, say so (hashes, no values)."""
    stored_b = stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
    new_b = new.encode("utf-8") if isinstance(new, str) else bytes(new)
    if stored_b != new_b:
        log.warning(
            "Event %s delivered again with a different body (stored sha256 %s, new sha256 %s); keeping the "
            "stored one",
            event_id,
            _digest(stored_b),
            _digest(new_b),
        )
