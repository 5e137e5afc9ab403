"""``EventStore``: the parts of the store in one handle, with what every reader and writer calls directly.

Inserts (dispatched to the dialect's group insert), cursors, reads after a sequence, the health probe. The
guarantees these keep are in the docstring of :mod:`airflow_provider_carerix.store`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_carerix.definitions.models import EventPayload

__all__ = ["EventStore", "insert_counted"]

from airflow_provider_carerix.store.base import StoreBase, _aware, _retry_on_disconnect
from airflow_provider_carerix.store.coverage import Coverage
from airflow_provider_carerix.store.errors import EventRejected, StoreUnavailable, _unavailable
from airflow_provider_carerix.store.postgres import PostgresWrites
from airflow_provider_carerix.store.records import _DELIVERED, Provenance, StoredEvent, _Item, _stored_event
from airflow_provider_carerix.store.registry import Registry
from airflow_provider_carerix.store.reservations import Reservations
from airflow_provider_carerix.store.retention import Retention
from airflow_provider_carerix.store.schema import consumers, cursors, events, schema_version, type_filter
from airflow_provider_carerix.store.sessions import _PG_INSERT_LOCK

log = logging.getLogger(__name__)

# The id of the row ``probe_write`` adds to the schema version table and removes in the same transaction.
_PROBE_ROW = -1


class EventStore(Reservations, Registry, Retention, Coverage, PostgresWrites, StoreBase):
    """Thread-safe handle on the store; the schema is created or migrated on first use, not at construction.

    Lazy so that a receiver starts (and answers 503, which makes Carerix retry) while its database is down.
    """

    # -- engine ---------------------------------------------------------------------------------------------

    # -- writes ---------------------------------------------------------------------------------------------

    def insert(
        self, raw: bytes | str, event: EventPayload, provenance: Provenance | None = None
    ) -> tuple[int, bool]:
        """Store one delivery; returns (sequence, newly inserted). Committed and durable on return."""
        return self.insert_many([(raw, event, provenance or _DELIVERED)])[0]

    @_retry_on_disconnect
    def insert_many(
        self,
        items: Sequence[tuple[bytes | str, EventPayload] | tuple[bytes | str, EventPayload, Provenance]],
    ) -> list[tuple[int, bool]]:
        """Store a group of deliveries in one transaction (one fsync); results in the order given.

        A duplicate event id, already stored or earlier in the same group, returns the sequence of the row
        that holds it and ``False``. An item may carry a :class:`Provenance` as third element.
        """
        if not items:
            return []
        self._ensure_schema()
        self._check_file_identity()
        if self.dialect == "postgresql":
            return self._insert_many_pg(items, refuse_purged=False)  # type: ignore[return-value]
        return self._insert_sqlite(items, refuse_purged=False)  # type: ignore[return-value]

    @_retry_on_disconnect
    def insert_deliveries(self, items: Sequence[_Item]) -> list[tuple[int, bool] | EventRejected]:
        """``insert_many`` for what a receiver was sent: an event timed before the purge horizon whose id is not
        stored is refused (an :class:`EventRejected` in its place) rather than stored, since it may be a replay
        of a purged event (see :meth:`purge`). The horizon is read inside the insert's own transaction."""
        if not items:
            return []
        self._ensure_schema()
        self._check_file_identity()
        if self.dialect == "postgresql":
            return self._insert_many_pg(items, refuse_purged=True)
        return self._insert_sqlite(items, refuse_purged=True)

    @_retry_on_disconnect
    def advance_cursor(self, name: str, sequence: int) -> int:
        """Move a consumer's cursor forward (never backwards); returns the cursor's value afterwards."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            return int(conn.execute(self._advance_stmt(name, sequence)).scalar_one())

    # -- consumer leases --------------------------------------------------------------------------------------
    #
    # A consumer (one DAG's processing of its events) is drained by one task at a time: the task takes the
    # lease, reads from the processed cursor, and commits the new cursor and releases the lease in one
    # transaction that first checks it still holds the lease. Concurrent runs wait; a crashed holder's lease
    # expires. SQLite serialises the write transactions (BEGIN IMMEDIATE); PostgreSQL locks the row.

    @_retry_on_disconnect
    def event_by_id(self, event_id: str) -> StoredEvent | None:
        """The stored event with this Carerix event id, or ``None``."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(sa.select(events).where(events.c.event_id == event_id)).first()
        if row is None:
            return None
        return _stored_event(row)

    # -- reads ----------------------------------------------------------------------------------------------

    @_retry_on_disconnect
    def events_after(
        self,
        sequence: int,
        *,
        event_types: Iterable[str] | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        received_after: datetime | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events with a sequence above ``sequence`` matching every given filter, oldest first."""
        self._ensure_schema()
        stmt = sa.select(events).where(events.c.sequence > int(sequence))
        if event_types is not None:
            if isinstance(event_types, str):
                event_types = [event_types]
            clause = type_filter(event_types)
            if clause is not None:
                stmt = stmt.where(clause)
        if webhook_id is not None:
            stmt = stmt.where(events.c.webhook_id == webhook_id)
        if application_id is not None:
            stmt = stmt.where(events.c.application_id == application_id)
        if tenant is not None:
            stmt = stmt.where(events.c.tenant == tenant)
        if received_after is not None:
            stmt = stmt.where(events.c.received_at > received_after)
        stmt = stmt.order_by(events.c.sequence).limit(int(limit))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            rows = conn.execute(stmt).all()
        return [_stored_event(row) for row in rows]

    @_retry_on_disconnect
    def last_sequence(self) -> int:
        """The highest stored sequence (0 for an empty store): where a consumer "from now" starts."""
        self._ensure_schema()
        stmt = sa.select(sa.func.max(events.c.sequence))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                # Not past an insert in flight: a consumer starting here would never see it.
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            return int(conn.execute(stmt).scalar() or 0)

    @_retry_on_disconnect
    def last_sequence_before(self, when: datetime) -> int:
        """The highest sequence received before ``when`` (0 if none): where a consumer "from a time" starts.

        ``received_at`` follows sequence order, so every event after the answer was received at or after
        ``when``. On PostgreSQL never past an insert in flight, as :meth:`last_sequence`.
        """
        self._ensure_schema()
        stmt = sa.select(sa.func.max(events.c.sequence)).where(events.c.received_at < _aware(when))
        with self._guard(), self._engine.connect() as conn:
            if self.dialect == "postgresql" and self._pg_announce_in_flight:
                stmt = stmt.where(events.c.sequence <= self._pg_read_bound(conn))
            return int(conn.execute(stmt).scalar() or 0)

    @_retry_on_disconnect
    def last_event(self, event_types: Iterable[str] | None = None) -> StoredEvent | None:
        """The newest stored event of these types (``entity:action`` patterns; ``None``: any), or ``None``.

        One index seek per exact type (``(type, sequence)``); a pattern scans the types it covers.
        """
        self._ensure_schema()
        stmt = sa.select(events).order_by(events.c.sequence.desc()).limit(1)
        if event_types is not None:
            clause = type_filter([event_types] if isinstance(event_types, str) else list(event_types))
            if clause is not None:
                stmt = stmt.where(clause)
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _stored_event(row)

    @_retry_on_disconnect
    def consumer_filter(self, name: str) -> str | None:
        """The filter (JSON) a consumer's claims recorded (``describe_consumer``), or ``None``."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            return conn.execute(sa.select(consumers.c.filter).where(consumers.c.name == name)).scalar()

    @_retry_on_disconnect
    def get_cursor(self, name: str) -> int:
        """A consumer's last acknowledged sequence; 0 when the consumer is unknown."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            value = conn.execute(sa.select(cursors.c.sequence).where(cursors.c.name == name)).scalar()
        return int(value or 0)

    # -- signing keys ---------------------------------------------------------------------------------------

    # -- identity and receivers' heartbeats ------------------------------------------------------------------

    @_retry_on_disconnect
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers a query (and its schema is in place)."""
        try:
            self._ensure_schema()
            self._check_file_identity()
            with self._guard(), self._engine.connect() as conn:
                conn.execute(sa.select(events.c.sequence).limit(1)).all()
        except StoreUnavailable:
            raise
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    @_retry_on_disconnect
    def probe_write(self, timeout: float = 1.0) -> None:
        """Raise ``StoreUnavailable`` (with its cause) unless a write reaches the disk now: one real, tiny commit.

        Takes the same write lock an insert takes (waiting at most ``timeout``), adds and removes a row of the
        schema version table and commits: on SQLite that appends a page to the WAL and flushes it
        (``synchronous=FULL``), on PostgreSQL it flushes a WAL record. So a full disk, a read-only or immutable
        file, a read-only database (a standby), a write lock held elsewhere or a replaced SQLite file fail here
        as they would fail an insert; a rolled-back change would not (it never reaches the disk). No event is
        written; readers are never blocked, writers wait at most for this one commit.
        """
        try:
            self._ensure_schema()
            self._check_file_identity()
            millis = max(1, int(timeout * 1000))
            with self._guard(), self._engine.execution_options(carerix_write=True).connect() as conn:
                raw = conn.connection.dbapi_connection
                if self.dialect == "sqlite":
                    raw.execute(f"PRAGMA busy_timeout={millis}")  # type: ignore[union-attr]
                try:
                    with conn.begin():  # BEGIN IMMEDIATE on SQLite: the writers' lock
                        if self.dialect == "postgresql":
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {millis}")
                            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_INSERT_LOCK)))
                        # A row added and taken away again: the page is written (an update to the same
                        # value would not be: SQLite skips rewriting a cell whose content is unchanged).
                        conn.execute(schema_version.insert().values(id=_PROBE_ROW, version=0))
                        conn.execute(schema_version.delete().where(schema_version.c.id == _PROBE_ROW))
                finally:
                    if self.dialect == "sqlite":
                        raw.execute("PRAGMA busy_timeout=30000")  # type: ignore[union-attr]
            self._check_file_identity()  # committed into the file at the path, not an orphan
        except StoreUnavailable:
            raise
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def restart_needed(self) -> StoreUnavailable | None:
        """Why only a restart brings this store back (its SQLite file replaced or removed), or ``None``.

        One ``stat``, no query: cheap enough for a liveness probe, which then fails so an orchestrator
        restarts the receiver (a new process opens the file now at the path).
        """
        try:
            self._check_file_identity()
        except StoreUnavailable as exc:
            return exc
        return None


class _Counts(Protocol):
    stored: int
    duplicates: int
    stored_ids: list[str]


def insert_counted(
    store: EventStore, items: Sequence[tuple[Any, EventPayload, Provenance]], result: _Counts
) -> None:
    """``store.insert_many(items)``, counting what was new (and its ids) and what the store already held.

    Shared by recovery and the coverage sweep, which store events the receiver did not deliver.
    """
    if not items:
        return
    for (_, event, _), (_, inserted) in zip(items, store.insert_many(items), strict=True):
        if inserted:
            result.stored += 1
            result.stored_ids.append(event.id)
        else:
            result.duplicates += 1
