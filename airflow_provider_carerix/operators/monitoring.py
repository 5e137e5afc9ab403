"""Checks that fail a task when the flow of Carerix events stops, so Airflow's own alerting tells a person.

When Carerix stops delivering (a webhook disabled after failures, an expired secret, a DNS change, a broken
ingress in front of the receiver), or a consumer's DAG stops processing, nothing else fails: DAGs just stop
running. These operators turn that into a failed task, which is what ``on_failure_callback``, e-mail on
failure and Slack notifiers already watch. Schedule them in a monitoring DAG (``example_dags/
carerix_monitoring.py``).

* :class:`CarerixFreshnessOperator` reads the event store (through
  :class:`~airflow_provider_carerix.hooks.event_store.CarerixEventStoreHook`): a consumer's oldest
  unprocessed event older than ``max_age``, or no event of ``event_types`` stored for ``max_silence``,
  optionally counting only business hours.
* :class:`CarerixWebhookHealthOperator` reads Carerix (through the ``carerix`` connection): every webhook of
  the spec's applications disabled, in error, or failing more than ``max_failure_rate`` of its recent
  deliveries; it records what it saw in the store for the Carerix page.

Both fail without retries when they find a problem (the next scheduled run checks again; a retry would only
delay the alert), and with retries when they cannot look (the store or Carerix unreachable).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix import metrics
from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID as DEFAULT_STORE_CONN_ID
from airflow_provider_carerix.operators.webhooks import CarerixSyncWebhooksOperator
from airflow_provider_carerix.version_compat import AirflowFailException, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_carerix.business_hours import BusinessHours
    from airflow_provider_carerix.store import StoredEvent

__all__ = ["CarerixFreshnessOperator", "CarerixWebhookHealthOperator"]


def _duration(value: timedelta | str | float | int | None, name: str) -> timedelta | None:
    """``timedelta``, seconds, or a duration text (``90m``, ``2h``, ``1d``); ``None`` stays ``None``."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)):
        result = timedelta(seconds=value)
    else:
        from airflow_provider_carerix.durations import parse_duration

        try:
            result = parse_duration(str(value))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if result <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return result


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return " ".join(p for p in parts if p) or f"{seconds}s"


def _event_text(event: StoredEvent) -> str:
    return f"sequence {event.sequence}, {event.type}, received {event.received_at.isoformat()}"


