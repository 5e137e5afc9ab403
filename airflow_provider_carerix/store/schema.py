"""The store's tables and their migrations (append steps, never edit shipped ones).

The same tables on SQLite and PostgreSQL; version N means migration steps 1..N ran. ``type_filter`` is the
one query helper the Carerix page shares with the readers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_carerix.definitions import event_types as _types

log = logging.getLogger(__name__)


_ID_MAX = 255


class _UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC in and out; SQLite has no timezone type, so it stores naive UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = sa.MetaData()


_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite


schema_version = sa.Table(
    "carerix_schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)


events = sa.Table(
    "carerix_events",
    metadata,
    # AUTOINCREMENT on SQLite: never reuse a sequence number, even after the newest rows were deleted.
    sa.Column("sequence", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(_ID_MAX), nullable=False, unique=True),
    sa.Column("type", sa.String(_ID_MAX), nullable=False),
    sa.Column("time", _UTCDateTime, nullable=False),
    sa.Column("tenant", sa.String(_ID_MAX)),
    sa.Column("application_id", sa.String(_ID_MAX)),
    sa.Column("webhook_id", sa.String(_ID_MAX)),
    sa.Column("entity_id", sa.String(_ID_MAX)),
    sa.Column("received_at", _UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # Added by migration step 2 (see ``_migration_2``).
    sa.Column("signature_verified", sa.Boolean),
    sa.Column("recovered", sa.Boolean, nullable=False, server_default=sa.false()),
    sqlite_autoincrement=True,
)


# What triggers ask: "after sequence N" (primary key), optionally for some types or one webhook.
_events_indexes = [
    sa.Index("ix_carerix_events_type_sequence", events.c.type, events.c.sequence),
    sa.Index("ix_carerix_events_webhook_sequence", events.c.webhook_id, events.c.sequence),
    sa.Index("ix_carerix_events_received_at", events.c.received_at),
]


cursors = sa.Table(
    "carerix_cursors",
    metadata,
    sa.Column("name", sa.String(_ID_MAX), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
)


# The public keys Carerix signs each application's deliveries with, as provisioning last saw them. The key seen
# last is current (``superseded_at`` NULL); a key replaced by another stays valid for a rotation window after
# ``superseded_at``, so deliveries signed just before a rotation are still accepted.
signing_keys = sa.Table(
    "carerix_signing_keys",
    metadata,
    sa.Column("application_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(_ID_MAX)),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("first_seen", _UTCDateTime, nullable=False),
    sa.Column("last_seen", _UTCDateTime, nullable=False),
    sa.Column("superseded_at", _UTCDateTime),
)


# The webhooks as the provisioning sync last listed them (before it acted), for the Carerix page: which webhook
# delivers what, and whether Carerix disabled it. Replaced per application on every sync.
webhooks = sa.Table(
    "carerix_webhooks",
    metadata,
    sa.Column("application_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("webhook_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("application_name", sa.String(_ID_MAX)),
    sa.Column("url", sa.Text),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("status", sa.String(_ID_MAX)),
    sa.Column("sync_action", sa.String(32)),
    sa.Column("seen_at", _UTCDateTime, nullable=False),
)


# What the Carerix page asks: events of one entity, and per-minute counts by type (index-only).
_page_indexes = [
    sa.Index("ix_carerix_events_entity_sequence", events.c.entity_id, events.c.sequence),
    sa.Index("ix_carerix_events_received_type", events.c.received_at, events.c.type),
]


consumers = sa.Table(
    "carerix_consumers",
    metadata,
    sa.Column("name", sa.String(_ID_MAX), primary_key=True),
    # The DAG that processes this consumer's events: a second DAG claiming the same name is an error.
    sa.Column("owner", sa.String(_ID_MAX)),
    # The lease: who may process right now, until when (renewed while processing, expires after a crash).
    sa.Column("holder", sa.String(_ID_MAX)),
    sa.Column("lease_until", _UTCDateTime),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
    # Added by migration step 5: the consumer's filter (JSON), so the Carerix page can count its lag.
    sa.Column("filter", sa.Text),
)


def _migration_1(conn: Connection) -> None:
    events.create(conn, checkfirst=True)
    for index in _events_indexes:
        index.create(conn, checkfirst=True)
    cursors.create(conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    """Signing keys per application; per event whether its signature was verified and whether it was recovered."""
    signing_keys.create(conn, checkfirst=True)
    # A store created by this version already has the columns (step 1 creates the table from ``events``).
    present = {column["name"] for column in sa.inspect(conn).get_columns(events.name)}
    if "signature_verified" not in present:
        conn.execute(sa.text(f"ALTER TABLE {events.name} ADD COLUMN signature_verified BOOLEAN"))
    if "recovered" not in present:
        conn.execute(
            sa.text(f"ALTER TABLE {events.name} ADD COLUMN recovered BOOLEAN NOT NULL DEFAULT FALSE")
        )


def _migration_3(conn: Connection) -> None:
    """The webhooks snapshot and the indexes of the Carerix page."""
    webhooks.create(conn, checkfirst=True)
    for index in _page_indexes:
        index.create(conn, checkfirst=True)


def _migration_4(conn: Connection) -> None:
    """Consumers: the owning DAG and the lease a claim holds while processing."""
    consumers.create(conn, checkfirst=True)


def _migration_5(conn: Connection) -> None:
    """Consumers remember their filter (for the lag the Carerix page shows)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(consumers.name)}
    if "filter" not in present:
        conn.execute(sa.text(f"ALTER TABLE {consumers.name} ADD COLUMN filter TEXT"))


