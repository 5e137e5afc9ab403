"""SQLite: WAL and a lean insert path for one machine, and the file the store must keep writing to."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from airflow_provider_carerix.store.base import StoreBase, _aware
from airflow_provider_carerix.store.errors import EventRejected, StoreUnavailable
from airflow_provider_carerix.store.grouping import _plan_group, _purged_replay, _with_refused
from airflow_provider_carerix.store.records import _Item
from airflow_provider_carerix.store.schema import _utcnow, events, purges

log = logging.getLogger(__name__)


# The columns an insert writes, in the order of the SQLite fast path's parameters (``EventStore._insert_sqlite``).
_COLUMNS = (
    "event_id",
    "type",
    "time",
    "tenant",
    "application_id",
    "webhook_id",
    "entity_id",
    "received_at",
    "payload",
    "signature_verified",
    "recovered",
)


_SQLITE_COLUMNS = ", ".join(_COLUMNS)


_SQLITE_ROW = "(" + ",".join("?" * len(_COLUMNS)) + ")"


class SQLiteFile(StoreBase):
    """Group inserts on SQLite, space reclaimed after a purge, and the file's identity."""

    def _insert_sqlite(
        self, items: Sequence[_Item], *, refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        """One ``BEGIN IMMEDIATE`` transaction on the pooled ``sqlite3`` connection itself.

        The receiver's hot path: SQLAlchemy's per-statement work (compiling, events, result processing) held
        the GIL the receiver's event loop needs for about a millisecond per group; here the same SQL runs with
        SQLAlchemy's own encodings of the values (its bind processors), so the rows are the rows it writes.
        """
        with self._guard():
            pooled = self._engine.raw_connection()
            try:
                db = pooled.driver_connection
                assert db is not None
                db.execute("BEGIN IMMEDIATE")  # the write lock: writers on this file are serialised
                try:
                    results = self._sqlite_group(db, items, refuse_purged)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            finally:
                pooled.close()
        # Committed, but to the file this store opened: if that is no longer the file at the path, the rows
        # live in an orphan and would vanish on restart. Not acknowledged, so Carerix delivers them again.
        self._check_file_identity()
        return results

    def _sqlite_group(
        self, db: sqlite3.Connection, items: Sequence[_Item], refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        encode = self._sqlite_encoders()
        # Stamped once the write lock is held, so received_at follows commit (and sequence) order.
        received_at = _utcnow()
        ids = list(dict.fromkeys(item[1].id for item in items))
        known: dict[str, int] = {}
        payloads: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT event_id, sequence, payload FROM {events.name} WHERE event_id IN ({marks})"
            for event_id, sequence, payload in db.execute(sql, chunk):
                known[event_id] = int(sequence)
                payloads[event_id] = payload
        refused: dict[int, EventRejected] = {}
        if refuse_purged:
            stamp = db.execute(f"SELECT max(horizon) FROM {purges.name}").fetchone()[0]
            horizon = None if stamp is None else self._sqlite_horizon(stamp)
            if horizon is not None:
                for i, item in enumerate(items):
                    if item[1].id not in known and _aware(item[1].time) < horizon:
                        refused[i] = _purged_replay(item[1], horizon)
        keep = [item for i, item in enumerate(items) if i not in refused] if refused else items
        results, rows, slots, repeats = _plan_group(keep, known, payloads)
        inserted: dict[str, int] = {}
        for start in range(0, len(rows), 500):
            chunk_rows = rows[start : start + 500]
            values = ",".join([_SQLITE_ROW] * len(chunk_rows))
            params: list[Any] = []
            for row in chunk_rows:
                row["received_at"] = received_at
                params.extend(encode[name](row[name]) if name in encode else row[name] for name in _COLUMNS)
            sql = (
                f"INSERT INTO {events.name} ({_SQLITE_COLUMNS}) VALUES {values} RETURNING event_id, sequence"
            )
            try:
                found = db.execute(sql, params).fetchall()
            except (ValueError, OverflowError, TypeError) as exc:
                # A value the driver cannot bind (the message may quote it: type only).
                raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
            inserted.update((event_id, int(sequence)) for event_id, sequence in found)
        for slot, row in zip(slots, rows, strict=True):
            results[slot] = (inserted[row["event_id"]], True)
        for index, first in repeats:
            results[index] = (results[first][0], False)
        return _with_refused(results, refused, len(items))

    def _sqlite_encoders(self) -> dict[str, Callable[[Any], Any]]:
        """SQLAlchemy's bind processors of the columns that have one (times as text, booleans as 0/1)."""
        if self._encoders is None:
            dialect = self._engine.dialect
            encoders: dict[str, Callable[[Any], Any]] = {}
            for column in events.c:
                processor = column.type.dialect_impl(dialect).bind_processor(dialect)
                if processor is not None:
                    encoders[column.name] = processor
            self._encoders = encoders
            return encoders
        return self._encoders

    def _sqlite_horizon(self, stamp: Any) -> datetime | None:
        dialect = self._engine.dialect
        decode = purges.c.horizon.type.dialect_impl(dialect).result_processor(dialect, None)
        value = decode(stamp) if decode is not None else stamp
        return None if value is None else _aware(value)

    def _reclaim_sqlite_space(self, *, full: bool) -> None:
        """Give freed pages back: small incremental steps (each a short write), or one full VACUUM."""
        with self._guard(), self._engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            mode = raw.execute("PRAGMA auto_vacuum").fetchone()[0]
            if full or mode != 2:
                if not full:
                    if raw.execute("PRAGMA freelist_count").fetchone()[0]:
                        log.warning(
                            "The Carerix event store keeps its freed space (created before incremental "
                            "vacuum): run `carerix-receiver purge --vacuum` once in a quiet moment"
                        )
                    return
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                raw.execute("VACUUM")
            else:
                while raw.execute("PRAGMA freelist_count").fetchone()[0]:
                    raw.execute("PRAGMA incremental_vacuum(512)").fetchall()
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _check_file_identity(self) -> None:
        """``StoreUnavailable`` when the SQLite file was removed or replaced since the store opened it.

        SQLite keeps writing to the file it has open, even once it is unlinked or renamed over: events would
        be acknowledged into a file nobody will read again (after a restart they are gone and sequences
        restart at 1). One ``stat`` per group of inserts detects it. Nothing reopens the new file by itself:
        a replaced store is an operator's decision (restore, then restart the receiver).
        """
        if self._file_identity is None:
            return
        current = self._stat_file()
        if current is None:
            raise StoreUnavailable(
                "the SQLite event store file was removed while in use; restore it and restart", "file_removed"
            )
        if current != self._file_identity:
            raise StoreUnavailable(
                "the SQLite event store file was replaced while in use (another file is at its path now); "
                "restart to use it",
                "file_replaced",
            )