class CarerixFreshnessOperator(BaseOperator):
    """Fail when a consumer falls behind, or when events of some types stop arriving.

    :param consumer: a consumer's name (a ``CarerixEvents``' name); with ``max_age``, fail when its oldest
        unprocessed matching event was received longer ago than that. Its filter is the one its claims
        recorded in the store. A name the store does not know fails (a typo would otherwise watch nothing).
    :param max_age: the backlog's age limit: ``timedelta``, seconds or a duration text (``30m``, ``2h``).
    :param event_types: ``entity:action`` patterns; with ``max_silence``, fail when no event of them was
        stored for that long (the store's age counts when it never held one).
    :param max_silence: how long without an event of ``event_types`` is too long.
    :param business_hours: count only time inside these weekly windows (``"Mon-Fri 08:00-18:00"``, several
        separated by ``;`` or as a list; :mod:`~airflow_provider_carerix.business_hours`), in ``timezone``:
        Friday evening to Monday morning is then no silence, and a backlog does not age at night.
    :param timezone: an IANA zone name for ``business_hours`` (default UTC).
    :param store_conn_id: the store's Airflow connection (default ``carerix_event_store``, found as
        everywhere else); ``event_store_url`` when there is no such connection.

    Returns what it measured (sequences, types, ages in seconds; no payload) for XCom.
    """

    template_fields: Sequence[str] = ("consumer", "max_age", "event_types", "max_silence")
    ui_color = "#fff4e0"

    def __init__(
        self,
        *,
        consumer: str | None = None,
        max_age: timedelta | str | float | None = None,
        event_types: str | Sequence[str] | None = None,
        max_silence: timedelta | str | float | None = None,
        business_hours: str | Sequence[str] | None = None,
        timezone: str = "UTC",
        store_conn_id: str | None = DEFAULT_STORE_CONN_ID,
        event_store_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if consumer is None and event_types is None:
            raise ValueError(
                "CarerixFreshnessOperator needs a consumer (with max_age), event_types (with max_silence), or both"
            )
        if (consumer is None) != (max_age is None):
            raise ValueError("consumer and max_age go together: how old its oldest unprocessed event may be")
        if (event_types is None) != (max_silence is None):
            raise ValueError(
                "event_types and max_silence go together: how long without such an event is too long"
            )
        self.consumer = consumer
        self.max_age = max_age
        self.event_types = event_types
        self.max_silence = max_silence
        self.business_hours = business_hours
        self.timezone = timezone
        self.store_conn_id = store_conn_id
        self.event_store_url = event_store_url
        self._hours = self._parse_hours()  # a bad schedule fails the DAG file, not the first run

    def _parse_hours(self) -> BusinessHours | None:
        if not self.business_hours:
            return None
        from airflow_provider_carerix.business_hours import BusinessHours

        return BusinessHours.parse(self.business_hours, self.timezone)

    def _elapsed(self, since: datetime, now: datetime) -> timedelta:
        return self._hours.elapsed(since, now) if self._hours is not None else max(now - since, timedelta(0))

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
        from airflow_provider_carerix.store.filters import EventFilter

        try:
            max_age = _duration(self.max_age, "max_age")
            max_silence = _duration(self.max_silence, "max_silence")
        except ValueError as exc:  # a wrong template stays wrong on retry
            raise AirflowFailException(str(exc)) from None
        hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.event_store_url)
        now = datetime.now(timezone.utc)
        counted = f" of business hours ({self._hours.describe()})" if self._hours else ""
        problems: list[str] = []
        result: dict[str, Any] = {"checked_at": now.isoformat()}
        try:
            where = hook.get_store_location().display
            if self.consumer and max_age is not None:
                consumer = str(self.consumer)
                if not hook.consumer_exists(consumer):
                    raise AirflowFailException(
                        f"Carerix consumer {consumer!r} does not exist in the event store {where}: no watcher or "
                        "claim created it (a typo, another store, or its DAG was never deployed)"
                    )
                flt = hook.recorded_filter(consumer)
                if flt is None:
                    self.log.warning(
                        "Carerix consumer %r: no claim recorded its filter yet, so every event after its processed "
                        "cursor counts as waiting",
                        consumer,
                    )
                    flt = EventFilter.build()
                oldest, waiting = hook.backlog(consumer, flt)
                age = self._elapsed(oldest.received_at, now) if oldest is not None else timedelta(0)
                metrics.gauge(metrics.FRESHNESS_AGE, age.total_seconds(), consumer=consumer)
                result["backlog"] = {
                    "consumer": consumer,
                    "waiting": waiting,
                    "age_seconds": age.total_seconds(),
                    "oldest": None
                    if oldest is None
                    else {
                        "sequence": oldest.sequence,
                        "type": oldest.type,
                        "received_at": oldest.received_at.isoformat(),
                    },
                }
                self.log.info(
                    "Carerix consumer %r: %s event(s) waiting, the oldest %s old%s",
                    consumer,
                    f"{waiting}+" if waiting > 1000 else waiting,
                    _age_text(age),
                    counted,
                )
                if oldest is not None and age > max_age:
                    metrics.incr(metrics.FRESHNESS_STALE, kind="backlog")
                    owner = hook.store.consumer_owner(consumer)
                    problems.append(
                        f"Carerix consumer {consumer!r}"
                        + (f" (DAG {owner!r})" if owner else "")
                        + f": its oldest unprocessed event ({_event_text(oldest)}) is {_age_text(age)} old"
                        + counted
                        + f", more than max_age {_age_text(max_age)}; "
                        + f"{'more than 1000' if waiting > 1000 else waiting} event(s) wait. Is its DAG paused or "
                        "failing, or its watcher stopped (the triggerer's log)?"
                    )
            if self.event_types and max_silence is not None:
                types = [self.event_types] if isinstance(self.event_types, str) else list(self.event_types)
                last = hook.last_event(types)
                since = last.received_at if last is not None else hook.store.identity().created_at
                silent = self._elapsed(since, now)
                result["silence"] = {
                    "event_types": types,
                    "silent_seconds": silent.total_seconds(),
                    "last": None
                    if last is None
                    else {
                        "sequence": last.sequence,
                        "type": last.type,
                        "received_at": last.received_at.isoformat(),
                    },
                }
                self.log.info(
                    "Carerix events of %s: the last %s, %s ago%s",
                    ", ".join(types),
                    f"({_event_text(last)})" if last else "(none stored yet)",
                    _age_text(silent),
                    counted,
                )
                if silent > max_silence:
                    metrics.incr(metrics.FRESHNESS_STALE, kind="silence")
                    last_text = (
                        f"the last: {_event_text(last)}"
                        if last
                        else "none stored since the store was created"
                    )
                    problems.append(
                        f"no Carerix event of {', '.join(types)} stored in {where} for {_age_text(silent)}{counted}, "
                        f"more than max_silence {_age_text(max_silence)} ({last_text}). Is a webhook disabled "
                        "(CarerixWebhookHealthOperator), the receiver unreachable (its /health), or its secret "
                        "changed?"
                    )
        finally:
            hook.close()
        if problems:
            raise AirflowFailException("\n".join(problems))
        return result