# What retention removed: the horizon below which a delivery may be a replay of a purged event.
purges = sa.Table(
    "carerix_purges",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("purged_at", _UTCDateTime, nullable=False),
    # Rows received AND timed before this were deleted (the newest row excepted).
    sa.Column("horizon", _UTCDateTime, nullable=False),
    sa.Column("deleted", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,
)


def _migration_6(conn: Connection) -> None:
    """The purge log: its horizon refuses replays of purged events."""
    purges.create(conn, checkfirst=True)


# Which store this is: a random id made when the store was created (or upgraded to schema 7), shown by the
# receivers' /health, the Carerix page and the readers' start-up logs, so two components can be seen to share
# one store (or not) without comparing URLs that differ per machine.
store_info = sa.Table(
    "carerix_store_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("store_id", sa.String(64), nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
)


# Receivers that write to this store: each records a heartbeat (at start, then every minute). Readers warn when
# none is recent: a receiver that writes to another store leaves no heartbeat here.
receivers = sa.Table(
    "carerix_receivers",
    metadata,
    sa.Column("receiver_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("host", sa.String(_ID_MAX)),
    sa.Column("pid", sa.Integer),
    sa.Column("version", sa.String(64)),
    sa.Column("started_at", _UTCDateTime, nullable=False),
    sa.Column("last_seen", _UTCDateTime, nullable=False),
)


def _migration_7(conn: Connection) -> None:
    """The store's identity and the receivers' heartbeats."""
    store_info.create(conn, checkfirst=True)
    receivers.create(conn, checkfirst=True)
    if conn.execute(sa.select(store_info.c.id)).first() is None:
        conn.execute(store_info.insert().values(id=1, store_id=uuid.uuid4().hex, created_at=_utcnow()))


# What the last webhook health check saw of each webhook in Carerix (its status and delivery log), for the
# Carerix page: the page never calls Carerix. Replaced per application on every check.
webhook_health = sa.Table(
    "carerix_webhook_health",
    metadata,
    sa.Column("application_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("webhook_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("application_name", sa.String(_ID_MAX)),
    sa.Column("url", sa.Text),  # masked (display_url): never credentials or a query string
    sa.Column("status", sa.String(_ID_MAX)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("failure_rate", sa.Float),
    sa.Column("last_failure_status", sa.Integer),
    sa.Column("last_failure_at", _UTCDateTime),
    sa.Column("problems", sa.Text, nullable=False),  # JSON list of words: disabled, error, failure_rate
    sa.Column("window_start", _UTCDateTime),
    sa.Column("checked_at", _UTCDateTime, nullable=False),
)


def _migration_8(conn: Connection) -> None:
    """What the webhook health check saw (issue 30). Self-contained: a new table, nothing else."""
    webhook_health.create(conn, checkfirst=True)


# One task instance per event (``CarerixEvents.reserve()`` and ``claim_event()``): what a run reserved, and the
# state of each event after its consumer's processed cursor that a run reserved (or a claim recorded out of
# order). Rows at or below the cursor are processed by definition and deleted as the cursor passes them.
reservations = sa.Table(
    "carerix_reservations",
    metadata,
    sa.Column("consumer", sa.String(_ID_MAX), primary_key=True),
    # The DAG run that reserved (its id in Airflow; the consumer's owner DAG is the run's DAG).
    sa.Column("run_id", sa.String(_ID_MAX), primary_key=True),
    sa.Column("dag_id", sa.String(_ID_MAX)),
    # The run's lease, renewed by reserve() and by its mapped tasks while they run; once it expired, the
    # run's events go to another run only if Airflow says the run is no longer queued or running.
    sa.Column("lease_until", _UTCDateTime),
    # The event ids reserve() returned, in that order (JSON): the same list when reserve() runs again.
    sa.Column("event_ids", sa.Text, nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
    # Set when the run gave back what it left (its last task), or when another run took its events over.
    sa.Column("released_at", _UTCDateTime),
)


event_states = sa.Table(
    "carerix_event_states",
    metadata,
    sa.Column("consumer", sa.String(_ID_MAX), primary_key=True),
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(_ID_MAX), nullable=False),
    # The run it is reserved for (NULL: given back, free for the next run).
    sa.Column("reserved_by", sa.String(_ID_MAX)),
    # The task try processing it right now and its lease (renewed while its block runs).
    sa.Column("holder", sa.Text),
    sa.Column("lease_until", _UTCDateTime),
    sa.Column("processed_at", _UTCDateTime),
    sa.Column("processed_by", sa.Text),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
)


def _migration_9(conn: Connection) -> None:
    """Per-event reservations and processed state (one task instance per event, issue 31). Self-contained."""
    reservations.create(conn, checkfirst=True)
    event_states.create(conn, checkfirst=True)


# Append steps, never edit shipped ones: version N means steps 1..N ran.
_MIGRATIONS = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
]


SCHEMA_VERSION = len(_MIGRATIONS)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def type_filter(patterns: Iterable[str]) -> sa.ColumnElement[bool] | None:
    """SQL for :mod:`~airflow_provider_carerix.definitions.event_types` patterns; stored types are lowercase."""
    exact: list[str] = []
    clauses: list[sa.ColumnElement[bool]] = []
    for pattern in patterns:
        entity, action = _types.parse_pattern(pattern)
        if entity == _types.ANY and action == _types.ANY:
            return None
        if action == _types.ANY:
            clauses.append(events.c.type.startswith(entity + ":", autoescape=True))
        elif entity == _types.ANY:
            clauses.append(events.c.type.endswith(":" + action, autoescape=True))
        else:
            exact.append(f"{entity}:{action}")
    if exact:
        clauses.append(events.c.type.in_(exact))
    if not clauses:
        return sa.false()
    return sa.or_(*clauses)
