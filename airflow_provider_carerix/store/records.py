"""What the store hands out and takes in: plain, frozen records."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_carerix.definitions.models import EventPayload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """Outcome of one attempt to take a consumer's lease."""

    acquired: bool
    holder: str | None
    until: datetime | None


@dataclass(frozen=True)
class StoreIdentity:
    """Which store this is (``store_id`` is random, made once) and where this process reaches it."""

    store_id: str
    created_at: datetime
    url: str  # password hidden


@dataclass(frozen=True)
class ReceiverSeen:
    """A receiver's last heartbeat in this store."""

    receiver_id: str
    kind: str
    host: str | None
    pid: int | None
    version: str | None
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True)
class StoredEvent:
    """One stored delivery. ``payload`` is parsed from ``raw``, the exact text Carerix sent."""

    sequence: int
    event_id: str
    type: str
    time: datetime
    tenant: str | None
    application_id: str | None
    webhook_id: str | None
    entity_id: str | None
    received_at: datetime
    payload: dict[str, Any] = field(repr=False)
    raw: str = field(default="", repr=False, compare=False)
    #: True: ``Cx-Signature`` checked against a key of its application; False: accepted without (no key
    #: known yet); None: not applicable (recovered from Carerix's delivery log over its API, or stored
    #: before signatures were recorded).
    signature_verified: bool | None = None
    #: Stored by recovery from Carerix's delivery log rather than delivered to the receiver.
    recovered: bool = False


@dataclass(frozen=True)
class Provenance:
    """How an event reached the store, recorded beside it (``insert_many`` items may carry one)."""

    signature_verified: bool | None = None
    recovered: bool = False


_DELIVERED = Provenance()


_Item = tuple[bytes | str, EventPayload] | tuple[bytes | str, EventPayload, Provenance]


def _stored_event(row: Any) -> StoredEvent:
    """One row of the events table as the readers see it."""
    return StoredEvent(
        sequence=row.sequence,
        event_id=row.event_id,
        type=row.type,
        time=row.time,
        tenant=row.tenant,
        application_id=row.application_id,
        webhook_id=row.webhook_id,
        entity_id=row.entity_id,
        received_at=row.received_at,
        payload=json.loads(row.payload),
        raw=row.payload,
        signature_verified=row.signature_verified,
        recovered=bool(row.recovered),
    )


def key_fingerprint(public_key: str) -> str:
    """SHA-256 (hex) of a PEM's base64 body: the same key written with other line breaks has one fingerprint."""
    body = "".join(
        line.strip()
        for line in public_key.strip().splitlines()
        if line.strip() and not line.startswith("-----")
    )
    return hashlib.sha256(body.encode("ascii", "replace")).hexdigest()
