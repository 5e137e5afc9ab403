"""The coverage sweep: changes Carerix sent no webhook for, stored as events so event-driven DAGs see them.

Carerix sends webhooks only for some fields and entities. The sweep reads the records changed in a window
(``CarerixHook.iter_entities``, ids and dates only: no personal data is fetched) and, for each record whose
change no stored event reports, stores an event of its own, so the DAGs scheduled on ``CarerixEvents`` process
it like a delivered one.

* **Reported** means: the store holds an event about the record (any action, any source) timed no earlier
  than its ``modificationDate`` minus ``tolerance`` (clocks of Carerix's database and its webhook service may
  differ a little). A DAG that processed such an event fetched the record after that change.
* **What is stored**: ``{"id", "time", "type", "tenant", "data": {"entityId"}, "sweep": {...}}``. ``type`` is
  ``<entity>:updated`` (``:created`` when the record was created at that instant, ``:deleted`` for a deleted
  record); ``time`` is the ``modificationDate``; ``data`` has no ``changedFields`` (unknown: treat every field
  as changed) and none of the fields webhook conditions read, so a DAG filtering on a condition does not see
  swept events. The ``sweep`` key marks it (``ClaimedEvent.swept``).
* **Ids are deterministic**: ``sweep:<entity>:<entityId>:<modificationDate as UTC>``. Running the sweep again
  over the same window, or over overlapping windows, stores nothing twice (the store dedupes on the id), and a
  later change of the record is a new id.
* **The purge horizon**: events older than the store's retention are deleted. A change before the purge
  horizon may have been reported by an event that no longer exists, so "no event" proves nothing there; such
  changes are swept anyway (at least once, never lost) and counted as ``before_horizon``, and the operator
  warns. Only a window reaching back past the retention (a sweep that did not run for that long) meets this.

No Airflow import: the operator calls this, tests call it directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.definitions import entities
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import Provenance, insert_counted

if TYPE_CHECKING:
    from airflow_provider_carerix.store import EventStore

__all__ = ["SWEEP_ID_PREFIX", "SweepResult", "sweep_id", "sweep_records"]

log = logging.getLogger(__name__)

SWEEP_ID_PREFIX = "sweep:"
#: Swept events were not delivered, so there is no signature to have checked: "not applicable".
SWEPT = Provenance(signature_verified=None, recovered=False)


@dataclass
class SweepResult:
    """Counts and ids only: records hold personal data and never go to logs or XCom."""

    entity: str
    read: int = 0
    reported: int = 0
    stored: int = 0
    duplicates: int = 0
    too_recent: int = 0
    before_horizon: int = 0
    stored_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "read": self.read,
            "reported": self.reported,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "too_recent": self.too_recent,
            "before_horizon": self.before_horizon,
        }


def sweep_id(entity: str, entity_id: str, modified: datetime) -> str:
    """The event id of one change: the same change gives the same id, whenever it is swept."""
    return f"{SWEEP_ID_PREFIX}{entity}:{entity_id}:{modified.strftime('%Y%m%dT%H%M%SZ')}"


def _action(ent: entities.Entity, record: dict[str, Any], modified: datetime) -> str:
    if ent.deletable and record.get("deleted"):
        return "deleted"
    created = entities.parse_carerix_date(record.get("creationDate"))
    return "created" if created is not None and created >= modified else "updated"


def sweep_records(
    records: Iterable[dict[str, Any]],
    store: EventStore,
    entity: str,
    *,
    until: datetime | None = None,
    tolerance: timedelta = timedelta(minutes=1),
    horizon: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 100,
) -> SweepResult:
    """Store an event for each record whose latest change no stored event reports (see the module docstring).

    ``until``: records changed after it are left for the next sweep (``too_recent``: their webhook may still
    be on its way). ``horizon``: the store's purge horizon, for ``before_horizon``.
    """
    ent = entities.entity(entity)
    result = SweepResult(ent.name)
    batch: list[tuple[str, datetime, dict[str, Any]]] = []

    def flush() -> None:
        if not batch:
            return
        latest = store.latest_event_times(ent.name, [entity_id for entity_id, _, _ in batch])
        items: list[tuple[str, EventPayload, Provenance]] = []
        for entity_id, modified, record in batch:
            seen = latest.get(entity_id)
            if seen is not None and seen >= modified - tolerance:
                result.reported += 1
                continue
            if horizon is not None and modified < horizon:
                result.before_horizon += 1
            payload = {
                "id": sweep_id(ent.name, entity_id, modified),
                "time": modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "type": f"{ent.name}:{_action(ent, record, modified)}",
                "tenant": tenant,
                "data": {"entityId": entity_id},
                "sweep": {"modificationDate": record.get("modificationDate")},
            }
            raw = json.dumps(payload, separators=(",", ":"))
            items.append((raw, EventPayload.model_validate(payload), SWEPT))
        insert_counted(store, items, result)
        batch.clear()

    for record in records:
        result.read += 1
        modified = entities.parse_carerix_date(record.get("modificationDate"))
        if modified is None:
            continue
        if until is not None and modified > until:
            result.too_recent += 1
            continue
        batch.append((ent.record_id(record), modified, record))
        if len(batch) >= batch_size:
            flush()
    flush()
    log.info(
        "Coverage sweep of %s: %d record(s) changed, %d reported by a stored event, %d event(s) stored, "
        "%d already swept, %d left for the next sweep%s",
        ent.name,
        result.read,
        result.reported,
        result.stored,
        result.duplicates,
        result.too_recent,
        f", {result.before_horizon} before the purge horizon" if result.before_horizon else "",
    )
    return result
