"""One task instance per Carerix event: each event processed, retried and shown in the grid on its own.

``CarerixEvents`` is the Asset this DAG is scheduled on, as in ``carerix_event_driven``. ``reserve()`` reserves
for this run every event the DAG has not processed yet and returns their ids (ids only: the payloads stay in
the store); ``handle`` is mapped over them, one task instance per event, and ``claim_event()`` reads its event
and records it processed when the block exits cleanly, exactly once per consumer: a failed instance is retried
with its own event, runs that overlap never get each other's events, and an instance that finds its event
already recorded (an earlier try died after recording it) is skipped. ``release()``, the run's teardown, gives
back what failed instances left, for the next run. A run that finds nothing maps zero instances: ``handle`` is
skipped, the run succeeds.

Requires a webhook that delivers ``cremployee:updated`` to the receiver (see ``carerix_provision_webhooks``)
and the event store on the triggerer and workers: the Airflow connection ``carerix_event_store``, or
``CARERIX_EVENT_STORE_URL`` / ``[carerix] event_store_url`` (default ``$AIRFLOW_HOME/carerix_events.db``).
"""

from __future__ import annotations

# [START howto_event_per_task_complete]
# [START howto_event_per_task]
import logging
from datetime import timedelta

from airflow.sdk import DAG, task

from airflow_provider_carerix.events import CarerixEvents

log = logging.getLogger(__name__)
employee_updates = CarerixEvents("carerix_cremployee_updated_per_task", event_types=["cremployee:updated"])

with DAG("carerix_event_per_task", schedule=[employee_updates], tags=["carerix", "events"]):

    @task
    def reserve() -> list[str]:
        return employee_updates.reserve()  # this run's events, oldest first: ids only

    @task(retries=3, retry_delay=timedelta(seconds=30))
    def handle(event_id: str) -> str:
        with employee_updates.claim_event(event_id) as event:  # recorded when the block exits cleanly
            log.info("Candidate %s updated", event["data"]["entityId"])  # your code, once per event
        return event_id

    @task
    def release() -> None:
        employee_updates.release()  # what failed instances left goes to the next run

    handle.expand(event_id=reserve()) >> release().as_teardown()
# [END howto_event_per_task]
# [END howto_event_per_task_complete]
