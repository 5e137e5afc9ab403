"""Delivering events as Carerix does: one job per event and webhook, every attempt logged, failures retried.

:meth:`DeliveryMixin.deliver` picks the enabled webhooks whose filters match (event type, ``*`` action,
condition), POSTs the guide's payload with the webhook's custom headers and ``Cx-Signature``, and keeps the
job with its attempts (failed ones too: status 0 when the receiver could not be reached). A background thread
retries failed jobs on ``retry_schedule``; the log is what the GraphQL ``webhookDeliveryJobPage`` serves.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import ThreadingHTTPServer
from typing import Any

from airflow_provider_carerix.definitions import conditions, event_types
from airflow_provider_carerix.emulator.signing import SigningMixin
from airflow_provider_carerix.emulator.state import SIGNATURE_HEADER, Delivery, _Job, _now_iso

log = logging.getLogger(__name__)


def _event_type_matches(filter_type: str, event_type: str) -> bool:
    """Case-insensitive; ``crjob:*`` matches every action of the entity (and ``*`` everything)."""
    try:
        return event_types.matches(filter_type, event_type)
    except event_types.EventTypeError:
        return False


def _condition_matches(condition: str | None, event: dict[str, Any]) -> bool:
    if condition is None or not str(condition).strip():
        return True
    try:
        return bool(conditions.parse(str(condition), strict=False).matches(event))
    except ValueError:
        # A condition Carerix could not parse never fires (the guide: a typo means no events).
        return False


class DeliveryMixin(SigningMixin):
    """Delivery jobs: made by :meth:`deliver`, attempted by :meth:`_attempt`, retried by :meth:`retry_due`."""

    def deliver(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = "demo",
        event_id: str | None = None,
        event_time: str | None = None,
        signing: str = "current",
    ) -> list[Delivery]:
        """Queue the guide's payload for every enabled webhook with a matching filter and make the first attempt.

        One delivery job per webhook, as in Carerix; a failed attempt is retried on ``retry_schedule``.
        ``signing``: ``"current"`` (what Carerix does), ``"previous"`` (the key before the last rotation) or
        ``"none"`` (no ``Cx-Signature``), for tests of the receiver.
        """
        if signing not in ("current", "previous", "none"):
            raise ValueError(f"signing must be current, previous or none, got {signing!r}")
        event_id = event_id or str(uuid.uuid4())
        when = event_time or _now_iso()
        jobs: list[_Job] = []
        with self._lock:
            for app_id, hooks in self._hooks.items():
                for hook in hooks.values():
                    if hook.get("status", "enabled") != "enabled" or not hook.get("url"):
                        continue
                    payload = {
                        "id": event_id,
                        "time": when,
                        "type": event_type,
                        "applicationId": app_id,
                        "webhookId": hook["_id"],
                        "tenant": tenant,
                        "data": data,
                    }
                    if any(
                        isinstance(f, dict)
                        and _event_type_matches(str(f.get("eventType", "")), event_type)
                        and _condition_matches(f.get("condition"), payload)
                        for f in hook.get("filters") or []
                    ):
                        job = _Job(
                            id=str(uuid.uuid4()),
                            created=_now_iso(),
                            application_id=app_id,
                            webhook_id=hook["_id"],
                            url=str(hook["url"]),
                            headers=[
                                {"name": str(h["name"]), "value": str(h.get("value", ""))}
                                for h in hook.get("customHeaders") or []
                                if isinstance(h, dict) and h.get("name")
                            ],
                            payload=json.dumps(payload),
                            signing=signing,
                        )
                        self._jobs[job.id] = job
                        jobs.append(job)
        return [self._attempt(job) for job in jobs]

    def _attempt(self, job: _Job) -> Delivery:
        """POST the job's payload once, record the attempt and schedule the next one if it failed."""
        import requests  # the emulator's only third-party need, and only for delivery

        body = job.payload.encode()
        headers = {h["name"]: h["value"] for h in job.headers}
        headers["Content-Type"] = "application/json"
        headers["Cx-Payload-Schema-Version"] = "1"
        if job.signing != "none":
            headers[SIGNATURE_HEADER] = self.sign(job.application_id, body, which=job.signing)
        status, error = 0, None
        response_headers: dict[str, list[str]] = {}
        response_text = ""
        try:
            response = requests.post(job.url, data=body, headers=headers, timeout=self.delivery_timeout)
            status = response.status_code
            response_headers = {k: [v] for k, v in response.headers.items()}
            response_text = response.text[:4096]
        except requests.RequestException as exc:
            error = type(exc).__name__
        ok = 200 <= status < 300
        with self._lock:
            job.attempts.append(
                {
                    "_kind": "WebhookDeliveryJobAttempt",
                    "_id": str(uuid.uuid4()),
                    "_createdDateTime": _now_iso(),
                    "deliveryStatus": "successful" if ok else "failed",
                    "responseStatusCode": status or None,
                    "responseHeaders": json.dumps(response_headers),
                    "responsePayload": response_text if status else error,
                }
            )
            retries_done = len(job.attempts) - 1
            if ok or retries_done >= len(self.retry_schedule):
                job.next_attempt_at = None
            else:
                job.next_attempt_at = time.monotonic() + self.retry_schedule[retries_done]
                self._retry_wakeup.set()
            delivery = Delivery(
                job.webhook_id, job.url, status, json.loads(job.payload), error, job.id, len(job.attempts)
            )
            self.deliveries.append(delivery)
        return delivery

    def retry_due(self, *, now: bool = False) -> list[Delivery]:
        """Make the attempts whose time has come (``now=True``: every scheduled one, whatever its time)."""
        with self._lock:
            clock = time.monotonic()
            due = [
                job
                for job in self._jobs.values()
                if job.next_attempt_at is not None and (now or job.next_attempt_at <= clock)
            ]
            for job in due:
                job.next_attempt_at = None  # taken: a concurrent caller must not attempt it too
                self._in_flight.add(job.id)
        try:
            return [self._attempt(job) for job in due]
        finally:
            with self._lock:
                self._in_flight.difference_update(job.id for job in due)

    def pending_retries(self) -> int:
        """How many jobs still have an attempt scheduled or in flight."""
        with self._lock:
            return sum(
                1
                for job in self._jobs.values()
                if job.next_attempt_at is not None or job.id in self._in_flight
            )

    def jobs(self) -> list[dict[str, Any]]:
        """The delivery log as the GraphQL API answers it, oldest first."""
        with self._lock:
            return [self._job_view(job) for job in self._jobs.values()]

    def _job_view(self, job: _Job) -> dict[str, Any]:
        hook = self._hooks.get(job.application_id, {}).get(job.webhook_id)
        return {
            "_kind": "WebhookDeliveryJob",
            "_id": job.id,
            "_createdDateTime": job.created,
            "headers": [dict(h) for h in job.headers],
            "payload": job.payload,
            "url": job.url,
            "webhook": None
            if hook is None
            else {**hook, "application": {"_kind": self.application_kind, "_id": job.application_id}},
            "attempts": {
                "items": [dict(a) for a in job.attempts],
                "page": 0,
                "size": max(20, len(job.attempts)),
                "totalElements": len(job.attempts),
                "totalPages": 1 if job.attempts else 0,
                "numberOfElements": len(job.attempts),
                "first": True,
                "last": True,
                "sort": "_createdDateTime: ASC",
            },
        }

    def _retry_loop(self, server: ThreadingHTTPServer) -> None:
        while self._server is server:
            with self._lock:
                times = [j.next_attempt_at for j in self._jobs.values() if j.next_attempt_at is not None]
            timeout = max(0.0, min(times) - time.monotonic()) if times else 1.0
            if self._retry_wakeup.wait(min(timeout, 1.0)):
                self._retry_wakeup.clear()
            if self._server is not server:
                return
            try:
                self.retry_due()
            except Exception:  # pragma: no cover - a bug in one retry must not stop the others
                log.exception("Carerix emulator: retrying deliveries failed")
