"""PostgreSQL: the session bounds, the insert lock and the readers' bound (the module docstring of
:mod:`airflow_provider_carerix.store` says why readers never skip an event).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_carerix.store.base import StoreBase, _aware
from airflow_provider_carerix.store.errors import EventRejected
from airflow_provider_carerix.store.grouping import (
    _known_sequences,
    _plan_group,
    _purged_replay,
    _with_refused,
)
from airflow_provider_carerix.store.records import _Item
from airflow_provider_carerix.store.schema import purges
from airflow_provider_carerix.store.sessions import (
    _IN_FLIGHT_MOD,
    _PG_IN_FLIGHT,
    _PG_INSERT_LOCK,
    NOTIFY_CHANNEL,
)

log = logging.getLogger(__name__)


# The part of an insert that runs one writer at a time, as ONE statement so the lock is held only while the server
# executes it (no client round trip, no commit, no fsync). Evaluation order is forced by data dependencies: the
# lock is taken before the first row is stamped (the stamp comes from it), every row is inserted before the
# announcement (it needs min(sequence)), and the unlock waits for the announcement (its key depends on it).
# The lock is session-level because it is released before the commit; an error path releases it explicitly.
_PG_INSERT_GROUP = sa.text(
    f"""
WITH locked AS MATERIALIZED (
    SELECT clock_timestamp() AS stamp FROM (SELECT pg_advisory_lock({_PG_INSERT_LOCK})) AS l
), ins AS (
    INSERT INTO carerix_events
        (event_id, type, time, tenant, application_id, webhook_id, entity_id, received_at, payload,
         signature_verified, recovered)
    SELECT g.event_id, g.type, g.time, g.tenant, g.application_id, g.webhook_id, g.entity_id, locked.stamp,
           g.payload, g.signature_verified, g.recovered
    FROM unnest(
        CAST(:event_id AS text[]), CAST(:type AS text[]), CAST(:time AS timestamptz[]),
        CAST(:tenant AS text[]), CAST(:application_id AS text[]), CAST(:webhook_id AS text[]),
        CAST(:entity_id AS text[]), CAST(:payload AS text[]), CAST(:signature_verified AS boolean[]),
        CAST(:recovered AS boolean[])
    ) WITH ORDINALITY AS g(
        event_id, type, time, tenant, application_id, webhook_id, entity_id, payload, signature_verified,
        recovered, n
    )
    CROSS JOIN locked
    ORDER BY g.n
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, sequence
), announced AS (
    SELECT count(*) AS n FROM (
        SELECT pg_advisory_xact_lock_shared(
            {_PG_IN_FLIGHT}, CAST(min(sequence) % {_IN_FLIGHT_MOD} AS integer)
        ) FROM ins HAVING count(*) > 0 AND CAST(:announce AS boolean)
    ) AS a
)
SELECT
    (SELECT json_agg(json_build_array(event_id, sequence)) FROM ins) AS inserted,
    pg_advisory_unlock({_PG_INSERT_LOCK} + 0 * (SELECT n FROM announced)) AS unlocked
"""
)


_PG_LAST_HANDED_OUT = sa.text(
    "SELECT pg_sequence_last_value(CAST(pg_get_serial_sequence('carerix_events', 'sequence') AS regclass))"
)


_PG_IN_FLIGHT_KEYS = sa.text(
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
    f"AND classid = {_PG_IN_FLIGHT} AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _release_insert_lock(conn: Connection) -> None:
    """After a failed insert: the session-level lock outlives the rollback, so release it or drop the session."""
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        conn.rollback()
    except Exception:
        conn.invalidate()  # closing the session releases every lock it held


class PostgresWrites(StoreBase):
    """Group inserts and the readers' bound on PostgreSQL."""

    def _insert_many_pg(
        self, items: Sequence[_Item], *, refuse_purged: bool
    ) -> list[tuple[int, bool] | EventRejected]:
        """Hand out sequences one writer at a time, commit (and fsync) concurrently; module docstring."""
        ids = list(dict.fromkeys(item[1].id for item in items))
        refused: dict[int, EventRejected] = {}
        with self._guard(), self._engine.connect() as conn:
            try:
                with conn.begin():
                    # Before the lock: a plain read. An id stored by a writer still in flight is not seen here
                    # and is caught by ON CONFLICT below.
                    payloads: dict[str, str] = {}
                    known = _known_sequences(conn, ids, payloads)
                    if refuse_purged:
                        horizon = conn.execute(sa.select(sa.func.max(purges.c.horizon))).scalar()
                        if horizon is not None:
                            horizon = _aware(horizon)
                            for i, item in enumerate(items):
                                if item[1].id not in known and _aware(item[1].time) < horizon:
                                    refused[i] = _purged_replay(item[1], horizon)
                    keep = [item for i, item in enumerate(items) if i not in refused] if refused else items
                    results, rows, slots, repeats = _plan_group(keep, known, payloads)
                    if not rows:
                        return _with_refused(results, refused, len(items))
                    # received_at is the database clock under the lock: it follows sequence order fleet-wide.
                    params: dict[str, Any] = {name: [row[name] for row in rows] for name in rows[0]}
                    params["time"] = [_aware(t) for t in params["time"]]
                    params["announce"] = self._pg_announce_in_flight
                    found = conn.execute(_PG_INSERT_GROUP, params).one()
                    inserted = {event_id: int(sequence) for event_id, sequence in found.inserted or []}
                    # Stored meanwhile by another writer (committed by now: ON CONFLICT waited for it).
                    late = [row["event_id"] for row in rows if row["event_id"] not in inserted]
                    stored_by_others = _known_sequences(conn, late) if late else {}
                    for slot, row in zip(slots, rows, strict=True):
                        event_id = row["event_id"]
                        if event_id in inserted:
                            results[slot] = (inserted[event_id], True)
                        else:
                            results[slot] = (stored_by_others[event_id], False)
                    for index, first in repeats:
                        results[index] = (results[first][0], False)
                    if inserted:
                        # Inside the transaction: listeners wake exactly when the rows become visible.
                        conn.execute(
                            sa.text(
                                "SELECT pg_notify(:channel, s::text) FROM unnest(CAST(:seqs AS bigint[])) AS s"
                            ),
                            {"channel": NOTIFY_CHANNEL, "seqs": sorted(inserted.values())},
                        )
            except BaseException:
                _release_insert_lock(conn)
                raise
        return _with_refused(results, refused, len(items))

    def _pg_read_bound(self, conn: Connection) -> int:
        """The highest sequence readers may be shown now: below every insert that is still in flight.

        Read in this order, each by its own statement, before the caller's query takes its snapshot: the last
        sequence handed out (H), then the announced first sequences of inserts in flight. Any sequence <= H
        belongs to an insert that has committed or rolled back (settled in the caller's later snapshot), that
        is announced (everything from its first sequence on is held back), or that holds the insert lock
        right now (then no sequence above its own exists yet).
        """
        handed_out = conn.execute(_PG_LAST_HANDED_OUT).scalar()
        if handed_out is None:
            return 0
        bound = int(handed_out)
        for (key,) in conn.execute(_PG_IN_FLIGHT_KEYS):
            first = bound - ((bound - int(key)) % _IN_FLIGHT_MOD)  # in-flight sequences are recent
            bound = min(bound, first - 1)
        return bound
