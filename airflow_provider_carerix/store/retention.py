"""Retention: old events deleted in batches, and the horizon below which a delivery may be a replay of a
purged event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from airflow_provider_carerix.store.base import _retry_on_disconnect
from airflow_provider_carerix.store.schema import _utcnow, events, purges
from airflow_provider_carerix.store.sqlite import SQLiteFile

log = logging.getLogger(__name__)


class Retention(SQLiteFile):
    """Purge, and what it leaves behind to refuse replays."""

    @_retry_on_disconnect
    def purge(self, older_than: timedelta, *, batch_size: int = 2000, vacuum: bool = False) -> int:
        """Delete events received and timed before now - older_than; returns how many.

        * In batches of ``batch_size`` rows, each its own short transaction, so receivers keep committing
          between batches instead of stalling behind one long delete.
        * The newest event is always kept, so ``last_sequence()`` never goes backwards for a consumer that
          starts "from now".
        * The cutoff is recorded as the purge horizon (:meth:`purge_horizon`): a delivery timed before it
          whose id is not stored may be a replay of a purged event and is refused by the receiver. Rows are
          deleted only when both their receipt and their own ``time`` are before the cutoff, so every purged
          event is below the horizon whatever the clock skew between Carerix and this machine.
        * SQLite: freed pages are returned to the file system (incremental vacuum, in small steps). A store
          created before incremental vacuum existed needs one full ``VACUUM`` (``vacuum=True``), which locks
          the file for its duration.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._ensure_schema()
        self._check_file_identity()
        try:
            cutoff = _utcnow() - older_than
        except OverflowError:
            raise ValueError(
                f"retention {older_than} reaches before year 1: nothing could be purged"
            ) from None
        deleted = 0
        while True:
            with self._guard(), self._write() as conn:
                newest = conn.execute(sa.select(sa.func.max(events.c.sequence))).scalar()
                if newest is None:
                    break
                batch = (
                    sa.select(events.c.sequence)
                    .where(events.c.received_at < cutoff, events.c.time < cutoff, events.c.sequence < newest)
                    .order_by(events.c.sequence)
                    .limit(batch_size)
                    .scalar_subquery()
                )
                count = int(conn.execute(events.delete().where(events.c.sequence.in_(batch))).rowcount or 0)
                if deleted == 0:
                    conn.execute(purges.insert().values(purged_at=_utcnow(), horizon=cutoff, deleted=0))
                deleted += count
                if count < batch_size:
                    conn.execute(
                        purges.update()
                        .where(purges.c.id == sa.select(sa.func.max(purges.c.id)).scalar_subquery())
                        .values(deleted=deleted)
                    )
                    break
        if self.dialect == "sqlite":
            self._reclaim_sqlite_space(full=vacuum)
        return deleted

    @_retry_on_disconnect
    def stored_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids are stored."""
        self._ensure_schema()
        found: set[str] = set()
        with self._guard(), self._engine.connect() as conn:
            for start in range(0, len(event_ids), 500):
                chunk = list(event_ids[start : start + 500])
                found.update(
                    conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(chunk))).scalars()
                )
        return found

    @_retry_on_disconnect
    def purge_horizon(self) -> datetime | None:
        """Events timed before this were purged (None: never purged); one indexed read."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            horizon = conn.execute(sa.select(sa.func.max(purges.c.horizon))).scalar()
        if horizon is not None and horizon.tzinfo is None:
            horizon = horizon.replace(tzinfo=timezone.utc)
        return horizon
