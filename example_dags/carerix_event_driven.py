"""Run a pipeline whenever a Carerix candidate (``cremployee``) is updated: event-driven, no schedule.

``CarerixEvents`` is the Asset this DAG is scheduled on: its watcher turns each stored ``cremployee:updated``
into an asset event, which starts (or joins) a run. In the task, ``claim()`` hands over every event this DAG
has not processed yet, oldest first, and records them as processed when the block exits cleanly: a run woken
by a burst takes the whole burst, a failed try records nothing (the retry gets the same events), and runs of
this DAG that overlap take turns on the store's lease instead of processing an event twice.

Requires a webhook that delivers ``cremployee:updated`` to the receiver (see ``carerix_provision_webhooks``)
and the event store on the triggerer and workers: the Airflow connection ``carerix_event_store``, or
``CARERIX_EVENT_STORE_URL`` / ``[carerix] event_store_url`` (default ``$AIRFLOW_HOME/carerix_events.db``).
"""

from __future__ import annotations

# [START howto_event_driven_dag_complete]
# [START howto_event_driven_dag]
import logging

from airflow.sdk import DAG, task

from airflow_provider_carerix.events import CarerixEvents

log = logging.getLogger(__name__)
employee_updates = CarerixEvents("carerix_cremployee_updated", event_types=["cremployee:updated"])

with DAG("carerix_event_driven", schedule=[employee_updates], tags=["carerix", "events"]):

    @task
    def process_employee_updates() -> list[str]:
        with employee_updates.claim() as events:
            for event in events:
                log.info("Candidate %s updated", event["data"]["entityId"])  # your code, once per event
            # [END howto_event_driven_dag]
            return [event.event_id for event in events]  # ids only: payloads stay out of XCom

    process_employee_updates()
# [END howto_event_driven_dag_complete]
