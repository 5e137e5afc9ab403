"""Know when the flow stops: checks that fail, so Airflow's own alerting tells a person.

When Carerix stops delivering (a webhook disabled after failures, an expired secret, a DNS change, a broken
ingress in front of the receiver), or a consumer's DAG stops processing, nothing else fails: event-driven DAGs
just stop running. Every 15 minutes this DAG checks

* that the example event-driven DAG's consumer has no event waiting longer than 30 minutes of business hours,
* that some candidate event was stored within the last 2 business hours,
* that every webhook of the example spec's application is enabled and fails less than 10 % of its deliveries
  (Carerix disables a webhook at about 30 % of its last 1,000),

and fails the task that found a problem, with a message naming it. Failing is the alert: the callback below
only logs, replace it with what your team watches (``on_failure_callback=SlackNotifier(...)``,
``send_smtp_notification(...)``, or ``email=[...]`` with ``email_on_failure``). The DAG starts paused:
unpause it once the connections (``carerix_default``, the event store) and the thresholds fit your deployment.
"""

from __future__ import annotations

# [START howto_monitoring_dag]
import logging
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_carerix.operators.monitoring import (
    CarerixFreshnessOperator,
    CarerixWebhookHealthOperator,
)

BUSINESS_HOURS = "Mon-Fri 08:00-18:00"


def alert(context):
    """Replace with a notifier (Slack, e-mail, PagerDuty): the task's exception says what is wrong."""
    logging.getLogger("carerix.alert").error(
        "Carerix alert from %s: %s", context["task_instance"].task_id, context.get("exception")
    )


with DAG(
    dag_id="carerix_monitoring",
    schedule=timedelta(minutes=15),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args={"on_failure_callback": alert},
    tags=["carerix", "monitoring"],
):
    # The consumer of example_dags/carerix_event_driven.py: its oldest unprocessed event.
    CarerixFreshnessOperator(
        task_id="employee_updates_processed",
        consumer="carerix_cremployee_updated",
        max_age="30m",
        business_hours=BUSINESS_HOURS,
        timezone="Europe/Amsterdam",
    )
    # Silence: no candidate event at all for two hours of the working week.
    CarerixFreshnessOperator(
        task_id="candidate_events_arrive",
        event_types=["cremployee:*"],
        max_silence="2h",
        business_hours=BUSINESS_HOURS,
        timezone="Europe/Amsterdam",
    )
    # Carerix's side: statuses and the delivery log of every webhook of the spec's application.
    CarerixWebhookHealthOperator(
        task_id="webhooks_healthy",
        spec="specs/carerix_webhooks.yaml",
        max_failure_rate=0.10,
        window="24h",
    )
# [END howto_monitoring_dag]
