"""Wait inside a DAG run for one Carerix event (e.g. "this match reached stage Intake").

The sensor reads the provider's event store, which the receiver fills from Carerix's webhook deliveries. It
provisions nothing: a webhook whose filters cover the wanted event must exist (see the provisioning operators).

The XCom ``return_value`` is a reference to the stored event, never its payload (personal data stays out of
Airflow's database and logs)::

    {"status": "event", "event_id": "...", "type": "crmatch:updated", "entity_id": "1234",
     "sequence": 42, "received_at": "..."}

A downstream task reads the payload with ``CarerixEventStoreHook().get_event(event_id)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.definitions.event_types import normalise_patterns
from airflow_provider_carerix.hooks.event_store import (
    DEFAULT_CONN_ID,
    CarerixEventStoreHook,
    check_url_has_no_password,
)
from airflow_provider_carerix.store import StoreUnavailable
from airflow_provider_carerix.store.filters import EventFilter, event_payload, parse_time
from airflow_provider_carerix.triggers.events import DEFAULT_POLL_INTERVAL, CarerixEventSensorTrigger
from airflow_provider_carerix.version_compat import (
    AirflowException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["CarerixEventError", "CarerixEventSensor"]


class CarerixEventError(AirflowException):
    """The trigger reported an error (store unreachable, bad condition, ...) instead of an event."""


class CarerixEventSensor(BaseSensorOperator):
    """Succeed on the first stored Carerix event that matches, received after ``since``.

    :param event_types: ``entity:action`` patterns (``crmatch:updated``, ``crmatch:*``, ``*:created``, ``*``).
    :param condition: Carerix condition language evaluated on the payload (``data.statusinfo eq '1234'``).
    :param webhook_id: only events delivered for this webhook.
    :param application_id: only events of this webhook application.
    :param tenant: only events of this tenant.
    :param since: take events received after this instant (ISO 8601 or datetime; templated). Default: the DAG
        run's start, so a run waits for an event that happens after it began or takes one already stored.
    :param deferrable: wait in the triggerer (default) instead of holding a worker slot.
    :param poll_interval: seconds between store queries in the triggerer (PostgreSQL wakes on NOTIFY).
    :param store_conn_id: Airflow connection of the event store (default ``carerix_event_store``; without
        it, ``[carerix] event_store_url``, then ``$AIRFLOW_HOME``: the order of every component).
    :param store_url: a password-less store URL instead of the connection.
    :param timeout: seconds (or timedelta) from the start of the try; an absolute deadline is handed to the
        trigger and to Airflow's deferral timeout, so it holds across triggerer restarts.
    """

    template_fields: Sequence[str] = (
        "event_types",
        "condition",
        "webhook_id",
        "application_id",
        "tenant",
        "since",
    )
    ui_color = "#f3e6ff"

    def __init__(
        self,
        *,
        event_types: str | Iterable[str],
        condition: str | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        tenant: str | None = None,
        since: str | datetime | None = None,
        deferrable: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        store_url: str | None = None,
        store_conn_id: str = DEFAULT_CONN_ID,
        poke_interval: timedelta | float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.event_types = [event_types] if isinstance(event_types, str) else list(event_types)
        self.condition = condition
        self.webhook_id = webhook_id
        self.application_id = application_id
        self.tenant = tenant
        self.since = since
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.store_url = check_url_has_no_password(store_url)
        self.store_conn_id = store_conn_id
        self._position = 0
        self._since: datetime | None = None
        # Fail at parse time, not at run time, for what can be checked without templates.
        if not any("{{" in t for t in self.event_types):
            normalise_patterns(self.event_types)

    def _filter(self) -> EventFilter:
        return EventFilter.build(
            self.event_types, self.condition, self.webhook_id, self.application_id, self.tenant
        )

    def _hook(self) -> CarerixEventStoreHook:
        return CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.store_url)

    def _resolve_since(self, context: Context) -> datetime:
        explicit = parse_time(self.since) if self.since not in (None, "", "None") else None
        if explicit is not None:
            return explicit
        dag_run = context.get("dag_run")
        start = getattr(dag_run, "start_date", None) if dag_run is not None else None
        if start is None:
            return datetime.now(timezone.utc)
        return start if start.tzinfo else start.replace(tzinfo=timezone.utc)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        if self._since is None:
            self._since = self._resolve_since(context)
        flt = self._filter()
        hook = self._hook()
        try:
            found, self._position = hook.find_first(flt, after=self._position, since=self._since)
        except StoreUnavailable as exc:
            # Transient: keep waiting (the sensor's timeout still bounds the wait).
            self.log.warning("Carerix event store unavailable, will retry: %s", exc)
            return False
        finally:
            hook.close()
        if found is None:
            return False
        self.log.info(
            "Carerix event %s (%s, sequence %d) matched", found.event_id, found.type, found.sequence
        )
        return PokeReturnValue(is_done=True, xcom_value=event_payload(found))

    def execute(self, context: Context) -> Any:
        self._since = self._resolve_since(context)
        self._position = 0
        if not self.deferrable:
            return super().execute(context)
        # Check once: an event already stored needs no triggerer round trip.
        first = self.poke(context)
        if isinstance(first, PokeReturnValue) and first.is_done:
            return first.xcom_value
        flt = self._filter()
        deadline = datetime.now(timezone.utc) + timedelta(seconds=self.timeout)
        self.defer(
            trigger=CarerixEventSensorTrigger(
                event_types=list(flt.event_types),
                condition=flt.condition,
                webhook_id=flt.webhook_id,
                application_id=flt.application_id,
                tenant=flt.tenant,
                since=self._since.isoformat(),
                deadline=deadline.isoformat(),
                poll_interval=self.poll_interval,
                store_conn_id=self.store_conn_id,
                store_url=self.store_url,
            ),
            method_name="execute_complete",
            # Airflow stores now + timeout in the database: it survives a triggerer restart. The trigger also
            # gets the deadline and reports "timeout" itself (dag.test() ignores deferral timeouts).
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise CarerixEventError(f"unexpected trigger event: {event!r}")
        status = event.get("status")
        if status == "event":
            self.log.info(
                "Carerix event %s (%s, sequence %s) matched",
                event.get("event_id"),
                event.get("type"),
                event.get("sequence"),
            )
            return event
        if status == "timeout":
            raise AirflowSensorTimeout(event.get("message") or "timed out waiting for a Carerix event")
        raise CarerixEventError(event.get("message") or f"Carerix event trigger failed: {event!r}")
