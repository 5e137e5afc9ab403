"""Carerix events for a DAG: the Asset it is scheduled on, and the events its task processes, in one object.

.. code-block:: python

    open_for_work = CarerixEvents("candidates_open_for_work", event_types=["cremployee:updated"])

    with DAG("candidates_open_for_work", schedule=[open_for_work]):

        @task
        def load_candidates():
            with open_for_work.claim() as events:
                for event in events:
                    load_candidate(event["data"]["entityId"])

:class:`CarerixEvents` is an ``Asset`` whose ``AssetWatcher`` runs a
:class:`~airflow_provider_carerix.triggers.events.CarerixEventTrigger`: each matching stored event becomes an
asset event, which starts (or joins) a run. The asset events are only the wake-up: :meth:`CarerixEvents.claim`
takes every event the consumer (named after the object) has not processed yet from the store, oldest first,
and records them as processed when the ``with`` block exits cleanly. So a run woken by a burst takes the whole
burst, a run that fails records nothing (its retry gets the same events plus newer ones), and a run that
finds nothing new is a no-op. A lease on the consumer in the store makes concurrent runs take turns: no
``max_active_runs=1`` needed.

One task instance per event (retried and shown on its own) is the other shape, on the same consumer lease:

.. code-block:: python

    @task
    def reserve() -> list[str]:
        return open_for_work.reserve()  # this run's events, ids only

    @task(retries=3)
    def handle(event_id: str) -> None:
        with open_for_work.claim_event(event_id) as event:  # recorded processed when the block exits cleanly
            load_candidate(event["data"]["entityId"])

    @task
    def release() -> None:
        open_for_work.release()  # what failed tasks left goes to the next run at once

    handle.expand(event_id=reserve()) >> release().as_teardown()

:meth:`CarerixEvents.reserve` keeps the run's events from every other run while the run is alive (its lease,
then Airflow's word that it is queued or running); :meth:`CarerixEvents.claim_event` records each event once,
in any order, and the processed cursor moves over the contiguous prefix of processed events.

The scheduler sees only the serialised Asset (name, URI, watcher); the worker re-parses the DAG file, so
``claim`` runs on the same module-level object the DAG declared.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_provider_carerix.hooks import reservations
from airflow_provider_carerix.hooks.event_store import (
    DEFAULT_CONN_ID,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_START_FROM,
    CarerixEventStoreHook,
    Claim,
    ClaimedEvent,
    normalise_start_from,
)
from airflow_provider_carerix.store.filters import EventFilter
from airflow_provider_carerix.triggers.events import DEFAULT_POLL_INTERVAL, CarerixEventTrigger
from airflow_provider_carerix.version_compat import AirflowSkipException, Asset, AssetWatcher

__all__ = ["CarerixEvents"]

log = logging.getLogger(__name__)

# Declared in this process (one DAG file parse, or one task's re-parse): the same consumer name with another
# filter is an error at parse time. Across files the store catches it at the first claim (owner DAG).
_DECLARED: dict[str, tuple[EventFilter, str | None]] = {}


def _current_task() -> tuple[str | None, str]:
    """(dag_id, a readable, unique lease holder) of the code calling ``claim()``.

    The holder is unique per claim whatever the process: two claims must never pass for one holder, or both
    would hold the lease at once. Inside a task the context names the run and try; where the context is not
    available (``@task.virtualenv``, ``@task.external_python``, ``@task.docker``, a plain script) Airflow's
    ``AIRFLOW_CTX_*`` environment variables still name the DAG when they were passed on.
    """
    dag_id = run_id = try_number = None
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context().get("ti")
        dag_id = getattr(ti, "dag_id", None)
        run_id = getattr(ti, "run_id", None)
        try_number = getattr(ti, "try_number", None)
    except Exception:
        dag_id = os.environ.get("AIRFLOW_CTX_DAG_ID") or None
        run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or None
        try_number = os.environ.get("AIRFLOW_CTX_TRY_NUMBER") or None
    where = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if dag_id is None:
        return None, f"outside a task ({where})"
    return dag_id, f"{dag_id} run {run_id} try {try_number} ({where})"


#: Airflow's DAG run states in which a run may still run tasks (a run cleared after it ended is queued again).
_ALIVE_STATES = ["queued", "running"]


@dataclass(frozen=True)
class _Run:
    """The DAG run and task try calling ``reserve()``, ``claim_event()`` or ``release()``."""

    dag_id: str
    run_id: str
    #: Unique per call, readable: "<dag> run <run_id> task <task>[<map index>] try <n> (<host>:<pid>:<id>)".
    holder: str
    ti: Any


def _current_run(what: str) -> _Run:
    """The run and try of the task calling ``what``; a clear error outside a task (there is no run then).

    Inside a task the context names them; where it is not available (``@task.virtualenv`` and the like)
    Airflow's ``AIRFLOW_CTX_*`` environment variables still do, but the run's state cannot be asked there.
    """
    ti = None
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context().get("ti")
        dag_id, run_id = getattr(ti, "dag_id", None), getattr(ti, "run_id", None)
        task_id, try_number = getattr(ti, "task_id", None), getattr(ti, "try_number", None)
        map_index = getattr(ti, "map_index", None)
    except Exception:
        ti = None
        dag_id = os.environ.get("AIRFLOW_CTX_DAG_ID") or None
        run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or None
        task_id = os.environ.get("AIRFLOW_CTX_TASK_ID") or None
        try_number = os.environ.get("AIRFLOW_CTX_TRY_NUMBER") or None
        map_index = None
    if not dag_id or not run_id:
        raise RuntimeError(
            f"CarerixEvents.{what} runs inside an Airflow task: it works for the task's DAG run. Outside a task, "
            "process events with claim()"
        )
    task = f"{task_id}[{map_index}]" if map_index not in (None, -1) else str(task_id)
    where = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return _Run(dag_id, run_id, f"{dag_id} run {run_id} task {task} try {try_number} ({where})", ti)


def _context_ti() -> Any:
    """The running task instance (None outside a task's own context)."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context().get("ti")
    except Exception:
        return None


def _alive_in_airflow(ti: Any) -> reservations.Alive:
    """Whether a run of this DAG is still queued or running, asked through the task's own Airflow API."""

    def alive(run_id: str, dag_id: str | None) -> bool | None:
        if ti is None or not hasattr(ti, "get_dr_count"):
            return None
        try:
            count = ti.get_dr_count(dag_id=dag_id or ti.dag_id, run_ids=[run_id], states=_ALIVE_STATES)
        except Exception as exc:
            log.warning(
                "Cannot ask Airflow whether run %s is still running (%s): its events stay reserved for it",
                run_id,
                type(exc).__name__,
            )
            return None
        return int(count) > 0

    return alive


def _max_map_length() -> int:
    """Airflow's ``[core] max_map_length``: a mapped task cannot expand over a longer list."""
    try:
        from airflow.configuration import conf

        return conf.getint("core", "max_map_length", fallback=1024)
    except Exception:
        return 1024


class CarerixEvents(Asset):
    """Stored Carerix events of some types (and condition, webhook, application, tenant) for one DAG.

    :param name: the Asset's name and the consumer's name in the store; unique per DAG.
    :param event_types: ``entity:action`` patterns (``cremployee:updated``, ``crmatch:*``, ``*:created``).
    :param condition: Carerix condition language, evaluated on the payload (``data.statusinfo eq '1'``).
    :param webhook_id: only events Carerix delivered for this webhook.
    :param application_id: only events of this webhook application.
    :param tenant: only events of this tenant.
    :param start_from: where a new consumer starts (once; an existing consumer keeps its position):
        ``"deployed"`` (default) takes every event stored since the DAG was deployed, paused or not;
        ``"earliest"`` every event still stored; ``"new"`` only events stored once the DAG runs; an ISO 8601
        time (``"2026-01-31T08:00:00Z"``, a ``datetime``) or a duration back from then (``"7d"``, a
        ``timedelta``) the events received since.
    :param store_conn_id: Airflow connection of the event store (default ``carerix_event_store``; without it,
        ``[carerix] event_store_url``, then ``$AIRFLOW_HOME/carerix_events.db``; see the settings page).
    :param poll_interval: seconds between store queries in the triggerer (PostgreSQL wakes on NOTIFY).
    :param lease_seconds: how long a claim holds the consumer without renewing (renewed every third of it
        while the block runs); after a crash the next run takes over after at most this long.
    :param uri: the Asset's URI (default: ``name``); ``group``, ``extra``, ``access_control`` as for Asset.
    """

    def __init__(
        self,
        name: str,
        *,
        event_types: str | Iterable[str],
        condition: str | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        start_from: str | datetime | timedelta = DEFAULT_START_FROM,
        store_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        uri: str | None = None,
        **asset_kwargs: Any,
    ) -> None:
        flt = EventFilter.build(event_types, condition, webhook_id, application_id, tenant)
        start = normalise_start_from(start_from)
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        where = sys._getframe(1).f_globals.get("__file__")
        declared = _DECLARED.get(name)
        # The same file parsed again (an edited DAG in a long-lived process) may change its own filter.
        if declared is not None and declared[0] != flt and declared[1] != where:
            raise ValueError(
                f"CarerixEvents {name!r} is declared twice with different filters ({declared[0].serialize()} in "
                f"{declared[1]} and {flt.serialize()} in {where}): the name is the consumer in the store, give "
                "each its own name"
            )
        _DECLARED[name] = (flt, where)
        trigger = CarerixEventTrigger(
            **flt.serialize(),
            consumer=name,
            poll_interval=poll_interval,
            store_conn_id=store_conn_id,
            start_from=start,
        )
        super().__init__(
            name=name,
            uri=uri or name,
            watchers=[AssetWatcher(name=f"{name}_watcher", trigger=trigger)],
            **asset_kwargs,
        )
        self.filter = flt
        self.start_from = start
        self.store_conn_id = store_conn_id
        self.lease_seconds = float(lease_seconds)

    @contextlib.contextmanager
    def claim(self, limit: int | None = None, *, wait_timeout: float | None = None) -> Iterator[Claim]:
        """Every event not processed yet, oldest first; recorded as processed when the block exits cleanly.

        An exception in the block records nothing: the retry gets the same events plus newer ones. While
        another run of the same consumer holds it, this waits (with a log line); ``wait_timeout`` seconds
        bound that wait. ``limit`` caps the events of one claim (``claim.has_more`` says more are left; the
        next claim takes them).
        """
        dag_id, holder = _current_task()
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id)
        try:
            with hook.claim(
                self.name,
                self.filter,
                owner=dag_id,
                limit=limit,
                lease_seconds=self.lease_seconds,
                wait_timeout=wait_timeout,
                holder=holder,
                start_from=self.start_from,
                alive=_alive_in_airflow(_context_ti()),
            ) as claim:
                yield claim
        finally:
            hook.close()

    # -- one task instance per event -------------------------------------------------------------------------

    def reserve(self, limit: int | None = None, *, wait_timeout: float | None = None) -> list[str]:
        """Reserve this run's events and return their ids, oldest first: what a mapped task expands over.

        Every event the consumer has not processed and no other live run holds is reserved for this DAG run
        until the run is over: no other run (and no ``claim()``) gets it meanwhile. Only ids are returned (a
        small XCom); :meth:`claim_event` reads each event from the store. Called again in the same run (a
        retry, a cleared run), it returns the same ids in the same order. An empty list maps zero task
        instances: the mapped task is skipped, not failed.

        ``limit`` caps the events of one run; it defaults to, and cannot exceed, Airflow's
        ``[core] max_map_length`` (1024 by default), the longest list a task can be mapped over. What is left
        goes to the next run. ``wait_timeout`` bounds the wait while a ``claim()`` or another reservation
        holds the consumer (``ConsumerBusy``).
        """
        run = _current_run("reserve()")
        most = _max_map_length()
        if limit is not None and limit > most:
            log.info("reserve(limit=%d) capped at [core] max_map_length = %d", limit, most)
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id)
        try:
            reserved = reservations.reserve(
                hook,
                self.name,
                self.filter,
                run_id=run.run_id,
                dag_id=run.dag_id,
                holder=run.holder,
                limit=most if limit is None else min(limit, most),
                lease_seconds=self.lease_seconds,
                wait_timeout=wait_timeout,
                start_from=self.start_from,
                alive=_alive_in_airflow(run.ti),
            )
        finally:
            hook.close()
        if reserved.has_more:
            log.warning(
                "More events of %r are waiting than one run may map (%d, [core] max_map_length): the next run "
                "takes them",
                self.name,
                most,
            )
        return reserved.event_ids

    @contextlib.contextmanager
    def claim_event(self, event_id: str, *, wait_timeout: float | None = None) -> Iterator[ClaimedEvent]:
        """The event with this id, as :meth:`claim` hands events; recorded processed when the block exits cleanly.

        For the mapped task over what :meth:`reserve` returned. An exception in the block records nothing and
        the task's retry gets the same event. The task is skipped (the block does not run) when the event is
        recorded processed already (an earlier try recorded it and died before Airflow heard) or belongs to
        another run that is still alive. While another try holds the event (one killed a moment ago), this
        waits for its lease to end (``wait_timeout`` bounds that wait).
        """
        run = _current_run("claim_event()")
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id)
        try:
            with contextlib.ExitStack() as stack:
                try:
                    event = stack.enter_context(
                        reservations.claim_event(
                            hook,
                            self.name,
                            event_id,
                            run_id=run.run_id,
                            dag_id=run.dag_id,
                            holder=run.holder,
                            lease_seconds=self.lease_seconds,
                            wait_timeout=wait_timeout,
                            alive=_alive_in_airflow(run.ti),
                        )
                    )
                except reservations.EventNotYours as exc:
                    log.info("%s", exc)
                    raise AirflowSkipException(str(exc)) from None
                yield event
        finally:
            hook.close()

    def release(self) -> int:
        """Give back this run's events that no task recorded processed, for the next run; returns how many.

        For the run's last task, ``release().as_teardown()`` after the mapped task: it runs whatever the
        mapped tasks did, and does not decide the run's state. Without it the events of a run that failed go
        back once the run's lease expired and Airflow no longer has the run queued or running.
        """
        run = _current_run("release()")
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id)
        try:
            return reservations.release(hook, self.name, run_id=run.run_id)
        finally:
            hook.close()
