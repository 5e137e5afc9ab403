"""What can go wrong in the store, as the receiver and the readers need to tell it apart.

``StoreUnavailable`` (retry later: the receiver answers 503) carries a ``cause`` read from error codes, never
from messages; ``EventRejected`` (the event itself cannot be stored: a 4xx); ``ConsumerOwned`` (two DAGs on one
consumer).
"""

from __future__ import annotations

import errno
import logging
import sqlite3

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store cannot be reached or is busy: callers should retry later (the receiver answers 503).

    ``cause`` says why in one word an operator can act on (:data:`CAUSES`): ``disk_full``, ``read_only``,
    ``locked``, ``file_replaced``, ``file_removed``, ``unreachable``, ``io_error``, ``timeout``, or
    ``unavailable`` when nothing more precise is known. Derived from error codes, never from the database's
    message (which may quote a row).
    """

    def __init__(self, message: str, cause: str = "unavailable") -> None:
        super().__init__(message)
        self.cause = cause


#: What each :attr:`StoreUnavailable.cause` means, as the messages, logs and ``/health`` say it.
CAUSES: dict[str, str] = {
    "disk_full": "disk full",
    "read_only": "read-only (file, directory, file system or database)",
    "locked": "locked by another writer",
    "file_replaced": "the SQLite file was replaced",
    "file_removed": "the SQLite file was removed",
    "unreachable": "cannot connect",
    "io_error": "disk I/O error",
    "timeout": "timed out",
    "corrupt": "the database file is damaged",
    "unavailable": "unavailable",
}


# Causes a fresh connection may cure once the operator fixed them (permissions, a failover to a new primary):
# connections opened in that state stay read-only or broken, so the pool is emptied and the next use reopens.
_REOPEN_CAUSES = frozenset({"read_only", "io_error", "corrupt"})


_SQLITE_CAUSES = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_PERM", "read_only"),
    ("SQLITE_BUSY", "locked"),
    ("SQLITE_LOCKED", "locked"),
    ("SQLITE_CANTOPEN", "unreachable"),
    ("SQLITE_IOERR", "io_error"),
    ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_NOTADB", "corrupt"),
)


# Python 3.10's sqlite3 carries no error code, only SQLite's fixed English texts (not the row).
_SQLITE_TEXTS = (
    ("database or disk is full", "disk_full"),
    ("readonly database", "read_only"),
    ("database is locked", "locked"),
    ("database table is locked", "locked"),
    ("unable to open database", "unreachable"),
    ("disk i/o error", "io_error"),
    ("malformed", "corrupt"),
    ("not a database", "corrupt"),
)


_PG_CAUSES = {
    "53100": "disk_full",  # disk_full
    "25006": "read_only",  # read_only_sql_transaction (a standby, or default_transaction_read_only)
    "55P03": "locked",  # lock_not_available (lock_timeout)
    "40P01": "locked",  # deadlock_detected
    "57014": "timeout",  # query_canceled (statement_timeout)
}


_OS_CAUSES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only",
    errno.EACCES: "read_only",
    errno.EPERM: "read_only",
}


def unavailable_cause(exc: BaseException | None) -> str:
    """The :data:`CAUSES` key for a driver or OS error (``unavailable`` when it says nothing more)."""
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, cause in _SQLITE_CAUSES:
            if name.startswith(prefix):
                return cause
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _PG_CAUSES:
            return _PG_CAUSES[sqlstate]
        if sqlstate.startswith(("08", "57P")):  # connection exceptions, server shutting down
            return "unreachable"
    if isinstance(exc, sqlite3.Error) and name is None:
        text = str(exc).lower()
        for fragment, cause in _SQLITE_TEXTS:
            if fragment in text:
                return cause
    if isinstance(exc, OSError) and exc.errno in _OS_CAUSES:
        return _OS_CAUSES[exc.errno]
    if exc is not None and type(exc).__module__.startswith("psycopg") and sqlstate is None:
        return "unreachable"  # no server answer at all: refused, unresolved, timed out connecting
    return "unavailable"


def _unavailable(exc: BaseException, what: str = "event store unavailable") -> StoreUnavailable:
    cause = unavailable_cause(exc)
    return StoreUnavailable(f"{what}: {CAUSES[cause]} ({type(exc).__name__})", cause)


class ConsumerOwned(Exception):
    """A consumer name is already used by another DAG: two DAGs would split (or double) its events."""

    def __init__(self, consumer: str, owner: str, claimant: str) -> None:
        super().__init__(
            f"Carerix event consumer {consumer!r} belongs to DAG {owner!r}, not {claimant!r}: give each DAG's "
            "CarerixEvents its own name"
        )
        self.consumer = consumer
        self.owner = owner
        self.claimant = claimant


class EventRejected(Exception):
    """The store refused an event because of the event itself (a value no column can hold): retrying cannot
    help, so the receiver answers 4xx. The message names the event id and the error type, never a value.
    """

    def __init__(self, message: str, event_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.field = field
