"""Recovery from Carerix's delivery log: store every delivered payload the event store does not hold yet.

Carerix retries a failed delivery for a while (schedule unpublished) and disables webhooks that keep failing;
an outage of the receiver longer than that loses events as far as the receiver knows. They are still in
Carerix's delivery log (``webhookDeliveryJobPage``): one job per event and webhook, holding the body that was
POSTed and every attempt. Recovery reads the log and hands each payload to the store exactly as the receiver
would: same validation, same dedupe on the event id (``insert_many``), so it is safe to run at any time,
twice, or while deliveries arrive: an event is stored once, whichever path brings it first, and consumers
(which read the store by sequence) see it once. Recovered rows are marked ``recovered``.

No Airflow import: the CLI and the operator share this code path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix import metrics
from airflow_provider_carerix.store import Provenance, insert_counted

if TYPE_CHECKING:
    from airflow_provider_carerix.definitions.models import DeliveryJob, EventPayload
    from airflow_provider_carerix.store import EventStore

__all__ = ["RecoveryResult", "recover_events"]

log = logging.getLogger(__name__)

#: Recovered payloads were fetched from Carerix's API with the connection's credentials, not delivered with a
#: signature: "not applicable" rather than "unverified".
RECOVERED = Provenance(signature_verified=None, recovered=True)


@dataclass
class RecoveryResult:
    """Counts and ids only: payloads hold personal data and never go to logs or XCom."""

    jobs: int = 0
    skipped_delivered: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    stored_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "skipped_delivered": self.skipped_delivered,
            "invalid": self.invalid,
        }


def _check(job: DeliveryJob, max_body: int) -> tuple[bytes, EventPayload]:
    """The receiver's own checks on the job's payload (``DeliveryRejected`` says what is wrong)."""
    from airflow_provider_carerix.delivery.payload import DeliveryRejected, parse_event

    if job.payload is None:
        raise DeliveryRejected(422, "the job holds no payload")
    body = job.payload.encode("utf-8")
    if len(body) > max_body:
        raise DeliveryRejected(413, f"body larger than {max_body} bytes")
    return body, parse_event(body)


def recover_events(
    jobs: Iterable[DeliveryJob],
    store: EventStore,
    *,
    only_failed: bool = False,
    batch_size: int = 100,
    max_body: int | None = None,
    say: Callable[[str], None] | None = None,
) -> RecoveryResult:
    """Store every payload of ``jobs`` the store lacks; see the module docstring.

    ``only_failed``: only jobs whose attempts all failed (Carerix never got a 2xx). The default takes every
    job: a 2xx from a receiver that lost its disk is a 2xx too, and a job already stored costs a lookup.
    A payload the receiver would refuse is counted under ``invalid`` (job id, reason) and not stored: the
    run goes on, since one bad job must not block the others, and the operator fails afterwards so it is
    seen.
    """
    from airflow_provider_carerix.delivery.payload import DEFAULT_MAX_BODY, DeliveryRejected

    say = say or log.info
    limit = DEFAULT_MAX_BODY if max_body is None else max_body
    result = RecoveryResult()
    batch: list[tuple[bytes, EventPayload, Provenance]] = []

    def flush() -> None:
        insert_counted(store, batch, result)
        batch.clear()

    for job in jobs:
        result.jobs += 1
        if only_failed and not job.all_failed:
            result.skipped_delivered += 1
            continue
        try:
            body, event = _check(job, limit)
        except DeliveryRejected as exc:
            result.invalid.append({"job": job.id, "status": exc.status_code, "reason": exc.detail})
            say(f"delivery job {job.id}: not stored, {exc.status_code} {exc.detail}")
            continue
        batch.append((body, event, RECOVERED))
        if len(batch) >= batch_size:
            flush()
    flush()
    metrics.incr(metrics.RECOVERY_JOBS, result.stored, outcome="stored")
    metrics.incr(metrics.RECOVERY_JOBS, result.duplicates, outcome="duplicate")
    metrics.incr(metrics.RECOVERY_JOBS, result.skipped_delivered, outcome="skipped")
    metrics.incr(metrics.RECOVERY_JOBS, len(result.invalid), outcome="invalid")
    say(
        f"recovery: {result.jobs} delivery job(s) read, {result.stored} event(s) stored, "
        f"{result.duplicates} already stored, {result.skipped_delivered} skipped as delivered, "
        f"{len(result.invalid)} invalid"
    )
    return result
