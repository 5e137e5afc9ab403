"""What the coverage sweep asks the store: the newest event stored about each of some records.

One indexed read per 500 ids (``ix_carerix_events_entity_sequence``), so a sweep over thousands of records
costs a few queries; nothing on the receiver's insert path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa

from airflow_provider_carerix.store.base import StoreBase, _retry_on_disconnect
from airflow_provider_carerix.store.schema import events

log = logging.getLogger(__name__)


class Coverage(StoreBase):
    """Per record, the time of the newest stored event about it (any action, delivered, recovered or swept)."""

    @_retry_on_disconnect
    def latest_event_times(self, entity: str, entity_ids: Sequence[str]) -> dict[str, datetime]:
        """``{entity_id: newest event time}`` for the ids with a stored ``<entity>:*`` event."""
        self._ensure_schema()
        prefix = events.c.type.startswith(entity.lower() + ":", autoescape=True)
        found: dict[str, datetime] = {}
        ids = [str(i) for i in entity_ids]
        with self._guard(), self._engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = conn.execute(
                    sa.select(events.c.entity_id, sa.func.max(events.c.time))
                    .where(events.c.entity_id.in_(chunk), prefix)
                    .group_by(events.c.entity_id)
                )
                for entity_id, newest in rows:
                    found[entity_id] = newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc)
        return found
