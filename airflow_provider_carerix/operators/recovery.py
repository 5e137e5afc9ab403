"""Recover Carerix events the receiver never acknowledged, from Carerix's delivery log, into the event store.

Run it after an outage of the receiver (or on a schedule, as ``example_dags/carerix_recover_events.py`` does):
it is idempotent, so overlapping windows and concurrent deliveries store nothing twice. Returns counts only;
payloads (personal data) never reach the log or XCom.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID as DEFAULT_STORE_CONN_ID
from airflow_provider_carerix.operators.base import CarerixBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class CarerixRecoverEventsOperator(CarerixBaseOperator):
    """Store every delivery-log payload since ``since`` that the event store does not hold yet.

    :param since: jobs queued since then: a datetime, an ISO 8601 time, a duration back from now (``"2h"``),
        or ``None`` for the whole log. Templated, e.g. the last successful run's start (see the example DAG).
    :param only_failed: only jobs whose every attempt failed (by default every job: dedupe makes that safe).
    :param store_conn_id: Airflow connection of the receiver's store (default ``carerix_event_store``).
    :param event_store_url: the receiver's store when there is no such connection (``None``: as everywhere).
    :param page_size: delivery jobs per GraphQL page.
    :param fail_on_invalid: fail the task (after storing everything valid) when a payload is refused by the
        receiver's validation, so it gets looked at; ``False`` only logs and counts them.
    """

    template_fields: Sequence[str] = ("since", "only_failed")
    ui_color = "#fdf1e8"

    def __init__(
        self,
        *,
        since: datetime | timedelta | str | None = None,
        only_failed: bool | str = False,
        event_store_url: str | None = None,
        store_conn_id: str | None = DEFAULT_STORE_CONN_ID,
        page_size: int = 100,
        fail_on_invalid: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.since = since
        self.only_failed = only_failed
        self.event_store_url = event_store_url
        self.store_conn_id = store_conn_id
        self.page_size = page_size
        self.fail_on_invalid = fail_on_invalid

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_carerix.durations import parse_since
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
        from airflow_provider_carerix.operators.webhooks import _as_bool
        from airflow_provider_carerix.recovery import recover_events
        from airflow_provider_carerix.version_compat import AirflowException, AirflowFailException

        since_value = None if isinstance(self.since, str) and self.since.strip() == "None" else self.since
        try:
            since = parse_since(since_value)
        except ValueError as exc:  # a wrong template stays wrong on retry
            raise AirflowFailException(str(exc)) from None
        only_failed = _as_bool(self.only_failed, "only_failed")
        self.log.info(
            "Recovering Carerix deliveries %s%s",
            f"queued since {since.isoformat()}" if since else "from the whole delivery log",
            ", only jobs whose attempts all failed" if only_failed else "",
        )
        store_hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.event_store_url)
        try:
            result = recover_events(
                self.hook.iter_delivery_jobs(since=since, page_size=self.page_size),
                store_hook.store,
                only_failed=only_failed,
                say=self.log.info,
            )
        finally:
            store_hook.close()
        summary = result.summary()
        if result.invalid and self.fail_on_invalid:
            raise AirflowException(
                f"{len(result.invalid)} delivery job(s) hold payloads the receiver refuses (everything else "
                f"was stored): {result.invalid}"
            )
        return summary
