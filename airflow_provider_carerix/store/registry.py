"""What other parts record in the store beside events: signing keys (provisioning), the webhooks as the
last sync left them (the Carerix page), the store's identity and the receivers' heartbeats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from airflow_provider_carerix import settings
from airflow_provider_carerix.store.base import StoreBase, _retry_on_disconnect
from airflow_provider_carerix.store.errors import StoreUnavailable
from airflow_provider_carerix.store.records import ReceiverSeen, StoreIdentity, key_fingerprint
from airflow_provider_carerix.store.schema import (
    _ID_MAX,
    _utcnow,
    receivers,
    signing_keys,
    store_info,
    webhook_health,
    webhooks,
)

log = logging.getLogger(__name__)


class Registry(StoreBase):
    """Signing keys, the webhooks snapshot, the store's identity and receivers' heartbeats."""

    @_retry_on_disconnect
    def record_signing_key(self, application_id: str, public_key: str, algorithm: str | None = None) -> bool:
        """Remember the key an application's deliveries are signed with now; True when it was not known yet.

        The key recorded last is the application's current one; any other key of the application becomes
        superseded now (and stays valid for the rotation window the reader asks for).
        """
        self._ensure_schema()
        fingerprint = key_fingerprint(public_key)
        now = _utcnow()
        with self._guard(), self._write() as conn:
            existing = conn.execute(
                sa.select(signing_keys.c.fingerprint).where(
                    signing_keys.c.application_id == application_id, signing_keys.c.fingerprint == fingerprint
                )
            ).scalar()
            conn.execute(
                signing_keys.update()
                .where(
                    signing_keys.c.application_id == application_id,
                    signing_keys.c.fingerprint != fingerprint,
                    signing_keys.c.superseded_at.is_(None),
                )
                .values(superseded_at=now)
            )
            if existing is None:
                conn.execute(
                    signing_keys.insert().values(
                        application_id=application_id,
                        fingerprint=fingerprint,
                        algorithm=algorithm,
                        public_key=public_key.strip() + "\n",
                        first_seen=now,
                        last_seen=now,
                        superseded_at=None,
                    )
                )
            else:
                conn.execute(
                    signing_keys.update()
                    .where(
                        signing_keys.c.application_id == application_id,
                        signing_keys.c.fingerprint == fingerprint,
                    )
                    .values(last_seen=now, superseded_at=None, algorithm=algorithm)
                )
        return existing is None

    @_retry_on_disconnect
    def signing_keys(self, application_id: str, *, rotation_window: timedelta) -> list[str]:
        """PEM public keys valid for the application now: the current one, then those superseded less than
        ``rotation_window`` ago (newest first). Empty when provisioning never recorded a key for it."""
        self._ensure_schema()
        cutoff = _utcnow() - rotation_window
        stmt = (
            sa.select(signing_keys.c.public_key)
            .where(
                signing_keys.c.application_id == application_id,
                sa.or_(signing_keys.c.superseded_at.is_(None), signing_keys.c.superseded_at > cutoff),
            )
            .order_by(signing_keys.c.superseded_at.is_not(None), signing_keys.c.last_seen.desc())
        )
        with self._guard(), self._engine.connect() as conn:
            return [row.public_key for row in conn.execute(stmt)]

    @_retry_on_disconnect
    def has_signing_keys(self) -> bool:
        """Whether provisioning ever recorded a signing key here (then receivers require signatures)."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            return conn.execute(sa.select(signing_keys.c.application_id).limit(1)).first() is not None

    @_retry_on_disconnect
    def record_webhooks(self, application_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace what is known of one application's webhooks with ``rows`` (one transaction).

        Each row: ``webhook_id``, ``application_name``, ``url``, ``filters`` (list of dicts), ``status``,
        ``sync_action``. Header values are never passed here: the snapshot is shown to people.
        """
        self._ensure_schema()
        now = _utcnow()
        values = [
            {
                "application_id": application_id,
                "webhook_id": str(row["webhook_id"]),
                "application_name": row.get("application_name"),
                "url": row.get("url"),
                "filters": json.dumps(row.get("filters") or [], separators=(",", ":")),
                "status": row.get("status"),
                "sync_action": row.get("sync_action"),
                "seen_at": now,
            }
            for row in rows
        ]
        with self._guard(), self._write() as conn:
            conn.execute(webhooks.delete().where(webhooks.c.application_id == application_id))
            if values:
                conn.execute(webhooks.insert(), values)

    @_retry_on_disconnect
    def record_webhook_health(self, application_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace what the last health check saw of one application's webhooks with ``rows`` (one transaction).

        Each row: ``webhook_id``, ``application_name``, ``url`` (masked), ``status``, ``attempts``, ``failed``,
        ``failure_rate``, ``last_failure_status``, ``last_failure_at``, ``problems`` (list of words),
        ``window_start``. Counts and statuses only: no payload, no header value.
        """
        self._ensure_schema()
        now = _utcnow()
        values = [
            {
                "application_id": application_id,
                "webhook_id": str(row["webhook_id"]),
                "application_name": row.get("application_name"),
                "url": row.get("url"),
                "status": row.get("status"),
                "attempts": int(row.get("attempts") or 0),
                "failed": int(row.get("failed") or 0),
                "failure_rate": row.get("failure_rate"),
                "last_failure_status": row.get("last_failure_status"),
                "last_failure_at": row.get("last_failure_at"),
                "problems": json.dumps(list(row.get("problems") or []), separators=(",", ":")),
                "window_start": row.get("window_start"),
                "checked_at": now,
            }
            for row in rows
        ]
        with self._guard(), self._write() as conn:
            conn.execute(webhook_health.delete().where(webhook_health.c.application_id == application_id))
            if values:
                conn.execute(webhook_health.insert(), values)

    @_retry_on_disconnect
    def identity(self) -> StoreIdentity:
        """This store's random id (the same for every component that shares it) and its URL, password hidden."""
        self._ensure_schema()
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(sa.select(store_info.c.store_id, store_info.c.created_at)).first()
        if row is None:  # created between two schema checks: cannot happen after migration 7, be safe
            raise StoreUnavailable("event store has no identity row yet")
        return StoreIdentity(row.store_id, row.created_at, settings.StoreLocation(self.url, "").display)

    @_retry_on_disconnect
    def record_heartbeat(
        self,
        receiver_id: str,
        *,
        kind: str,
        host: str | None,
        pid: int | None,
        version: str | None,
        started_at: datetime,
        keep: timedelta = timedelta(days=7),
    ) -> None:
        """Record that a receiver writing to this store is alive; drop receivers not seen for ``keep``."""
        self._ensure_schema()
        now = _utcnow()
        values = {
            "receiver_id": receiver_id[:_ID_MAX],
            "kind": kind[:64],
            "host": (host or "")[:_ID_MAX] or None,
            "pid": pid,
            "version": version,
            "started_at": started_at,
            "last_seen": now,
        }
        with self._guard(), self._write() as conn:
            stmt = self._upsert(receivers).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[receivers.c.receiver_id],
                    set_={
                        k: stmt.excluded[k]
                        for k in ("kind", "host", "pid", "version", "started_at", "last_seen")
                    },
                )
            )
            conn.execute(receivers.delete().where(receivers.c.last_seen < now - keep))

    @_retry_on_disconnect
    def receivers_seen(self, within: timedelta | None = None) -> list[ReceiverSeen]:
        """Receivers with a heartbeat (in the last ``within``), most recent first."""
        self._ensure_schema()
        query = sa.select(receivers).order_by(receivers.c.last_seen.desc())
        if within is not None:
            query = query.where(receivers.c.last_seen >= _utcnow() - within)
        with self._guard(), self._engine.connect() as conn:
            return [
                ReceiverSeen(r.receiver_id, r.kind, r.host, r.pid, r.version, r.started_at, r.last_seen)
                for r in conn.execute(query)
            ]
