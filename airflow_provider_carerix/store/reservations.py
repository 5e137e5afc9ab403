"""Reservations: one task instance per event, exactly once, on the consumer's lease and processed cursor.

``claim()`` records a whole batch at once by moving ``<consumer>:processed``. A DAG that maps one task per
event needs the events of one run kept from every other run until that run is over, and each event recorded
processed on its own, in whatever order its task finishes. The state for that lives beside the cursor:

* **A run's reservation** (``carerix_reservations``): the event ids the run's first task reserved, in order,
  and the run's lease (renewed by that task and by the mapped tasks while they run). The list is kept, so a
  reservation made again in the same run (a retry, a cleared run) returns the same ids at the same indexes.
* **An event's state** (``carerix_event_states``): for each event after the processed cursor that a run
  reserved, the run it is reserved for (``NULL``: given back), the task try processing it right now with its
  own lease, and whether (and by whom) it was recorded processed.

Invariants, kept by every write transaction here and by :meth:`Reservations.finish_claim`:

* every event the consumer's filter matches between the processed cursor and the highest state row has a
  state row (reservations are taken scanning forward from the cursor, under the consumer's lease);
* the processed cursor moves only over a contiguous prefix of processed events: to just before the first
  state row not processed yet, and never past the events a reservation or a claim scanned. State rows at or
  below the cursor are processed by definition and deleted as it passes them.

Who may change what: reserving events and taking back a given-back event need the consumer's lease (so a
``claim()`` holding it sees a stable set); a try may start only an event reserved for its own run whose
processing lease is free or its own; only the try holding an event's processing lease records it. Every
write transaction locks the consumer's row first (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE``), so
the transactions of one consumer run one at a time and the cursor is computed from committed state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_carerix.store.base import _retry_on_disconnect
from airflow_provider_carerix.store.leases import Leases
from airflow_provider_carerix.store.schema import consumers, cursors, event_states, reservations

__all__ = ["PROCESSED_SUFFIX", "Alive", "EventState", "HeldRun", "Reservations", "StartOutcome"]

log = logging.getLogger(__name__)

#: ``<consumer>:processed``, the cursor the Carerix page's lag reads (hooks/event_store.py ``cursor_names``).
PROCESSED_SUFFIX = ":processed"

# A reservation no run needs any more (given back, or its lease long expired, and none of its events still
# reserved) is deleted this long after: a run cleared within that time gets its own list back.
KEEP_RESERVATIONS = timedelta(days=7)

_CHUNK = 500

#: ``alive(run_id, dag_id)``: True while the run is queued or running (Airflow says), False once it is not,
#: None when that cannot be told (counted as alive: an event waits rather than being processed twice).
Alive = Callable[[str, str | None], bool | None]


@dataclass(frozen=True)
class EventState:
    """One event's row: the run it is reserved for, the try in its block, processed or not."""

    sequence: int
    event_id: str
    reserved_by: str | None
    holder: str | None
    lease_until: datetime | None
    processed: bool


@dataclass(frozen=True)
class HeldRun:
    """A run that holds unprocessed events of a consumer, and whether its own lease still says it is alive."""

    run_id: str
    dag_id: str | None
    lease_until: datetime | None
    #: The run's lease has expired, or the run gave its events back, or its reservation is gone.
    expired: bool


