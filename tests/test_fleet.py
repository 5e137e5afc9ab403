"""Several writers on one PostgreSQL: a stalled one must not stop the others, and none may lose or reorder events.

Real server (tests/fixtures/postgres.py), real ``carerix-receiver serve`` processes, a real paused process.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from airflow_provider_carerix.store import (
    _PG_INSERT_LOCK,
    PG_SESSION_SETTINGS,
    EventStore,
    StoreUnavailable,
)
from tests.fixtures.receiver import ReceiverProcess, start_receiver_process
from tests.test_store import make_event

pytestmark = pytest.mark.postgres

SECRET = "fleet-" + uuid.uuid4().hex
# The receiver's own deadline (DEFAULT_ACK_TIMEOUT): a 503 that took this long came from the ack timeout, not
# from the store giving up on the lock.
ACK_TIMEOUT = 8.0


def with_options(url: str, **settings: str) -> str:
    """The store URL with libpq ``options`` (they override the store's own session settings)."""
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return make_url(url).update_query_dict({"options": options}).render_as_string(hide_password=False)


def dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def insert_lock_holders(url: str) -> list[int]:
    """Backend pids holding the store's insert lock right now."""
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = %s",
            [_PG_INSERT_LOCK],
        ).fetchall()
    return [int(pid) for (pid,) in rows]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def _session_settings(store: EventStore) -> dict[str, str]:
    with store._engine.connect() as conn:
        return {name: conn.exec_driver_sql(f"SHOW {name}").scalar_one() for name in PG_SESSION_SETTINGS}


def test_every_store_session_carries_the_bounds(postgres_database: str) -> None:
    store = EventStore(postgres_database)
    assert _session_settings(store) == PG_SESSION_SETTINGS
    assert all(value not in ("0", "0ms") for value in PG_SESSION_SETTINGS.values())
    store.close()
    # Options in the URL come after the store's own, so an operator can change one bound.
    store = EventStore(with_options(postgres_database, lock_timeout="3s"))
    assert _session_settings(store) == {**PG_SESSION_SETTINGS, "lock_timeout": "3s"}
    store.close()


def test_foreign_lock_holder_writers_fail_fast_then_recover(postgres_database: str) -> None:
    """psql-style holder (not a store session, so not bounded by the store): writers give up fast, then resume."""
    store = EventStore(postgres_database)
    before_sequence, _ = store.insert(*make_event(event_id="before"))
    holder = psycopg.connect(dsn(postgres_database))
    # Safety net so a broken lock_timeout makes the test fail instead of hang: the holder lets go after 30 s.
    release = threading.Timer(30, holder.rollback)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_INSERT_LOCK])
        release.start()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.insert(*make_event(event_id="during"))
        assert time.monotonic() - started < ACK_TIMEOUT
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # still holding
        holder.rollback()
    finally:
        release.cancel()
        holder.close()
    after_sequence, inserted = store.insert(*make_event(event_id="after"))
    assert inserted
    assert [e.event_id for e in store.events_after(0)] == ["before", "after"]
    assert after_sequence > before_sequence
    store.close()


def test_paused_store_session_loses_the_lock(postgres_database: str) -> None:
    """A store writer paused between taking the lock and committing is cut off; the others carry on."""
    url = with_options(postgres_database, idle_in_transaction_session_timeout="3s")
    paused_store, other = EventStore(url), EventStore(url)
    paused_store.ping()
    other.ping()
    locked, resume = threading.Event(), threading.Event()

    @sa_event.listens_for(paused_store._engine, "after_cursor_execute")
    def _pause_after_lock(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_xact_lock" in statement and not resume.is_set():
            locked.set()
            resume.wait(60)  # the process is "stopped" here, holding the lock in an open transaction

    outcome: dict[str, Any] = {}

    def paused_writer() -> None:
        try:
            outcome["result"] = paused_store.insert(*make_event(event_id="paused"))
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=paused_writer)
    thread.start()
    try:
        assert locked.wait(30)
        stored: list[str] = []
        failures = 0
        deadline = time.monotonic() + 60
        while not stored and time.monotonic() < deadline:
            event_id = f"other-{failures}"
            try:
                other.insert(*make_event(event_id=event_id))
                stored.append(event_id)
            except StoreUnavailable:
                failures += 1
        # The first attempt waited for the paused holder and gave up; a later one got through while the holder
        # was still paused: the server ended its session.
        assert failures >= 1
        assert stored, "the paused holder kept the insert lock"
        assert not resume.is_set()
    finally:
        resume.set()
        thread.join(60)
    # The paused writer's transaction was rolled back with its session; its retry (a fresh connection) either
    # stored the event or reported the store unavailable, never half of it.
    ids = [e.event_id for e in other.events_after(0)]
    if "result" in outcome:
        assert ids.count("paused") == 1
    else:
        assert isinstance(outcome["error"], StoreUnavailable)
        assert ids.count("paused") <= 1
    assert [i for i in ids if i != "paused"] == stored  # a failed insert stored nothing
    paused_store.close()
    other.close()


