"""Hourly coverage sweep: store events for Carerix changes no webhook reported, so event-driven DAGs see them.

Carerix sends webhooks for some fields and entities only. Every hour this DAG reads the candidates (and
vacancies) changed since the last successful run started (the first run: the last hour), ids and dates only,
and stores an event (``cremployee:updated``, marked ``sweep``) for each change no stored event reports. The DAGs
scheduled on ``CarerixEvents`` for that type (``carerix_candidates_to_sql``) then fetch and load those records
like any other. Reruns and overlapping windows store nothing twice: a swept event's id is the record's id and
``modificationDate``.

Requires the ``carerix_default`` connection with the data scope (``urn:cx/cx5Wrapper:data:manage`` in its
``scope`` field) and the same event store as the receiver.
"""

from __future__ import annotations

# [START howto_coverage_sweep_dag]
import pendulum
from airflow.sdk import DAG

from airflow_provider_carerix.operators.sweep import CarerixCoverageSweepOperator

with DAG(
    dag_id="carerix_coverage_sweep",
    schedule="@hourly",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["carerix", "data"],
):
    for entity in ("cremployee", "crvacancy"):
        CarerixCoverageSweepOperator(
            task_id=f"sweep_{entity}",
            entity=entity,
            # Changes since the last successful run started (the operator trails by its 5 minutes of grace).
            since="{{ prev_start_date_success.isoformat() if prev_start_date_success else '1h' }}",
        )
# [END howto_coverage_sweep_dag]
