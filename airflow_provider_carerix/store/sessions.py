"""How the store opens its sessions: SQLite's pragmas (WAL, ``synchronous=FULL``) and PostgreSQL's session
bounds and advisory-lock keys, which every store session on one database must share.
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy.engine import URL

NOTIFY_CHANNEL = "carerix_events"

# Any constant works as long as every writer uses the same one; derived from the table name for readability.
_PG_INSERT_LOCK = zlib.crc32(b"carerix_events.insert")

_PG_MIGRATE_LOCK = zlib.crc32(b"carerix_events.migrate")

# First key (int4) of the lock each insert holds from "sequences handed out" until its commit; the second key is
# its first sequence modulo 2**31, so readers can see which sequences are still in flight (see module docstring).
_PG_IN_FLIGHT = zlib.crc32(b"carerix_events.in_flight") & 0x7FFFFFFF

_IN_FLIGHT_MOD = 2**31

# Applied to every PostgreSQL session the store opens (libpq ``options``, so no extra round trip). They bound how
# long one stalled writer (SIGSTOP, GC pause, VM freeze, network partition) can hold the insert lock and how
# long the others wait for it; see "Stalled writers" in the module docstring. ``options`` in the store URL are
# appended after these, so ``?options=-c%20lock_timeout%3D3s`` overrides one of them.
PG_SESSION_SETTINGS: dict[str, str] = {
    # A writer waits this long for the insert lock, then gets StoreUnavailable (the receiver answers 503 and
    # Carerix retries, possibly on another receiver). Normal waits are a few commits long (milliseconds).
    "lock_timeout": "1s",
    # The server ends a session that sits in an open transaction this long: a paused lock holder loses the
    # lock (its transaction rolls back, so nothing it had not yet acknowledged is half-stored).
    "idle_in_transaction_session_timeout": "5s",
    # A statement that runs this long is cancelled (a holder stuck inside a statement). Migrations lift it.
    "statement_timeout": "10s",
}


def _pg_connect_args(url: URL) -> dict[str, Any]:
    """``PG_SESSION_SETTINGS`` as libpq startup options, followed by any ``options`` given in the URL."""
    given = url.query.get("options")
    if isinstance(given, tuple):
        given = " ".join(given)
    ours = " ".join(f"-c {name}={value}" for name, value in PG_SESSION_SETTINGS.items())
    return {"options": f"{ours} {given}" if given else ours}


def _enable_wal(cur: Any) -> None:
    """WAL is persistent in the file; switching can hit SQLITE_BUSY without the busy handler, so retry."""
    import sqlite3
    import time

    for attempt in range(100):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)
