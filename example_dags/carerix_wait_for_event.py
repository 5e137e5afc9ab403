"""Wait inside a run for one Carerix event, then use it: here, a match that reaches stage "Intake".

The sensor provisions nothing: a webhook must deliver ``crmatch:updated`` to the receiver (the Carerix guide's
example 4 is in ``specs/carerix_webhooks.yaml``). It waits for an event received after the run started whose
condition holds, deferred in the triggerer (no worker slot while waiting), and hands a reference to the event
(id, type, entity id) to the next task through XCom; the payload stays in the event store, where the next
task reads it. Replace ``1234`` with your tenant's status id of the Intake stage.
"""

from __future__ import annotations

# [START howto_sensor_wait_for_event]
import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
from airflow_provider_carerix.sensors.events import CarerixEventSensor

log = logging.getLogger(__name__)

with DAG(
    dag_id="carerix_wait_for_event",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["carerix", "events"],
    doc_md=__doc__,
):
    wait_for_intake = CarerixEventSensor(
        task_id="wait_for_intake",
        event_types=["crmatch:updated"],
        condition="data.statusinfo eq '1234'",
        timeout=timedelta(hours=12),
    )

    @task
    def start_intake(event: dict[str, Any]) -> dict[str, Any]:
        stored = CarerixEventStoreHook().get_event(event["event_id"])  # the payload, from the store
        log.info("Match %s reached Intake (event %s)", event["entity_id"], event["event_id"])
        assert stored is not None
        return {"match_id": event["entity_id"], "event_id": event["event_id"], "tenant": stored.get("tenant")}

    start_intake(wait_for_intake.output)
# [END howto_sensor_wait_for_event]