class CarerixWebhookHealthOperator(CarerixSyncWebhooksOperator):
    """Fail when a webhook of the spec's applications is disabled, in error, or failing too often.

    Takes the spec the sync takes (a dict, or a YAML/JSON file rendered like the sync's) and reads, for every
    webhook of its applications (the spec's own and any other in them), the status Carerix reports and the
    recent attempts in Carerix's delivery log. The failure names each unhealthy webhook, its application, its
    URL with secrets masked and the last failure status Carerix recorded. The sync's re-enable stays: this
    says why it was needed. Reads only; writes nothing to Carerix.

    :param max_failure_rate: share of failed attempts that is too much (default 0.10: a third of the reported
        point at which Carerix disables a webhook, about 30 % of its last 1,000 deliveries).
    :param window: how far back the delivery log is read (``timedelta``, seconds or ``24h``; default 24 h).
    :param min_attempts: fewer attempts than this in the window are not judged by rate (default 10).
    :param record_health: record what it saw in the event store for the Carerix page (default on; found as
        everywhere: ``store_conn_id``, then ``event_store_url``).

    Returns the report (ids, masked URLs, counts, statuses) for XCom.
    """

    template_fields: Sequence[str] = ("spec", "max_failure_rate", "window")
    ui_color = "#fff4e0"

    def __init__(
        self,
        *,
        spec: Any,
        max_failure_rate: float | str = 0.10,
        window: timedelta | str | float = timedelta(hours=24),
        min_attempts: int = 10,
        record_health: bool = True,
        page_size: int = 100,
        **kwargs: Any,
    ) -> None:
        # A health check is no place to refuse a spec the sync accepted under other settings.
        kwargs.setdefault("allow_unknown_event_types", True)
        kwargs.setdefault("allow_unreachable_urls", True)
        super().__init__(spec=spec, record_signing_keys=False, **kwargs)
        self.max_failure_rate = max_failure_rate
        self.window = window
        self.min_attempts = min_attempts
        self.record_health = record_health
        self.page_size = page_size

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_carerix.provisioning.health import check_webhooks

        try:
            window = _duration(self.window, "window") or timedelta(hours=24)
            rate = float(self.max_failure_rate)
            spec = self.load()
        except ValueError as exc:  # SpecValidationError too: a wrong spec stays wrong on retry
            raise AirflowFailException(str(exc)) from exc
        names = [application.name for application in spec.applications]
        report = check_webhooks(
            self.hook,
            names,
            max_failure_rate=rate,
            min_attempts=self.min_attempts,
            window=window,
            page_size=self.page_size,
        )
        for health in report.webhooks:
            self.log.info("%s", health.explain(window))
        for problem, count in report.problems().items():
            metrics.gauge(metrics.WEBHOOK_UNHEALTHY, count, problem=problem)
        if self.record_health:
            self._record(report)
        if not report.healthy:
            raise AirflowFailException(report.message())
        return report.summary()

    def _record(self, report: Any) -> None:
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook

        rows: dict[str, list[dict[str, Any]]] = {}
        for health in report.webhooks:
            rows.setdefault(health.application_id, []).append(health.row(report.window_start))
        store_hook = CarerixEventStoreHook(store_conn_id=self.store_conn_id, store_url=self.event_store_url)
        try:
            for application_id, application_rows in rows.items():
                store_hook.store.record_webhook_health(application_id, application_rows)
        finally:
            store_hook.close()
