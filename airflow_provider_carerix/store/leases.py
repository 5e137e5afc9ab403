"""Consumers' leases: one holder at a time processes a consumer's events, until it releases or its lease
expires; only the holder moves the processed cursor.
"""

from __future__ import annotations

import logging
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_carerix.store.base import StoreBase, _retry_on_disconnect
from airflow_provider_carerix.store.errors import ConsumerOwned
from airflow_provider_carerix.store.records import Lease
from airflow_provider_carerix.store.schema import _utcnow, consumers

log = logging.getLogger(__name__)


class Leases(StoreBase):
    """A consumer's owner DAG and lease, in one write transaction each."""

    def _lease_now(self, conn: Connection) -> datetime:
        """One clock for every holder of a lease: the database's on PostgreSQL (workers on several machines)."""
        if self.dialect == "postgresql":
            return conn.execute(sa.select(sa.func.now())).scalar_one().astimezone(timezone.utc)
        return _utcnow()

    def _lock_consumer(self, conn: Connection, name: str) -> Any:
        stmt = sa.select(consumers).where(consumers.c.name == name)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    @_retry_on_disconnect
    def acquire_lease(self, name: str, *, owner: str | None, holder: str, ttl: float) -> Lease:
        """Take (or renew) the lease of consumer ``name`` for ``holder``; ``ConsumerOwned`` for another DAG."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            until = now + timedelta(seconds=ttl)
            if self.dialect == "postgresql":
                # Two first claims of a new name must not both insert.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(name.encode()))))
            row = self._lock_consumer(conn, name)
            if row is None:
                conn.execute(
                    consumers.insert().values(
                        name=name, owner=owner, holder=holder, lease_until=until, updated_at=now
                    )
                )
                return Lease(True, holder, until)
            if owner is not None and row.owner is not None and row.owner != owner:
                raise ConsumerOwned(name, row.owner, owner)
            if row.holder not in (None, holder) and row.lease_until is not None and row.lease_until > now:
                return Lease(False, row.holder, row.lease_until)
            conn.execute(
                consumers.update()
                .where(consumers.c.name == name)
                .values(owner=row.owner or owner, holder=holder, lease_until=until, updated_at=now)
            )
            return Lease(True, holder, until)

    @_retry_on_disconnect
    def describe_consumer(self, name: str, filter_json: str) -> None:
        """Record which events a consumer takes (JSON of its filter), for people looking at its lag."""
        self._ensure_schema()
        # One upsert: two runs claiming a new consumer at once must not both try to insert its row.
        stmt = self._upsert(consumers).values(name=name, filter=filter_json, updated_at=_utcnow())
        stmt = stmt.on_conflict_do_update(index_elements=[consumers.c.name], set_={"filter": filter_json})
        with self._guard(), self._write() as conn:
            conn.execute(stmt)

    @_retry_on_disconnect
    def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend a held lease; ``False`` if ``holder`` lost it (expired and taken by someone else)."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            result = conn.execute(
                consumers.update()
                .where(consumers.c.name == name, consumers.c.holder == holder)
                .values(lease_until=now + timedelta(seconds=ttl), updated_at=now)
            )
            return bool(result.rowcount)

    @_retry_on_disconnect
    def release_lease(self, name: str, holder: str, *, cursor: str | None = None, sequence: int = 0) -> bool:
        """Advance ``cursor`` to ``sequence`` (if given) and release, atomically, only while still holding.

        ``False`` (and nothing written) when the lease was lost: someone else may be processing the same
        events, so the caller must not report them as processed.
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            row = self._lock_consumer(conn, name)
            if row is None or row.holder != holder:
                return False
            if cursor is not None:
                conn.execute(self._advance_stmt(cursor, sequence))
            conn.execute(
                consumers.update()
                .where(consumers.c.name == name)
                .values(holder=None, lease_until=None, updated_at=now)
            )
            return True

    @_retry_on_disconnect
    def consumer_owner(self, name: str) -> str | None:
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            return conn.execute(sa.select(consumers.c.owner).where(consumers.c.name == name)).scalar()
