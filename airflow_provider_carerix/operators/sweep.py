"""Find Carerix records changed without a webhook event and store events for them (the coverage sweep).

Run it on a schedule (``example_dags/carerix_coverage_sweep.py``: hourly, since the last successful run).
Returns counts only; it reads ids and dates, never a record's personal fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID as DEFAULT_STORE_CONN_ID
from airflow_provider_carerix.operators.base import CarerixBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class CarerixCoverageSweepOperator(CarerixBaseOperator):
    """Store an event for every ``entity`` record changed since ``since`` that no stored event reports.

    The window is ``[since - grace, now - grace]``: it trails by ``grace`` so that a change whose webhook is
    still on its way is not taken for an unreported one (it is swept by the next run if its event never comes),
    and a run that starts where the last successful one started covers every change once. Ids are
    deterministic per record and ``modificationDate``, so overlapping windows and reruns store nothing twice.
    See :mod:`airflow_provider_carerix.coverage` for what counts as reported and what is stored.

    :param entity: as webhooks name it (``cremployee``, ``crvacancy``, ...; not ``crmatch``, which has no key to
        page by).
    :param since: the start: a datetime, an ISO 8601 time, or a duration back from now (``"1h"``). Templated,
        e.g. the last successful run's start (see the example DAG).
    :param grace: how long a webhook may take to arrive (a duration, default ``5m``).
    :param tolerance: how much earlier than ``modificationDate`` an event may be timed and still report it
        (default ``1m``).
    :param tenant: written into the stored events (``None``: none), for DAGs filtering on a tenant.
    :param store_conn_id: Airflow connection of the event store (default ``carerix_event_store``).
    :param event_store_url: the store when there is no such connection (``None``: as everywhere).
    :param page_size: records per GraphQL page.
    """

    template_fields: Sequence[str] = ("since", "entity")
    ui_color = "#e8f1fd"

    def __init__(
        self,
        *,
        entity: str,
        since: datetime | timedelta | str | None,
        grace: str | timedelta = "5m",
        tolerance: str | timedelta = "1m",
        tenant: str | None = None,
        store_conn_id: str | None = DEFAULT_STORE_CONN_ID,
        event_store_url: str | None = None,
        page_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.since = since
        self.grace = grace
        self.tolerance = tolerance
        self.tenant = tenant
        self.store_conn_id = store_conn_id
        self.event_store_url = event_store_url
        self.page_size = page_size

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_carerix.coverage import sweep_records
        from airflow_provider_carerix.definitions.entities import entity as entity_of
        from airflow_provider_carerix.durations import parse_duration, parse_since
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
        from airflow_provider_carerix.version_compat import AirflowFailException

        try:  # a wrong argument or template stays wrong on retry
            ent = entity_of(self.entity)
            if ent.key is None:
                raise ValueError(f"{ent.name} has no key to page by: it cannot be swept")
            grace = self.grace if isinstance(self.grace, timedelta) else parse_duration(self.grace)
            tolerance = (
                self.tolerance if isinstance(self.tolerance, timedelta) else parse_duration(self.tolerance)
            )
            since = parse_since(self.since)
            if since is None:
                raise ValueError(
                    "since is required: where the sweep starts (e.g. '1h', or the last run's start)"
                )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        now = datetime.now(timezone.utc)
        start, until = since - grace, now - grace
        store_hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.event_store_url)
        try:
            store = store_hook.store
            horizon = store.purge_horizon()
            if horizon is not None and start < horizon:
                self.log.warning(
                    "The sweep starts at %s, before the event store's purge horizon %s: events that reported "
                    "changes before it may have been purged, so those changes are swept again (at least once). "
                    "Run the sweep more often than the store's retention",
                    start.isoformat(),
                    horizon.isoformat(),
                )
            self.log.info(
                "Sweeping %s records changed from %s to %s", ent.name, start.isoformat(), until.isoformat()
            )
            records = self.hook.iter_entities(
                ent.name, modified_since=start, fields=[], deleted=ent.deletable, page_size=self.page_size
            )
            result = sweep_records(
                records,
                store,
                ent.name,
                until=until,
                tolerance=tolerance,
                horizon=horizon,
                tenant=self.tenant,
            )
        finally:
            store_hook.close()
        return result.summary()
