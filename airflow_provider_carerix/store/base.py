"""What every part of the store stands on: the engine per dialect, the schema made or migrated on first
use, one translation of database errors, and the retry on a dropped connection.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from typing_extensions import Self

from airflow_provider_carerix import settings
from airflow_provider_carerix.store.errors import (
    _REOPEN_CAUSES,
    CAUSES,
    EventRejected,
    StoreUnavailable,
    _unavailable,
    unavailable_cause,
)
from airflow_provider_carerix.store.schema import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    _utcnow,
    cursors,
    schema_version,
)
from airflow_provider_carerix.store.sessions import _PG_MIGRATE_LOCK, _enable_wal, _pg_connect_args

log = logging.getLogger(__name__)


_F = TypeVar("_F", bound=Callable[..., Any])


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _retry_on_disconnect(method: _F) -> _F:
    """Run once more when the failure was a dropped connection (e.g. PostgreSQL restarted since last use).

    Safe for inserts too: a group whose COMMIT was lost in flight is either absent (inserted now) or present
    (found by event id and reported as a duplicate), never stored twice. A failure a fresh connection may
    cure (read-only, I/O error) empties the pool, so the store recovers by itself once the cause is fixed.
    """

    @functools.wraps(method)
    def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, DBAPIError) and cause.connection_invalidated:
                return method(self, *args, **kwargs)
            if exc.cause in _REOPEN_CAUSES:
                self._reopen(exc.cause)
            raise

    return wrapper  # type: ignore[return-value]


def _unique_violation(orig: BaseException | None) -> bool:
    """Whether the database refused a row for a unique key (a concurrent writer's), by error code.

    psycopg carries the SQLSTATE (23505, unique_violation); sqlite3 the extended result code from Python
    3.11 on. Python 3.10's sqlite3 has no code, only the message, which SQLite has worded the same since 3.8.
    """
    if getattr(orig, "sqlstate", None) == "23505":
        return True
    code = getattr(orig, "sqlite_errorname", None)
    if code is not None:
        return code in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
    return isinstance(orig, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(orig)


def resolve_store_url(url: str | None = None) -> str:
    """The store's URL from an explicit URL, else the settings (``event_store_url``, then the default).

    Components that can reach Airflow connections resolve through
    :class:`~airflow_provider_carerix.hooks.event_store.CarerixEventStoreHook` instead, which looks at the
    ``carerix_event_store`` connection first (:func:`airflow_provider_carerix.settings.resolve_store`).
    """
    if url and url.strip():
        return _normalise_url(url)
    return settings.resolve_store().url


_normalise_url = settings.normalise_store_url


class StoreBase:
    """The engine and schema of one store; the parts of :class:`EventStore` build on it."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_store_url(url)
        parsed: URL = make_url(self.url)
        self.dialect: str = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported event store backend {self.dialect!r}: use sqlite or postgresql")
        self._engine = self._create_engine(parsed)
        # Tests switch this off to show that readers then skip events (the protection is not vacuous).
        self._pg_announce_in_flight = True
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._file_identity: tuple[int, int] | None = None
        self._encoders: dict[str, Callable[[Any], Any]] | None = None

    def __repr__(self) -> str:
        return f"EventStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    def _create_engine(self, url: URL) -> Engine:
        if self.dialect == "sqlite":
            database = url.database or ""
            memory = database in ("", ":memory:") or database.startswith("file::memory:")
            kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
            if memory:
                kwargs["poolclass"] = sa.pool.StaticPool
            # hide_parameters: errors must never carry the payload (personal data) into a log.
            engine = sa.create_engine(url, hide_parameters=True, **kwargs)

            @sa_event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is possible.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                if not memory:
                    # A new, empty file only (before WAL and the first table; elsewhere the pragma may need
                    # the write lock): lets purge hand freed pages back to the file system in small steps.
                    if cur.execute("PRAGMA page_count").fetchone()[0] == 0:
                        cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    _enable_wal(cur)
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

            @sa_event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # Writers take the write lock up front: a deferred transaction that later upgrades can fail
                # with SQLITE_BUSY without waiting for busy_timeout.
                write = conn.get_execution_options().get("carerix_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        # No pool_pre_ping: it costs a round trip per checkout on the hot path. A connection that died (server
        # restart) fails its statement instead; the pool is invalidated and ``_retry_on_disconnect`` tries once
        # more on a fresh connection.
        # READ COMMITTED whatever the server default: readers rely on each statement taking a fresh snapshot.
        return sa.create_engine(
            url,
            pool_size=5,
            max_overflow=10,
            pool_recycle=1800,
            connect_args=_pg_connect_args(url),
            isolation_level="READ COMMITTED",
            hide_parameters=True,
        )

    def _prepare_sqlite_dir(self) -> None:
        database = make_url(self.url).database
        if (
            self.dialect == "sqlite"
            and database
            and database != ":memory:"
            and not database.startswith("file:")
        ):
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the directory of the event store: {exc}", unavailable_cause(exc)
                ) from exc

    def _write(self) -> Any:
        """A transaction that holds the write lock for its whole duration (see module docstring)."""
        return self._engine.execution_options(carerix_write=True).begin()

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._prepare_sqlite_dir()
            if self._schema_current():
                self._file_identity = self._stat_file()
                self._schema_ready = True
                return
            with self._guard(), self._write() as conn:
                if self.dialect == "postgresql":
                    # A migration may rewrite a large table: not bounded like the hot path. Receivers and
                    # triggers starting together wait for the first one's migration rather than fail after
                    # lock_timeout (a stalled migrator is still cut off by idle_in_transaction_session_timeout).
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
                    # Several receivers may start at once against one fresh database.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
                schema_version.create(conn, checkfirst=True)
                current = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
                if current is None:
                    conn.execute(schema_version.insert().values(id=1, version=0))
                    current = 0
                if current > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"event store schema version {current} is newer than this provider understands "
                        f"({SCHEMA_VERSION}); upgrade airflow-provider-carerix"
                    )
                for step in range(current, SCHEMA_VERSION):
                    log.info("Migrating the Carerix event store to schema version %d", step + 1)
                    _MIGRATIONS[step](conn)
                    conn.execute(schema_version.update().values(version=step + 1))
            self._file_identity = self._stat_file()
            self._schema_ready = True

    def _schema_current(self) -> bool:
        """A read, no lock: an up-to-date store is ready without waiting for the writers' lock (which a
        busy or stuck writer may hold; /health must then answer 503 quickly, not wait for it)."""
        with self._guard(), self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(schema_version.name):
                return False
            current = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
        return current == SCHEMA_VERSION

    class _guard:
        """Connection problems and lock timeouts become ``StoreUnavailable``; programming errors stay loud."""

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
            if exc is None:
                return False
            if isinstance(exc, sqlite3.Error):
                # The SQLite fast path talks to sqlite3 itself: its errors mean what SQLAlchemy's wrappers do.
                if isinstance(exc, sqlite3.IntegrityError):
                    if _unique_violation(exc):
                        raise StoreUnavailable(f"event store busy: {type(exc).__name__}") from None
                    raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
                if isinstance(exc, sqlite3.DataError):
                    raise EventRejected(f"event store refused the event: {type(exc).__name__}") from None
                if isinstance(exc, sqlite3.ProgrammingError):
                    return False  # a bug: stays loud
                raise _unavailable(exc) from exc
            if isinstance(exc, OperationalError) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            ):
                raise _unavailable(exc.orig or exc) from exc
            if isinstance(exc, (OSError, sa.exc.InterfaceError)):
                raise _unavailable(exc) from exc
            # A unique key taken by a concurrent writer is a race, not the event's fault: retrying stores it
            # (or finds it as a duplicate), so it must be a 503 for Carerix, never a 4xx that drops the event.
            if isinstance(exc, sa.exc.IntegrityError) and _unique_violation(exc.orig):
                raise StoreUnavailable(f"event store busy: {type(exc.orig).__name__}") from None
            # The values themselves: a constraint or type the database refuses, or a value the driver cannot
            # bind. ``from None``: the database's own message may quote the row (personal data).
            if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
                raise EventRejected(f"event store refused the event: {type(exc.orig).__name__}") from None
            if isinstance(exc, sa.exc.StatementError) and isinstance(
                exc.orig, (ValueError, OverflowError, TypeError)
            ):
                raise EventRejected(f"event store refused the event: {type(exc.orig).__name__}") from None
            return False

    def _upsert(self, table: sa.Table) -> Any:
        """An INSERT that can say ``ON CONFLICT DO UPDATE``: both dialects have one, SQLAlchemy's core has not."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    @property
    def engine(self) -> Engine:
        """For read-only views that need their own queries (the UI page); writers use the methods above."""
        return self._engine

    def _reopen(self, cause: str) -> None:
        """Empty the pool: connections opened read-only (or broken) stay so; the next use opens fresh ones."""
        if self.dialect == "sqlite" and self._sqlite_file() is None:
            return  # in memory: the pool's one connection is the database
        log.warning("Carerix event store %s: reopening its connections on next use", CAUSES[cause])
        self._engine.dispose()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sqlite_file(self) -> Path | None:
        if self.dialect != "sqlite":
            return None
        database = make_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).expanduser()

    def _stat_file(self) -> tuple[int, int] | None:
        path = self._sqlite_file()
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _advance_stmt(self, name: str, sequence: int) -> Any:
        now = _utcnow()
        stmt = self._upsert(cursors).values(name=name, sequence=int(sequence), updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[cursors.c.name],
            set_={
                "sequence": sa.case(
                    (stmt.excluded.sequence > cursors.c.sequence, stmt.excluded.sequence),
                    else_=cursors.c.sequence,
                ),
                "updated_at": now,
            },
        ).returning(cursors.c.sequence)
        return stmt
