"""Wait inside a run for one Carerix event, then use it: here, a match that reaches stage "Intake".

The sensor provisions nothing: a webhook must deliver ``crmatch:updated`` to the receiver (the Carerix guide's
example 4 is in ``specs/carerix_webhooks.yaml``). It waits for an event received after the run started whose
condition holds, deferred in the triggerer (no worker slot while waiting), and hands the payload to the next
task through XCom. Replace ``1234`` with your tenant's status id of the Intake stage.
"""

from __future__ import annotations

# [START howto_sensor_wait_for_event]
import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

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
        body = event["event"]
        match_id = body.get("data", {}).get("entityId")
        log.info(
            "Match %s reached Intake (event %s, tenant %s)", match_id, body.get("id"), body.get("tenant")
        )
        return {"match_id": match_id, "event_id": body.get("id"), "sequence": event["sequence"]}

    start_intake(wait_for_intake.output)
# [END howto_sensor_wait_for_event]
