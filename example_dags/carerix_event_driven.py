"""Run a pipeline whenever a Carerix candidate (``cremployee``) is updated: event-driven, no schedule.

How it works: the receiver stores every delivery from Carerix; an ``AssetWatcher`` with a
``CarerixEventTrigger`` turns each stored ``cremployee:updated`` into an asset event, and each asset event
makes the scheduler start (or join) a run of this DAG.

Why the task reads the store instead of only its triggering asset events: when many events arrive at once (a
bulk status change in Carerix), Airflow 3 can leave asset events that arrive while a run is being created
without a run until some later event comes. So the asset events are a wake-up; the
task takes every event its consumer has not processed yet from the store (the durable log) and commits the
consumer's processing cursor when it succeeds. A run woken by a straggler finds nothing new and is a no-op.
Every payload stays visible in Airflow: in the task log and in the task's XCom.

Requires a webhook that delivers ``cremployee:updated`` to the receiver (see ``carerix_provision_webhooks``)
and the event store URL on the triggerer and workers (``CARERIX_EVENT_STORE_URL`` or
``[carerix] event_store_url``; default ``$AIRFLOW_HOME/carerix_events.db``).
"""

from __future__ import annotations

# [START howto_event_driven_dag]
import logging
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_carerix.triggers.events import CarerixEventTrigger

log = logging.getLogger(__name__)

# The consumer names this DAG's cursors in the store: keep it stable and unique per watcher.
employee_updates_trigger = CarerixEventTrigger(
    event_types=["cremployee:updated"],
    consumer="carerix_event_driven",
)

employee_updates = Asset(
    "carerix_cremployee_updated",
    watchers=[AssetWatcher(name="carerix_cremployee_updated_watcher", trigger=employee_updates_trigger)],
)


def handle_event(event: dict[str, Any]) -> None:
    """Your code goes here, once per event. ``event["event"]`` is the payload exactly as Carerix sent it."""
    body = event["event"]
    log.info(
        "Candidate %s updated (fields %s), event %s",
        body.get("data", {}).get("entityId"),
        body.get("data", {}).get("changedFields"),
        event["event_id"],
    )


with DAG(
    dag_id="carerix_event_driven",
    schedule=[employee_updates],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two runs draining the same consumer at once would process events twice
    tags=["carerix", "events"],
    doc_md=__doc__,
):

    @task
    def process_employee_updates(**context: Any) -> list[dict[str, Any]]:
        triggering = context["triggering_asset_events"].get(employee_updates, [])
        for asset_event in triggering:
            payload = (asset_event.extra or {}).get("payload") or {}
            if payload.get("status") == "error":
                log.warning("The Carerix watcher reported: %s", payload.get("message"))
            else:
                log.info("Woken by event %s (sequence %s)", payload.get("event_id"), payload.get("sequence"))
        pending = employee_updates_trigger.unprocessed_events()
        log.info(
            "%d triggering asset event(s), %d unprocessed Carerix event(s)", len(triggering), len(pending)
        )
        for event in pending:
            handle_event(event)
        if pending:
            # Only after every event was handled: a failed try leaves the cursor, the retry takes them again.
            employee_updates_trigger.commit_processed(pending[-1]["sequence"])
        return pending

    process_employee_updates()
# [END howto_event_driven_dag]
