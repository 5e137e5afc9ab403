"""Keep Carerix's webhooks equal to ``specs/carerix_webhooks.yaml``, every day.

The spec holds the Carerix guide's six popular examples (placement active or closed, candidate open for work,
match updated, match stage Intake, new match, new publication), all delivered to one receiver.

Set up before the first run:

* Connection ``carerix_default``, type **Carerix**: API base URL (``https://api.carerix.io``), Client ID
  (``urn:{vendor}/{application name}``), Client Secret, Realm (your tenant, e.g. ``csmdemo``) and, when your
  tenant is not on ``id.carerix.io``, the identity host (``https://id-2.carerix.io``, ...). As an environment
  variable: ``AIRFLOW_CONN_CARERIX_DEFAULT='{"conn_type": "carerix", "host": "https://api.carerix.io",
  "extra": {"client_id": "...", "client_secret": "...", "realm": "..."}}'``.
* Variable ``carerix_receiver_url``: where Carerix should POST events (your receiver, e.g.
  ``https://airflow.example.com/carerix/events``). Against Carerix itself it must be a public https URL:
  loopback, private and link-local addresses, ``localhost`` and plain ``http://`` fail the run (they are fine
  when the connection points at the local emulator; ``allow_unreachable_urls=True`` on the operator permits
  them for setups where Carerix does reach such an address).
* Variable ``carerix_receiver_secret``: the value of the header Carerix sends with every delivery, which the
  receiver checks. It is masked in task logs and rendered templates, and never returned to XCom.

Both Variables are required: a run without one fails and names it; an empty value fails validation.

Each run validates the whole spec (nothing is changed if any part is wrong), creates what is missing,
replaces what changed, re-enables webhooks Carerix disabled and deletes webhooks that are not in the spec.
A run with nothing to do writes nothing. A failed run is finished by the next one.

Trigger with a conf to try things: ``{"dry_run": true}`` plans only; ``{"prune": false}`` keeps webhooks of the
application that the spec does not mention (at other URLs); ``{"spec": "specs/other.yaml"}`` syncs another spec.
"""

from __future__ import annotations

# [START howto_sync_webhooks_dag]
import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_carerix.operators.webhooks import CarerixSyncWebhooksOperator

with DAG(
    dag_id="carerix_provision_webhooks",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two syncs at once would race each other's creates
    tags=["carerix", "provisioning"],
    params={
        "spec": Param(
            "specs/carerix_webhooks.yaml",
            type="string",
            description="Spec file, relative to this DAG's folder (or absolute).",
        ),
        "prune": Param(True, type="boolean", description="Delete webhooks that are not in the spec."),
        "dry_run": Param(False, type="boolean", description="Log the plan, change nothing."),
    },
    doc_md=__doc__,
):
    CarerixSyncWebhooksOperator(
        task_id="sync_webhooks",
        spec="{{ params.spec }}",
        prune="{{ params.prune }}",
        dry_run="{{ params.dry_run }}",
        carerix_conn_id="carerix_default",
    )
# [END howto_sync_webhooks_dag]
