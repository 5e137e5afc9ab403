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
from datetime import datetime, timedelta
from typing import Any

from airflow_provider_carerix.hooks.event_store import (
    DEFAULT_CONN_ID,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_START_FROM,
    CarerixEventStoreHook,
    Claim,
    normalise_start_from,
)
from airflow_provider_carerix.store.filters import EventFilter
from airflow_provider_carerix.triggers.events import DEFAULT_POLL_INTERVAL, CarerixEventTrigger
from airflow_provider_carerix.version_compat import Asset, AssetWatcher

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
            ) as claim:
                yield claim
        finally:
            hook.close()