class _Sender:
    """Background senders to one receiver; remembers every event id acknowledged with 2xx."""

    def __init__(self, url: str, *, threads: int = 4) -> None:
        self.url = url
        self.acked: list[str] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                event_id = uuid.uuid4().hex
                raw, _ = make_event(event_id=event_id)
                try:
                    response = client.post(
                        f"{self.url}/events",
                        content=raw,
                        headers={"X-Carerix-Secret": SECRET, "Content-Type": "application/json"},
                    )
                except httpx.HTTPError:
                    continue
                with self._lock:
                    self.statuses.append(response.status_code)
                    if response.status_code in (200, 201):
                        self.acked.append(event_id)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


@pytest.fixture
def receivers(postgres_database: str, log_dir: Path) -> Iterator[list[ReceiverProcess]]:
    url = with_options(postgres_database, idle_in_transaction_session_timeout="4s")
    EventStore(url).ping()  # schema in place before two processes race for it
    started = [start_receiver_process(url, secrets=[SECRET], log_dir=log_dir) for _ in range(2)]
    yield started
    for r in started:
        if r.proc.poll() is None:
            os.kill(r.proc.pid, signal.SIGCONT)
        r.stop()


def _post(url: str, event_id: str) -> tuple[int, float, dict[str, Any]]:
    raw, _ = make_event(event_id=event_id)
    started = time.monotonic()
    response = httpx.post(
        f"{url}/events",
        content=raw,
        headers={"X-Carerix-Secret": SECRET, "Content-Type": "application/json"},
        timeout=60,
    )
    return response.status_code, time.monotonic() - started, response.json()


def test_sigstopped_receiver_does_not_stop_the_fleet(
    postgres_database: str, receivers: list[ReceiverProcess]
) -> None:
    """SIGSTOP a receiver while it holds the insert lock: the other answers 503 fast, then stores again."""
    stopped, healthy = receivers
    load = _Sender(stopped.url)
    caught = False
    try:
        # Stop the loaded receiver until one stop lands while it holds the lock (it does most of the time).
        for _ in range(300):
            os.kill(stopped.proc.pid, signal.SIGSTOP)
            time.sleep(0.05)
            if insert_lock_holders(postgres_database):
                caught = True
                break
            os.kill(stopped.proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        assert caught, "never caught the receiver holding the insert lock"
        status, elapsed, body = _post(healthy.url, "while-stopped-0")
        assert status == 503, body
        assert elapsed < ACK_TIMEOUT  # the store gave up on the lock, not the receiver on the store
        acked_healthy: list[str] = []
        for attempt in range(1, 60):
            event_id = f"while-stopped-{attempt}"
            status, _, body = _post(healthy.url, event_id)
            if status == 201:
                acked_healthy.append(event_id)
                break
            assert status == 503, body
        assert acked_healthy, "the healthy receiver never stored again while the other was stopped"
    finally:
        if stopped.proc.poll() is None:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        time.sleep(1)
        load.stop()
    # The resumed receiver works again, and nothing acknowledged by either receiver was lost or doubled.
    status, _, _ = _post(stopped.url, "after-resume")
    assert status == 201
    store = EventStore(postgres_database)
    stored = [e.event_id for e in store.events_after(0, limit=100_000)]
    store.close()
    assert len(stored) == len(set(stored))
    acked = set(load.acked) | set(acked_healthy) | {"after-resume"}
    assert acked <= set(stored)
    assert 201 in load.statuses


def test_received_at_follows_sequence_order(postgres_database: str) -> None:
    """Concurrent writers: ``received_at`` never decreases along the sequence (it is stamped under the lock)."""
    stores = [EventStore(postgres_database) for _ in range(4)]

    def write(store: EventStore) -> None:
        for _ in range(40):
            store.insert_many([make_event() for _ in range(3)])

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = stores[0].events_after(0, limit=10_000)
    assert len(stored) == 4 * 40 * 3
    backwards = [
        (a.sequence, b.sequence) for a, b in itertools.pairwise(stored) if b.received_at < a.received_at
    ]
    assert not backwards
    for store in stores:
        store.close()
