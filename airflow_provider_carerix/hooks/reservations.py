"""One task instance per event over the store hook: reserve a run's events, process each, give back the rest.

The Airflow-facing calls are :meth:`CarerixEvents.reserve`, :meth:`CarerixEvents.claim_event` and
:meth:`CarerixEvents.release` (:mod:`airflow_provider_carerix.events`); they find the run and the try in
the task's context and call these functions. The store keeps the state
(:mod:`airflow_provider_carerix.store.reservations`); what is decided here:

* **Whether a run is alive.** A run's lease in the store is renewed while its tasks run; between the tries of
  a mapped task (``retry_delay``) or while they wait for a worker, nothing renews it. So an expired lease is
  only a question, and ``alive(run_id, dag_id)`` asks Airflow: only a run that is no longer queued or running
  (failed, succeeded, deleted) gives its events to another run. ``None`` (Airflow cannot be asked) counts as
  alive: an event waits rather than being processed twice.
* **Waiting.** A reservation takes the consumer's lease, as ``claim()`` does, so the two shapes take turns on
  one consumer. A try whose event is held by another try of the same run (one killed a moment ago, its
  processing lease not yet expired) waits for that lease, as a claim waits for a busy consumer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from airflow_provider_carerix.hooks.event_store import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_START_FROM,
    CarerixEventStoreHook,
    ClaimedEvent,
    ConsumerBusy,
    LeaseLost,
)
from airflow_provider_carerix.store import StoreUnavailable
from airflow_provider_carerix.store.filters import EventFilter, iso
from airflow_provider_carerix.store.reservations import Alive, StartOutcome

__all__ = [
    "Alive",
    "EventNotReserved",
    "EventNotYours",
    "Reservation",
    "claim_event",
    "release",
    "reserve",
]

log = logging.getLogger(__name__)


_BUSY_LOG_EVERY = 30.0
_FINISH_ATTEMPTS = 5


class EventNotYours(Exception):
    """Nothing for this try to do: the event is recorded processed, or reserved for another run still alive.

    ``reason`` is ``"processed"`` or ``"reserved"``. ``CarerixEvents.claim_event`` makes the task skipped.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventNotReserved(ValueError):
    """The event id is not one this run reserved (or not a stored event at all): a mistake in the DAG."""


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` took for one run: event ids oldest first, and whether more are waiting."""

    consumer: str
    run_id: str
    event_ids: list[str]
    has_more: bool = False
    #: The run had reserved before (a retry or a cleared run): the same ids, in the same order.
    again: bool = False


def reserve(
    hook: CarerixEventStoreHook,
    consumer: str,
    flt: EventFilter,
    *,
    run_id: str,
    dag_id: str | None,
    holder: str,
    limit: int | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    wait_timeout: float | None = None,
    start_from: str = DEFAULT_START_FROM,
    alive: Alive | None = None,
) -> Reservation:
    """Reserve for run ``run_id`` every event of ``consumer`` no run has processed or holds; oldest first.

    Holds the consumer's lease while it reads and writes (a concurrent ``claim()`` or reservation waits, or
    this one waits for it). A run that reserved before gets its own list again. ``limit`` caps the events of
    one reservation (``has_more``: the next run takes the rest).
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be a positive number of events (or None for all)")
    hook.ensure_consumer(consumer, flt, start_from=start_from)
    with contextlib.suppress(StoreUnavailable):
        hook.check_receivers()
    hook._acquire(consumer, owner=dag_id, holder=holder, ttl=lease_seconds, wait_timeout=wait_timeout)
    store = hook.store
    done = False
    try:
        more = False
        # First, in both branches: a run reserving again (a cleared run) may find an event of its own list
        # held by a run that is over since (it took it when this run was over). Given back here, the
        # reservation below makes it this run's again before reserve() returns it; left held, a concurrent
        # new run's give-back would hand it to that run while this one, alive, maps an instance for it.
        store.give_back_dead(consumer, alive)
        if store.reserved_ids(consumer, run_id) is not None:
            result = store.reserve_events(
                consumer,
                holder=holder,
                run_id=run_id,
                dag_id=dag_id,
                events=[],
                scanned_to=0,
                ttl=lease_seconds,
            )
        else:
            after = hook.processed_position(consumer)
            states = store.event_states(consumer, after=after)
            wanted: list[tuple[int, str]] = []
            scanned_to = after
            for stored, matched in hook.matching_after(flt, after):
                state = states.get(stored.sequence)
                if matched and (state is None or (state.reserved_by is None and not state.processed)):
                    if limit is not None and len(wanted) >= limit:
                        more = True
                        break
                    wanted.append((stored.sequence, stored.event_id))
                scanned_to = stored.sequence
            result = store.reserve_events(
                consumer,
                holder=holder,
                run_id=run_id,
                dag_id=dag_id,
                events=wanted,
                scanned_to=scanned_to,
                ttl=lease_seconds,
            )
        if result is None:
            raise LeaseLost(
                f"Carerix consumer {consumer!r}: the consumer's lease expired while reserving (longer than "
                f"lease_seconds={lease_seconds:g}); nothing was reserved"
            )
        done = True  # the reservation's transaction released the consumer's lease
    finally:
        if not done:
            with contextlib.suppress(Exception):
                store.release_lease(consumer, holder)
    ids, again = result
    if again:
        log.info(
            "Carerix consumer %r: run %s reserved before; the same %d event(s) again",
            consumer,
            run_id,
            len(ids),
        )
    else:
        log.info(
            "Carerix consumer %r: %d event(s) reserved for run %s%s",
            consumer,
            len(ids),
            run_id,
            " (more left for the next run)" if more else "",
        )
    return Reservation(consumer, run_id, ids, has_more=more, again=again)


def _not_yours(event_id: str, outcome: StartOutcome, consumer: str) -> EventNotYours | EventNotReserved:
    if outcome.outcome == "processed":
        by = f" by {outcome.by}" if outcome.by else ""
        return EventNotYours(
            f"Carerix event {event_id} is already recorded processed for consumer {consumer!r}{by}: nothing to do",
            "processed",
        )
    if outcome.outcome == "elsewhere" and outcome.by is not None:
        return EventNotYours(
            f"Carerix event {event_id} is reserved for run {outcome.by} of consumer {consumer!r}, which is still "
            "running: that run processes it",
            "reserved",
        )
    return EventNotReserved(
        f"Carerix event {event_id} was not reserved by this run for consumer {consumer!r}: expand the task over "
        "what reserve() returned in the same run"
    )


@contextlib.contextmanager
def claim_event(
    hook: CarerixEventStoreHook,
    consumer: str,
    event_id: str,
    *,
    run_id: str,
    dag_id: str | None,
    holder: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    wait_timeout: float | None = None,
    alive: Alive | None = None,
) -> Iterator[ClaimedEvent]:
    """The event, held by this try while the block runs; recorded processed when the block exits cleanly.

    Raises :class:`EventNotYours` before the block when there is nothing to do (recorded already, or held by
    another run that is alive), :class:`EventNotReserved` for an id this run never reserved. An exception in
    the block records nothing and ends this try's hold at once (the event stays the run's, for the retry).
    """
    store = hook.store
    stored = store.event_by_id(event_id)
    if stored is None:
        raise EventNotReserved(
            f"Carerix event {event_id!r} is not in the event store (purged, or not an event id): expand the "
            "task over what reserve() returned"
        )
    sequence = stored.sequence
    started = time.monotonic()
    logged_at: float | None = None
    while True:
        outcome = store.start_event(consumer, sequence, run_id=run_id, holder=holder, ttl=lease_seconds)
        if outcome.outcome == "taken":
            break
        if outcome.outcome == "elsewhere":
            outcome = _take_back(
                hook,
                consumer,
                stored.event_id,
                sequence,
                outcome.by,
                run_id,
                dag_id,
                holder,
                lease_seconds,
                alive,
            )
            if outcome.outcome == "taken":
                continue  # the run's own again: start it
        if outcome.outcome == "busy":
            now = time.monotonic()
            if wait_timeout is not None and now - started >= wait_timeout:
                raise ConsumerBusy(
                    f"Carerix event {event_id} is being processed by {outcome.by} (lease until "
                    f"{iso(outcome.until) if outcome.until else '?'}); gave up after wait_timeout={wait_timeout:g} s"
                )
            if logged_at is None or now - logged_at >= _BUSY_LOG_EVERY:
                logged_at = now
                log.info(
                    "Carerix event %s is being processed by %s (lease until %s); waiting for it to finish",
                    event_id,
                    outcome.by,
                    iso(outcome.until) if outcome.until else "?",
                )
            time.sleep(0.5)
            continue
        if outcome.outcome == "lost":
            continue  # the consumer's lease expired between taking it and using it: try again
        raise _not_yours(event_id, outcome, consumer)
    if logged_at is not None:
        log.info("Carerix event %s: taken after waiting %.1f s", event_id, time.monotonic() - started)
    stop = threading.Event()
    lost = threading.Event()
    renewer = threading.Thread(
        target=_renew,
        args=(hook, consumer, sequence, run_id, holder, lease_seconds, stop, lost),
        name=f"carerix-event-lease-{event_id}",
        daemon=True,
    )
    renewer.start()
    finished = False
    try:
        yield ClaimedEvent.from_stored(stored)
        stop.set()
        renewer.join()
        finished = True
        if lost.is_set() or _finish(hook, consumer, sequence, run_id, holder) == "lost":
            raise LeaseLost(
                f"Carerix event {event_id}: another try took it over while this one processed it (longer than "
                f"lease_seconds={lease_seconds:g} without a renewal); not recorded as processed by this try"
            )
        log.info("Carerix event %s recorded processed for consumer %r", event_id, consumer)
    finally:
        stop.set()
        if renewer.is_alive():
            renewer.join()
        if not finished:
            # A failed block: give up the hold now, so the retry does not wait for the lease to run out.
            with contextlib.suppress(Exception):
                store.abandon_event(consumer, sequence, holder=holder)


def _take_back(
    hook: CarerixEventStoreHook,
    consumer: str,
    event_id: str,
    sequence: int,
    owner: str | None,
    run_id: str,
    dag_id: str | None,
    holder: str,
    lease_seconds: float,
    alive: Alive | None,
) -> StartOutcome:
    """An event of this run's list that is not reserved for it now: given back (the run had ended and was
    cleared), or held by a run that may be over. Take it back under the consumer's lease when allowed."""
    store = hook.store
    if event_id not in (store.reserved_ids(consumer, run_id) or ()):
        return StartOutcome("unreserved")
    dead: list[str] = []
    if owner is not None:
        run = next((r for r in store.held_runs(consumer) if r.run_id == owner), None)
        if run is None:
            return StartOutcome("lost")  # changed meanwhile: look again
        if not run.expired or (
            run.lease_until is not None
            and run.dag_id is not None
            and (alive is None or alive(owner, run.dag_id) is not False)
        ):
            return StartOutcome("elsewhere", owner)
        dead.append(owner)
    hook._acquire(consumer, owner=dag_id, holder=holder, ttl=lease_seconds, wait_timeout=None)
    try:
        outcome = store.retake_event(consumer, sequence, event_id, run_id=run_id, holder=holder, dead=dead)
    except BaseException:
        with contextlib.suppress(Exception):
            store.release_lease(consumer, holder)
        raise
    if outcome.outcome == "taken":
        log.info(
            "Carerix event %s %s; reserved for run %s again",
            event_id,
            f"was held by run {owner}, which is over" if owner else "had been given back",
            run_id,
        )
    return outcome


def _finish(hook: CarerixEventStoreHook, consumer: str, sequence: int, run_id: str, holder: str) -> str:
    """Record the event; a store blip is retried (a commit whose answer was lost reads back as ``already``)."""
    for attempt in range(1, _FINISH_ATTEMPTS + 1):
        try:
            outcome = hook.store.finish_event(consumer, sequence, run_id=run_id, holder=holder)
        except StoreUnavailable:
            if attempt == _FINISH_ATTEMPTS:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0))
            continue
        return "recorded" if outcome == "already" else outcome
    raise AssertionError("unreachable")


def _renew(
    hook: CarerixEventStoreHook,
    consumer: str,
    sequence: int,
    run_id: str,
    holder: str,
    ttl: float,
    stop: threading.Event,
    lost: threading.Event,
) -> None:
    while not stop.wait(ttl / 3):
        try:
            if not hook.store.renew_event(consumer, sequence, run_id=run_id, holder=holder, ttl=ttl):
                lost.set()
                return
        except Exception as exc:  # a blip: the next renewal (or the finish) decides
            log.warning("Carerix event lease renewal failed: %s", type(exc).__name__)


def release(hook: CarerixEventStoreHook, consumer: str, *, run_id: str) -> int:
    """The run is over: give back its events no task recorded, so the next run takes them; returns how many."""
    given, busy = hook.store.release_run(consumer, run_id)
    if given or busy:
        log.info(
            "Carerix consumer %r: run %s gave back %d unprocessed event(s) for the next run%s",
            consumer,
            run_id,
            given,
            f"; {busy} more once the try still holding each lets go" if busy else "",
        )
    else:
        log.info("Carerix consumer %r: run %s left no unprocessed event", consumer, run_id)
    return given
