"""Webhook health: is Carerix still delivering, and if not, why? Read from Carerix itself, never guessed.

Carerix disables a webhook that keeps failing (reported: about 30 % of its last 1,000 deliveries), and from
then on nothing is delivered and nothing in Airflow fails. The sync re-enables such a webhook on its next
run; this check tells a person *why* that was needed, before it is: for every webhook of the spec's
applications it reads the status Carerix reports (``enabled``, ``disabled``, ``error``) and the webhook's
recent attempts in the delivery log (``webhookDeliveryJobPage``), and reports a webhook that is disabled, in
error, or whose failure rate passed a threshold well below Carerix's own point of giving up.

What it reports names the webhook, its application, its URL with secrets masked (``display_url``: no
credentials, no query string) and the last failure Carerix recorded (the HTTP status, or "no response"),
so the message alone says where to look: a 401 is a secret that changed, no response is DNS or a firewall,
a 503 the receiver's store. No header value or payload is ever read into the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from airflow_provider_carerix.definitions.models import Application, DeliveryJob, Webhook
from airflow_provider_carerix.definitions.redaction import display_url

__all__ = [
    "DEFAULT_MAX_FAILURE_RATE",
    "DEFAULT_MIN_ATTEMPTS",
    "DEFAULT_WINDOW",
    "HealthReport",
    "WebhookHealth",
    "check_webhooks",
]

log = logging.getLogger(__name__)

#: Failed share of recent attempts that makes a webhook unhealthy: a third of the reported auto-disable point
#: (about 30 % of the last 1,000), so a person hears of it long before Carerix gives up.
DEFAULT_MAX_FAILURE_RATE = 0.10
#: Fewer attempts than this in the window say nothing about a rate (one failure of two is not 50 %).
DEFAULT_MIN_ATTEMPTS = 10
#: How far back the delivery log is read.
DEFAULT_WINDOW = timedelta(hours=24)
#: Per webhook, the most recent attempts that count (Carerix's own rule looks at the last 1,000).
DEFAULT_SAMPLE = 1000


class HealthApi(Protocol):
    """The part of :class:`~airflow_provider_carerix.hooks.carerix.CarerixHook` the check uses (reads only)."""

    def list_applications(self) -> list[Application]: ...

    def list_webhooks(self, application_id: str) -> list[Webhook]: ...

    def iter_delivery_jobs(
        self, *, since: datetime | None = None, page_size: int = 100
    ) -> Iterable[DeliveryJob]: ...


@dataclass
class WebhookHealth:
    """One webhook as the check saw it. ``url`` is already masked."""

    application_id: str
    application_name: str
    webhook_id: str
    url: str
    status: str
    attempts: int = 0
    failed: int = 0
    last_failure_status: int | None = None
    last_failure_at: datetime | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.attempts if self.attempts else None

    @property
    def healthy(self) -> bool:
        return not self.problems

    def last_failure(self) -> str:
        if self.last_failure_at is None:
            return "no failed delivery in the window"
        status = (
            f"HTTP {self.last_failure_status}"
            if self.last_failure_status
            else "no response (connection failed or timed out)"
        )
        return f"{status} at {self.last_failure_at.isoformat()}"

    def explain(self, window: timedelta) -> str:
        """One line a person can act on (no header value, no payload)."""
        rate = self.failure_rate
        said = []
        if "disabled" in self.problems:
            said.append("disabled in Carerix, nothing is delivered")
        if "error" in self.problems:
            said.append("in error in Carerix, nothing is delivered")
        if self.attempts:
            said.append(
                f"{self.failed} of {self.attempts} deliveries failed in the last {_span(window)}"
                + (f" ({rate:.0%})" if rate is not None else "")
                + (", too many" if "failure_rate" in self.problems else "")
            )
        else:
            said.append(f"no delivery in the last {_span(window)}")
        head = f"webhook {self.webhook_id} of application {self.application_name!r} ({self.url})"
        return f"{head}: {'; '.join(said)}; last failure: {self.last_failure()}"

    def row(self, window_start: datetime) -> dict[str, Any]:
        """What the store records for the Carerix page (``record_webhook_health``)."""
        return {
            "webhook_id": self.webhook_id,
            "application_name": self.application_name,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "failed": self.failed,
            "failure_rate": self.failure_rate,
            "last_failure_status": self.last_failure_status,
            "last_failure_at": self.last_failure_at,
            "problems": list(self.problems),
            "window_start": window_start,
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for XCom: ids, the masked URL, counts and statuses."""
        return {
            "application": self.application_name,
            "webhook_id": self.webhook_id,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "failed": self.failed,
            "failure_rate": None if self.failure_rate is None else round(self.failure_rate, 4),
            "last_failure_status": self.last_failure_status,
            "last_failure_at": self.last_failure_at.isoformat() if self.last_failure_at else None,
            "problems": list(self.problems),
        }