@dataclass(frozen=True)
class StartOutcome:
    """What a try found when it came to process an event.

    ``taken`` (its lease is the try's now), ``processed`` (recorded, by ``by``), ``busy`` (another try of the
    run holds it until ``until``), ``elsewhere`` (reserved for run ``by``, or given back when ``by`` is None),
    ``unreserved`` (no run ever reserved it), ``lost`` (the caller no longer held the consumer's lease).
    """

    outcome: str
    by: str | None = None
    until: datetime | None = None


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Reservations(Leases):
    """Per-event reservations and processed state of consumers (see the module docstring)."""

    # -- reads ----------------------------------------------------------------------------------------------

    @_retry_on_disconnect
    def event_states(self, consumer: str, *, after: int = 0) -> dict[int, EventState]:
        """The state rows of ``consumer`` after sequence ``after``, by sequence."""
        self._ensure_schema()
        stmt = (
            sa.select(event_states)
            .where(event_states.c.consumer == consumer, event_states.c.sequence > int(after))
            .order_by(event_states.c.sequence)
        )
        with self._guard(), self._engine.connect() as conn:
            return {
                int(r.sequence): EventState(
                    int(r.sequence),
                    r.event_id,
                    r.reserved_by,
                    r.holder,
                    r.lease_until,
                    r.processed_at is not None,
                )
                for r in conn.execute(stmt)
            }

    @_retry_on_disconnect
    def reserved_ids(self, consumer: str, run_id: str) -> list[str] | None:
        """The event ids run ``run_id`` reserved, in the order it got them; None if it never reserved."""
        self._ensure_schema()
        stmt = sa.select(reservations.c.event_ids).where(
            reservations.c.consumer == consumer, reservations.c.run_id == run_id
        )
        with self._guard(), self._engine.connect() as conn:
            value = conn.execute(stmt).scalar()
        return None if value is None else list(json.loads(value))

    @_retry_on_disconnect
    def held_runs(self, consumer: str) -> list[HeldRun]:
        """Every run that holds unprocessed events of ``consumer``, with its lease and whether it expired."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            now = self._lease_now(conn)
            held = conn.execute(
                sa.select(event_states.c.reserved_by)
                .where(
                    event_states.c.consumer == consumer,
                    event_states.c.reserved_by.is_not(None),
                    event_states.c.processed_at.is_(None),
                )
                .distinct()
            ).scalars()
            runs = list(held)
            found = {
                r.run_id: r
                for run_ids in _chunks(runs)
                for r in conn.execute(
                    sa.select(reservations).where(
                        reservations.c.consumer == consumer, reservations.c.run_id.in_(run_ids)
                    )
                )
            }
        result = []
        for run_id in runs:
            r = found.get(run_id)
            if r is None:
                result.append(HeldRun(run_id, None, None, True))
                continue
            expired = r.released_at is not None or r.lease_until is None or r.lease_until <= now
            result.append(HeldRun(run_id, r.dag_id, r.lease_until, expired))
        return result

    # -- transactions ---------------------------------------------------------------------------------------

    def _state(self, conn: Connection, consumer: str, sequence: int) -> Any:
        """The state row of one event of a consumer (None: never reserved, or at or below the cursor)."""
        return conn.execute(
            sa.select(event_states).where(
                event_states.c.consumer == consumer, event_states.c.sequence == sequence
            )
        ).first()

    def _processed(self, conn: Connection, consumer: str) -> int:
        value = conn.execute(
            sa.select(cursors.c.sequence).where(cursors.c.name == consumer + PROCESSED_SUFFIX)
        ).scalar()
        return int(value or 0)

    def _advance_processed(self, conn: Connection, consumer: str, upto: int | None) -> int:
        """Move the processed cursor over the contiguous prefix of processed events, up to ``upto``.

        ``upto`` is how far every matching event is known to have a state row or to be processed (a scan's
        end); None: the highest state row. State rows at or below the new cursor are deleted. Returns it.
        """
        first_open = conn.execute(
            sa.select(sa.func.min(event_states.c.sequence)).where(
                event_states.c.consumer == consumer, event_states.c.processed_at.is_(None)
            )
        ).scalar()
        if upto is None:
            upto = conn.execute(
                sa.select(sa.func.max(event_states.c.sequence)).where(event_states.c.consumer == consumer)
            ).scalar()
            if upto is None:
                return self._processed(conn, consumer)
        target = int(upto) if first_open is None else min(int(upto), int(first_open) - 1)
        position = int(conn.execute(self._advance_stmt(consumer + PROCESSED_SUFFIX, target)).scalar_one())
        conn.execute(
            event_states.delete().where(
                event_states.c.consumer == consumer, event_states.c.sequence <= position
            )
        )
        return position

    def _renew_run(
        self, conn: Connection, consumer: str, run_id: str, until: datetime, now: datetime
    ) -> None:
        conn.execute(
            reservations.update()
            .where(reservations.c.consumer == consumer, reservations.c.run_id == run_id)
            .values(lease_until=until, released_at=None, updated_at=now)
        )

    @_retry_on_disconnect
    def reserve_events(
        self,
        consumer: str,
        *,
        holder: str,
        run_id: str,
        dag_id: str | None,
        events: Sequence[tuple[int, str]],
        scanned_to: int,
        ttl: float,
    ) -> tuple[list[str], bool] | None:
        """Reserve ``events`` (sequence, id; oldest first) for run ``run_id`` and release the consumer's lease.

        ``holder`` must hold the consumer's lease (None is returned otherwise, and nothing is written):
        ``events`` were read under it. Each is reserved unless it was processed or reserved meanwhile (only
        possible for one a stalled try of a given-back run still holds). ``scanned_to``: every event the
        filter matches up to it is among ``events`` or already has a state row.

        A run that reserved before gets its list again (``(ids, True)``): its events that were given back and
        are still free are reserved for it again; ``events`` is ignored. Otherwise ``(ids reserved, False)``;
        a run that reserved nothing keeps no reservation (reserving again, it looks again).
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            until = now + timedelta(seconds=ttl)
            row = self._lock_consumer(conn, consumer)
            if row is None or row.holder != holder:
                return None
            existing = conn.execute(
                sa.select(reservations.c.event_ids).where(
                    reservations.c.consumer == consumer, reservations.c.run_id == run_id
                )
            ).scalar()
            if existing is not None:
                ids: list[str] = list(json.loads(existing))
                for chunk in _chunks(ids):
                    conn.execute(
                        event_states.update()
                        .where(
                            event_states.c.consumer == consumer,
                            event_states.c.event_id.in_(chunk),
                            event_states.c.reserved_by.is_(None),
                            event_states.c.processed_at.is_(None),
                        )
                        .values(reserved_by=run_id, updated_at=now)
                    )
                self._renew_run(conn, consumer, run_id, until, now)
                self._end_lease(conn, consumer, now)
                return ids, True
            processed = self._processed(conn, consumer)
            wanted = [(int(s), e) for s, e in events if int(s) > processed]
            sequences = [s for s, _ in wanted]
            for chunk in _chunks(wanted):
                insert = self._upsert(event_states).values(
                    [
                        {
                            "consumer": consumer,
                            "sequence": s,
                            "event_id": e,
                            "reserved_by": run_id,
                            "updated_at": now,
                        }
                        for s, e in chunk
                    ]
                )
                conn.execute(insert.on_conflict_do_nothing(index_elements=["consumer", "sequence"]))
            for chunk in _chunks(sequences):
                conn.execute(
                    event_states.update()
                    .where(
                        event_states.c.consumer == consumer,
                        event_states.c.sequence.in_(chunk),
                        event_states.c.reserved_by.is_(None),
                        event_states.c.processed_at.is_(None),
                        sa.or_(event_states.c.lease_until.is_(None), event_states.c.lease_until <= now),
                    )
                    .values(reserved_by=run_id, updated_at=now)
                )
            taken: list[str] = []
            for chunk in _chunks(sequences):
                taken.extend(
                    conn.execute(
                        sa.select(event_states.c.event_id)
                        .where(
                            event_states.c.consumer == consumer,
                            event_states.c.sequence.in_(chunk),
                            event_states.c.reserved_by == run_id,
                            event_states.c.processed_at.is_(None),
                        )
                        .order_by(event_states.c.sequence)
                    ).scalars()
                )
            if taken:  # a run that found nothing holds nothing: run again, it looks again
                conn.execute(
                    reservations.insert().values(
                        consumer=consumer,
                        run_id=run_id,
                        dag_id=dag_id,
                        lease_until=until,
                        event_ids=json.dumps(taken),
                        created_at=now,
                        updated_at=now,
                        released_at=None,
                    )
                )
            self._advance_processed(conn, consumer, scanned_to)
            self._forget_old_reservations(conn, consumer, now)
            self._end_lease(conn, consumer, now)
            return taken, False

    def _end_lease(self, conn: Connection, consumer: str, now: datetime) -> None:
        conn.execute(
            consumers.update()
            .where(consumers.c.name == consumer)
            .values(holder=None, lease_until=None, updated_at=now)
        )

    def _forget_old_reservations(self, conn: Connection, consumer: str, now: datetime) -> None:
        cutoff = now - KEEP_RESERVATIONS
        still_held = (
            sa.select(event_states.c.sequence)
            .where(
                event_states.c.consumer == consumer,
                event_states.c.reserved_by == reservations.c.run_id,
                event_states.c.processed_at.is_(None),
            )
            .exists()
        )
        conn.execute(
            reservations.delete().where(
                reservations.c.consumer == consumer,
                sa.func.coalesce(reservations.c.released_at, reservations.c.lease_until) < cutoff,
                ~still_held,
            )
        )

    def give_back_dead(self, consumer: str, alive: Alive | None) -> int:
        """Give back the unprocessed events of runs that are over; returns how many events went back.

        A run is over when its reservation is gone, or its lease expired (or it gave its events back) and
        ``alive`` says it is no longer queued or running. A run's lease lapses between the tries of its tasks
        (nothing renews it during ``retry_delay``), so an expired lease alone never gives events away.
        One query when no run holds events.
        """
        held = self.held_runs(consumer)
        dead = [
            run.run_id
            for run in held
            if run.expired
            and (
                run.lease_until is None
                or run.dag_id is None
                or (alive is not None and alive(run.run_id, run.dag_id) is False)
            )
        ]
        count = self.give_back_runs(consumer, dead) if dead else 0
        if count:
            log.info(
                "Carerix consumer %r: %d event(s) of run(s) that are over (%s) given back",
                consumer,
                count,
                ", ".join(sorted(dead)),
            )
        return count

    @_retry_on_disconnect
    def give_back_runs(self, consumer: str, run_ids: Collection[str]) -> int:
        """Give back the unprocessed events of runs found dead, for the next run; returns how many.

        Checked again here: a run whose lease was renewed since (a cleared run running again) keeps its
        events; an event a try still holds a live processing lease on stays reserved until that lease ends.
        """
        if not run_ids:
            return 0
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            self._lock_consumer(conn, consumer)
            alive = {
                r.run_id
                for chunk in _chunks(list(run_ids))
                for r in conn.execute(
                    sa.select(reservations.c.run_id).where(
                        reservations.c.consumer == consumer,
                        reservations.c.run_id.in_(chunk),
                        reservations.c.released_at.is_(None),
                        reservations.c.lease_until > now,
                    )
                )
            }
            dead = [r for r in run_ids if r not in alive]
            count = 0
            for chunk in _chunks(dead):
                count += int(
                    conn.execute(
                        event_states.update()
                        .where(
                            event_states.c.consumer == consumer,
                            event_states.c.reserved_by.in_(chunk),
                            event_states.c.processed_at.is_(None),
                            sa.or_(event_states.c.lease_until.is_(None), event_states.c.lease_until <= now),
                        )
                        .values(reserved_by=None, holder=None, lease_until=None, updated_at=now)
                    ).rowcount
                    or 0
                )
                conn.execute(
                    reservations.update()
                    .where(
                        reservations.c.consumer == consumer,
                        reservations.c.run_id.in_(chunk),
                        reservations.c.released_at.is_(None),
                    )
                    .values(released_at=now, updated_at=now)
                )
            return count

    @_retry_on_disconnect
    def release_run(self, consumer: str, run_id: str) -> tuple[int, int]:
        """The run is over: give back its unprocessed events; returns (given back, still in a try's block).

        An event a try still holds a live processing lease on (a stalled try) stays reserved; the run being
        released, it goes to another run once that lease has ended.
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            self._lock_consumer(conn, consumer)
            mine = sa.and_(
                event_states.c.consumer == consumer,
                event_states.c.reserved_by == run_id,
                event_states.c.processed_at.is_(None),
            )
            free = sa.or_(event_states.c.lease_until.is_(None), event_states.c.lease_until <= now)
            given = int(
                conn.execute(
                    event_states.update()
                    .where(mine, free)
                    .values(reserved_by=None, holder=None, lease_until=None, updated_at=now)
                ).rowcount
                or 0
            )
            busy = int(
                conn.execute(sa.select(sa.func.count()).select_from(event_states).where(mine)).scalar_one()
            )
            conn.execute(
                reservations.update()
                .where(reservations.c.consumer == consumer, reservations.c.run_id == run_id)
                .values(released_at=now, updated_at=now)
            )
            return given, busy

    @_retry_on_disconnect
    def start_event(
        self, consumer: str, sequence: int, *, run_id: str, holder: str, ttl: float
    ) -> StartOutcome:
        """Take the processing lease of an event reserved for ``run_id`` for the try ``holder``.

        The lease of another try of the run that has not expired keeps it (``busy``): a try killed with SIGKILL
        is taken over once its lease ends; a stalled one that comes back finds it taken (``finish_event``).
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            until = now + timedelta(seconds=ttl)
            self._lock_consumer(conn, consumer)
            if sequence <= self._processed(conn, consumer):
                return StartOutcome("processed")
            row = self._state(conn, consumer, sequence)
            if row is None:
                return StartOutcome("unreserved")
            if row.processed_at is not None:
                return StartOutcome("processed", row.processed_by)
            if row.reserved_by != run_id:
                return StartOutcome("elsewhere", row.reserved_by)
            if row.holder not in (None, holder) and row.lease_until is not None and row.lease_until > now:
                return StartOutcome("busy", row.holder, row.lease_until)
            conn.execute(
                event_states.update()
                .where(event_states.c.consumer == consumer, event_states.c.sequence == sequence)
                .values(holder=holder, lease_until=until, updated_at=now)
            )
            self._renew_run(conn, consumer, run_id, until, now)
            return StartOutcome("taken", holder, until)

    @_retry_on_disconnect
    def retake_event(
        self, consumer: str, sequence: int, event_id: str, *, run_id: str, holder: str, dead: Collection[str]
    ) -> StartOutcome:
        """Reserve again for ``run_id`` an event of its list that was given back (or whose run in ``dead`` is
        found dead again here), and release the consumer's lease, which ``holder`` must hold (``lost``
        otherwise). ``taken`` when it is the run's again; the try then starts it with :meth:`start_event`."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            lease = self._lock_consumer(conn, consumer)
            if lease is None or lease.holder != holder:
                return StartOutcome("lost")
            try:
                listed = conn.execute(
                    sa.select(reservations.c.event_ids).where(
                        reservations.c.consumer == consumer, reservations.c.run_id == run_id
                    )
                ).scalar()
                if listed is None or event_id not in json.loads(listed):
                    return StartOutcome("unreserved")
                if sequence <= self._processed(conn, consumer):
                    return StartOutcome("processed")
                row = self._state(conn, consumer, sequence)
                if row is None:
                    return StartOutcome("unreserved")
                if row.processed_at is not None:
                    return StartOutcome("processed", row.processed_by)
                if row.lease_until is not None and row.lease_until > now and row.holder != holder:
                    return StartOutcome("busy", row.holder, row.lease_until)
                owner = row.reserved_by
                if owner not in (None, run_id):
                    current = conn.execute(
                        sa.select(reservations.c.released_at, reservations.c.lease_until).where(
                            reservations.c.consumer == consumer, reservations.c.run_id == owner
                        )
                    ).first()
                    alive = current is not None and current.released_at is None and current.lease_until > now
                    if owner not in dead or alive:
                        return StartOutcome("elsewhere", owner)
                    conn.execute(
                        reservations.update()
                        .where(reservations.c.consumer == consumer, reservations.c.run_id == owner)
                        .values(released_at=now, updated_at=now)
                    )
                conn.execute(
                    event_states.update()
                    .where(event_states.c.consumer == consumer, event_states.c.sequence == sequence)
                    .values(reserved_by=run_id, updated_at=now)
                )
                return StartOutcome("taken")
            finally:
                self._end_lease(conn, consumer, now)

    @_retry_on_disconnect
    def renew_event(self, consumer: str, sequence: int, *, run_id: str, holder: str, ttl: float) -> bool:
        """Extend a try's processing lease and its run's lease; False if the try lost the event."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            until = now + timedelta(seconds=ttl)
            self._lock_consumer(conn, consumer)
            result = conn.execute(
                event_states.update()
                .where(
                    event_states.c.consumer == consumer,
                    event_states.c.sequence == sequence,
                    event_states.c.reserved_by == run_id,
                    event_states.c.holder == holder,
                    event_states.c.processed_at.is_(None),
                )
                .values(lease_until=until, updated_at=now)
            )
            if not result.rowcount:
                return False
            self._renew_run(conn, consumer, run_id, until, now)
            return True

    @_retry_on_disconnect
    def finish_event(self, consumer: str, sequence: int, *, run_id: str, holder: str) -> str:
        """Record the event processed if ``holder`` still holds it; move the processed cursor.

        ``recorded``; ``already`` when this holder had recorded it (a commit whose answer was lost); ``lost``
        when another try or run took it over: nothing is written then.
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            self._lock_consumer(conn, consumer)
            row = self._state(conn, consumer, sequence)
            if row is None:
                return "lost"
            if row.processed_at is not None:
                return "already" if row.processed_by == holder else "lost"
            if row.holder != holder or row.reserved_by != run_id:
                return "lost"
            conn.execute(
                event_states.update()
                .where(event_states.c.consumer == consumer, event_states.c.sequence == sequence)
                .values(processed_at=now, processed_by=holder, holder=None, lease_until=None, updated_at=now)
            )
            self._advance_processed(conn, consumer, None)
            return "recorded"

    @_retry_on_disconnect
    def was_processed(self, consumer: str, sequence: int) -> bool:
        """Whether the event is recorded processed for ``consumer`` (at or below its cursor, or by its row)."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            if sequence <= self._processed(conn, consumer):
                return True
            done = conn.execute(
                sa.select(event_states.c.processed_at).where(
                    event_states.c.consumer == consumer, event_states.c.sequence == sequence
                )
            ).scalar()
        return done is not None

    @_retry_on_disconnect
    def abandon_event(self, consumer: str, sequence: int, *, holder: str) -> None:
        """A try's block failed: end its processing lease at once (the event stays reserved for the run)."""
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            self._lock_consumer(conn, consumer)
            conn.execute(
                event_states.update()
                .where(
                    event_states.c.consumer == consumer,
                    event_states.c.sequence == sequence,
                    event_states.c.holder == holder,
                )
                .values(holder=None, lease_until=None, updated_at=now)
            )

    @_retry_on_disconnect
    def finish_claim(
        self, consumer: str, holder: str, *, sequence: int, events: Sequence[tuple[int, str]]
    ) -> bool:
        """``claim()``'s clean exit: record its ``events`` (sequence, id) processed and release the lease.

        Like :meth:`~airflow_provider_carerix.store.leases.Leases.release_lease` with the processed cursor at
        ``sequence`` (the claim's scan end) when the consumer has no state rows. With state rows (events
        reserved by runs), the cursor stops before the first event still unprocessed, and the claimed events
        beyond it get processed rows, so no later claim or reservation hands them out again. False (nothing
        written) when the lease was lost.
        """
        self._ensure_schema()
        with self._guard(), self._write() as conn:
            now = self._lease_now(conn)
            row = self._lock_consumer(conn, consumer)
            if row is None or row.holder != holder:
                return False
            has_rows = conn.execute(
                sa.select(event_states.c.sequence).where(event_states.c.consumer == consumer).limit(1)
            ).first()
            if has_rows is None:
                conn.execute(self._advance_stmt(consumer + PROCESSED_SUFFIX, sequence))
            else:
                claimed = [int(s) for s, _ in events]
                for chunk in _chunks(claimed):
                    conn.execute(
                        event_states.update()
                        .where(
                            event_states.c.consumer == consumer,
                            event_states.c.sequence.in_(chunk),
                            event_states.c.reserved_by.is_(None),
                            event_states.c.processed_at.is_(None),
                        )
                        .values(
                            processed_at=now,
                            processed_by=holder,
                            holder=None,
                            lease_until=None,
                            updated_at=now,
                        )
                    )
                first_open = conn.execute(
                    sa.select(sa.func.min(event_states.c.sequence)).where(
                        event_states.c.consumer == consumer, event_states.c.processed_at.is_(None)
                    )
                ).scalar()
                stop = sequence if first_open is None else min(sequence, int(first_open) - 1)
                beyond = [
                    {
                        "consumer": consumer,
                        "sequence": int(s),
                        "event_id": e,
                        "processed_at": now,
                        "processed_by": holder,
                        "updated_at": now,
                    }
                    for s, e in events
                    if int(s) > stop
                ]
                for chunk in _chunks(beyond):
                    stmt = self._upsert(event_states).values(list(chunk))
                    conn.execute(stmt.on_conflict_do_nothing(index_elements=["consumer", "sequence"]))
                self._advance_processed(conn, consumer, sequence)
            self._end_lease(conn, consumer, now)
            return True
