"""Hourly safety net: store every Carerix event the receiver never acknowledged, from Carerix's delivery log.

Carerix retries a failed delivery only for a while and may disable a webhook that keeps failing; after an
outage of the receiver longer than that, the events are still in Carerix's delivery log. This DAG reads the
log every hour, since shortly before the last successful run started (the overlap costs a lookup, never a
duplicate: the store dedupes on the event id exactly as it does for deliveries) or the last day on the first
run, and stores what is missing. Recovered events reach event-driven DAGs like delivered ones.

After an outage, also run it at once (trigger the DAG, or ``carerix-webhooks recover --since 2h``), and let
the sync re-enable webhooks Carerix disabled.
"""

from __future__ import annotations

# [START howto_recover_events_dag]
import pendulum
from airflow.sdk import DAG

from airflow_provider_carerix.operators.recovery import CarerixRecoverEventsOperator

with DAG(
    dag_id="carerix_recover_events",
    schedule="@hourly",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["carerix"],
):
    CarerixRecoverEventsOperator(
        task_id="recover_events",
        # Since the last successful recovery (minus ten minutes of overlap), else the last day.
        since=(
            "{{ (prev_start_date_success - macros.timedelta(minutes=10)).isoformat() "
            "if prev_start_date_success else '24h' }}"
        ),
    )
# [END howto_recover_events_dag]