@dataclass
class HealthReport:
    webhooks: list[WebhookHealth]
    window: timedelta
    window_start: datetime
    missing_applications: list[str] = field(default_factory=list)

    @property
    def unhealthy(self) -> list[WebhookHealth]:
        return [w for w in self.webhooks if not w.healthy]

    @property
    def healthy(self) -> bool:
        return not self.unhealthy and not self.missing_applications

    def problems(self) -> dict[str, int]:
        """How many webhooks have each problem (for ``carerix.webhooks.unhealthy``)."""
        return {p: sum(p in w.problems for w in self.webhooks) for p in ("disabled", "error", "failure_rate")}

    def message(self) -> str:
        lines = [w.explain(self.window) for w in self.unhealthy]
        lines += [
            f"application {name!r} does not exist in Carerix (run the sync to create it)"
            for name in self.missing_applications
        ]
        return f"{len(lines)} Carerix webhook problem(s):\n" + "\n".join(f"  {line}" for line in lines)

    def summary(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "window_start": self.window_start.isoformat(),
            "webhooks": [w.summary() for w in self.webhooks],
            "missing_applications": list(self.missing_applications),
        }


def _span(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0 and seconds > 2 * 86400:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def check_webhooks(
    hook: HealthApi,
    application_names: Sequence[str],
    *,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    min_attempts: int = DEFAULT_MIN_ATTEMPTS,
    window: timedelta = DEFAULT_WINDOW,
    sample: int = DEFAULT_SAMPLE,
    now: datetime | None = None,
    page_size: int = 100,
) -> HealthReport:
    """Read every webhook of the named applications and their recent attempts; judge each (reads only).

    A webhook is unhealthy when Carerix reports it ``disabled`` or ``error``, or when more than
    ``max_failure_rate`` of its last ``sample`` attempts in the ``window`` failed (with at least
    ``min_attempts`` attempts: fewer say nothing about a rate).
    """
    if not 0 <= max_failure_rate <= 1:
        raise ValueError(f"max_failure_rate must be between 0 and 1, got {max_failure_rate!r}")
    now = now or datetime.now(timezone.utc)
    window_start = now - window
    by_name: dict[str, list[Application]] = {}
    for application in hook.list_applications():
        by_name.setdefault(application.name or "", []).append(application)
    found: list[WebhookHealth] = []
    missing: list[str] = []
    for name in dict.fromkeys(application_names):
        applications = by_name.get(name, [])
        if not applications:
            missing.append(name)
        for application in applications:
            assert application.id is not None
            for webhook in hook.list_webhooks(application.id):
                if not webhook.id:
                    continue
                found.append(
                    WebhookHealth(
                        application_id=application.id,
                        application_name=name,
                        webhook_id=webhook.id,
                        url=display_url(webhook.url),
                        status=webhook.status or "enabled",
                    )
                )
    by_id = {w.webhook_id: w for w in found}
    if by_id:
        _count_attempts(
            hook.iter_delivery_jobs(since=window_start, page_size=page_size), by_id, window_start, sample
        )
    for health in found:
        if health.status in ("disabled", "error"):
            health.problems.append(health.status)
        elif health.status != "enabled":
            log.warning(
                "Carerix reports webhook %s with an unknown status %r", health.webhook_id, health.status
            )
        rate = health.failure_rate
        if rate is not None and health.attempts >= min_attempts and rate > max_failure_rate:
            health.problems.append("failure_rate")
    return HealthReport(found, window, window_start, missing)


def _count_attempts(
    jobs: Iterable[DeliveryJob], by_id: dict[str, WebhookHealth], window_start: datetime, sample: int
) -> None:
    """Count each webhook's attempts in the window (newest first, at most ``sample`` each)."""
    attempts: dict[str, list[tuple[datetime, bool, int | None]]] = {}
    for job in jobs:
        webhook_id = job.webhook_id
        if webhook_id not in by_id:
            continue
        for attempt in job.attempts:
            when = attempt.created or job.created
            if when is None:
                continue
            when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
            if when < window_start:
                continue
            attempts.setdefault(webhook_id, []).append((when, attempt.failed, attempt.response_status_code))
    for webhook_id, seen in attempts.items():
        recent = sorted(seen, key=lambda a: a[0], reverse=True)[:sample]
        health = by_id[webhook_id]
        health.attempts = len(recent)
        failures = [a for a in recent if a[1]]
        health.failed = len(failures)
        if failures:
            health.last_failure_at, _, health.last_failure_status = failures[0]
