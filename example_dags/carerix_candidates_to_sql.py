"""Keep a SQL table of every updated candidate's current name, e-mail address and status, fetched from Carerix.

A webhook event only says that a candidate changed (``cremployee:updated``, ``data.entityId``). This DAG's task
claims the events it has not processed yet, fetches the current records of the candidates they name in one
GraphQL request per 100 candidates (a burst of 50 updates to 5 candidates is one request for 5 records), and
upserts them on the candidate's id (SQLite's ``REPLACE`` on the primary key): exactly once per event through ``claim()``, and idempotent, so a retried
try writes the same rows again. Only counts go to XCom: the records hold personal data (docs/data.md).

Requires the ``carerix_default`` connection to ask for the data scope too (its ``scope`` field:
``urn:cx/webhooks:data:manage urn:cx/cx5Wrapper:data:manage``), a webhook delivering ``cremployee:updated`` to
the receiver, and the event store on the triggerer and workers (as for ``carerix_event_driven``). The table is a
SQLite file (the Airflow Variable ``carerix_candidates_db``, default ``$AIRFLOW_HOME/carerix_candidates.db``),
written with the standard library: Airflow's own install has no SQLite hook (``common.sql`` is there, the
``sqlite`` provider is not). With a database provider installed, use its hook's ``insert_rows(...,
replace=True)`` the same way. (The environment is read here for the DAG's own default path, not for a
provider setting.)
"""

from __future__ import annotations

# [START howto_candidates_to_sql]
import os
import sqlite3

from airflow.sdk import DAG, Variable, task

from airflow_provider_carerix.events import CarerixEvents
from airflow_provider_carerix.hooks.carerix import CarerixHook

DB = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "carerix_candidates.db")
FIELDS = ["firstName", "lastName", "emailAddress", "toStatusNode.value"]
TABLE = "CREATE TABLE IF NOT EXISTS candidates (id INTEGER PRIMARY KEY, first, last, email, status)"
UPSERT = "REPLACE INTO candidates VALUES (:employeeID, :firstName, :lastName, :emailAddress, :status)"
candidates = CarerixEvents("carerix_candidates_to_sql", event_types=["cremployee:updated"])

with DAG("carerix_candidates_to_sql", schedule=[candidates], tags=["carerix", "data"]):

    @task
    def load_candidates() -> dict[str, int]:
        with candidates.claim() as claim:  # exactly once per event: recorded as processed on a clean exit
            records = CarerixHook().get_entities("cremployee", claim.entity_ids("cremployee"), FIELDS)
            rows = [{**r, "status": (r["toStatusNode"] or {}).get("value")} for r in records.values()]
            with sqlite3.connect(Variable.get("carerix_candidates_db", DB)) as db:
                db.execute(TABLE)
                db.executemany(UPSERT, rows)  # keyed on the candidate's id: a retry writes the same rows
        return {"events": len(claim), "candidates": len(records)}  # counts only: records stay out of XCom

    load_candidates()
# [END howto_candidates_to_sql]
