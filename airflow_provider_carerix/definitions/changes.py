"""Events grouped by the record they are about: what a task fetches once per record, however many events.

A burst of 50 updates to 5 candidates is 5 :class:`EntityChange` objects: one per ``(entity, entityId)``,
with every event about it (oldest first), the latest one, the actions seen, and the union of their
``changedFields``. Fetch the records of ``[c.entity_id for c in changes]`` in one call
(``CarerixHook.get_entities``) instead of one per event. Pure: works on anything shaped like a claimed
event (``type``, ``entity_id``, ``sequence`` attributes; the payload as a mapping).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_carerix.definitions import entities

__all__ = ["EntityChange", "group_changes"]


def _changed_fields(event: Any) -> list[str] | None:
    data = event.get("data") if isinstance(event, Mapping) else None
    fields = data.get("changedFields") if isinstance(data, Mapping) else None
    return [str(f).lower() for f in fields] if isinstance(fields, list) else None


@dataclass(frozen=True)
class EntityChange:
    """Every event of a claim about one record.

    ``changed_fields`` is the union of the events' ``changedFields`` (lowercase, as Carerix writes them), or
    ``None`` when some event did not say (``:created``, ``:deleted``, an event of the coverage sweep):
    then any field may have changed.
    """

    entity: str
    entity_id: str
    events: tuple[Any, ...]

    @property
    def latest(self) -> Any:
        """The newest event about the record (highest sequence)."""
        return self.events[-1]

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(str(e.type).split(":", 1)[-1].lower() for e in self.events)

    @property
    def deleted(self) -> bool:
        """Whether the latest event deleted the record (fetch it with ``deleted=True`` to see it)."""
        return str(self.latest.type).lower().endswith(":deleted")

    @property
    def changed_fields(self) -> frozenset[str] | None:
        union: set[str] = set()
        for event in self.events:
            fields = _changed_fields(event)
            if fields is None:
                return None
            union.update(fields)
        return frozenset(union)

    @property
    def swept(self) -> bool:
        """Whether only the coverage sweep reported the record (no webhook did)."""
        return all(isinstance(e.get("sweep"), Mapping) for e in self.events if isinstance(e, Mapping))

    def changed(self, *names: str) -> bool:
        """Whether any of ``names`` (any case; ``touser`` covers ``touser.lastname``) may have changed."""
        fields = self.changed_fields
        if fields is None:
            return True
        wanted = [n.lower() for n in names]
        return any(f == n or f.startswith(n + ".") for f in fields for n in wanted)

    def graphql_fields(self) -> list[str] | None:
        """The changed fields as GraphQL paths of the record's type (``toUser.lastName``); ``None``: unknown.

        Fields that cannot be selected as such (paged lists like ``touser.attributechanges``) are left out.
        """
        fields = self.changed_fields
        return None if fields is None else entities.graphql_paths(self.entity, sorted(fields))[0]


def group_changes(events: Iterable[Any], entity: str | None = None) -> list[EntityChange]:
    """One :class:`EntityChange` per record the events name, ordered by their latest event.

    ``entity`` keeps one entity (``cremployee``, or an event type such as ``cremployee:updated``). Events
    without an entity id (Carerix always sends one) are left out.
    """
    only = None if entity is None else str(entity).strip().lower().split(":", 1)[0]
    grouped: dict[tuple[str, str], list[Any]] = {}
    for event in sorted(events, key=lambda e: e.sequence):
        name = str(event.type).split(":", 1)[0].lower()
        if event.entity_id is None or (only is not None and name != only):
            continue
        grouped.setdefault((name, str(event.entity_id)), []).append(event)
    changes = [EntityChange(name, entity_id, tuple(found)) for (name, entity_id), found in grouped.items()]
    return sorted(changes, key=lambda c: c.latest.sequence)
