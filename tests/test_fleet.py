"""Several writers on one PostgreSQL: a stalled one must not stop the others, and none may lose or reorder events.

Real server (tests/fixtures/postgres.py), real ``carerix-receiver serve`` processes, a real paused process.
"""

from __future__ import annotations

import itertools
import os
import random
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

from airflow_provider_carerix.receiver import DEFAULT_ACK_TIMEOUT
from airflow_provider_carerix.store import PG_SESSION_SETTINGS, EventStore, StoreUnavailable
from airflow_provider_carerix.store.sessions import _PG_IN_FLIGHT, _PG_INSERT_LOCK
from tests.fixtures.receiver import ReceiverProcess, start_receiver_process
from tests.fixtures.store import PATIENT, FollowingReader, pause_after_insert, run_in_threads, with_options
from tests.test_store import make_event

pytestmark = pytest.mark.postgres

SECRET = "fleet-" + uuid.uuid4().hex


def dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def in_flight(url: str) -> int:
    """How many inserts have handed out sequences and not yet committed (their announcements)."""
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        (count,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [_PG_IN_FLIGHT],
        ).fetchone()
    return int(count)


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
    # A writer gives up on the insert lock well before the receiver's ack deadline, so it answers 503 itself.
    lock_timeout = PG_SESSION_SETTINGS["lock_timeout"]
    seconds = float(lock_timeout[:-2]) / 1000 if lock_timeout.endswith("ms") else float(lock_timeout[:-1])
    assert lock_timeout[-1] == "s" and 0 < seconds < DEFAULT_ACK_TIMEOUT / 2, lock_timeout
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
        # Given up by lock_timeout (LockNotAvailable), below the receiver's ack deadline (see the bounds test);
        # not cut off later by statement_timeout (QueryCanceled), nor waiting for the holder (no error).
        with pytest.raises(StoreUnavailable, match="LockNotAvailable"):
            store.insert(*make_event(event_id="during"))
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


def test_paused_writer_holds_back_readers_not_writers(postgres_database: str) -> None:
    """A writer paused between handing out its sequences and committing (SIGSTOP, GC pause, partition).

    Other writers carry on at once (the insert lock is held only while the server runs one statement); readers
    are not shown anything after the paused writer's sequences, since those could still commit; the server
    ends the paused session after idle_in_transaction_session_timeout, and readers catch up.
    """
    url = with_options(postgres_database, idle_in_transaction_session_timeout="4s")
    paused_store, other = EventStore(url), EventStore(url)
    paused_store.ping()
    other.ping()
    in_flight_now, resume = pause_after_insert(paused_store)

    outcome: dict[str, Any] = {}

    def paused_writer() -> None:
        try:
            outcome["result"] = paused_store.insert(*make_event(event_id="paused"))
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=paused_writer)
    thread.start()
    try:
        assert in_flight_now.wait(30)
        sequence, inserted = other.insert(*make_event(event_id="other"))  # no wait, no StoreUnavailable
        assert inserted
        assert in_flight(postgres_database) == 1
        held_back = [e.event_id for e in other.events_after(0)]
        assert held_back == []  # "other" is after the paused writer's sequence, which may still commit
        assert other.last_sequence() < sequence
        deadline = time.monotonic() + 60
        while "other" not in held_back and time.monotonic() < deadline:
            time.sleep(0.2)
            held_back = [e.event_id for e in other.events_after(0)]
        assert held_back == ["other"], "readers never caught up while the writer stayed paused"
        assert not resume.is_set()
    finally:
        resume.set()
        thread.join(60)
    # The paused writer's transaction died with its session; its retry on a fresh connection stored the event
    # after "other" (or reported the store unavailable), never twice.
    stored = other.events_after(0)
    ids = [e.event_id for e in stored]
    if "result" in outcome:
        assert ids == ["other", "paused"]
        assert outcome["result"] == (stored[1].sequence, True)
    else:
        assert isinstance(outcome["error"], StoreUnavailable)
        assert ids == ["other"]
    paused_store.close()
    other.close()


def test_writer_starting_after_the_reader_looked_is_held_back(postgres_database: str) -> None:
    """The readers' bound starts at the last sequence handed out *before* they look for inserts in flight.

    Deterministic interleaving: right after the reader has read the in-flight announcements (none), writer A
    hands out its sequence and stays uncommitted, then writer B stores a later one and commits, all before the
    reader's query takes its snapshot. That snapshot shows B and not A; showing B would move a reader's cursor
    past A for good. The bound read first (the last sequence handed out then) keeps both out.
    """
    reader, writer_a, writer_b = (EventStore(postgres_database) for _ in range(3))
    for store in (reader, writer_a, writer_b):
        store.ping()
    first, _ = writer_b.insert(*make_event(event_id="first"))  # a sequence has been handed out before
    a_in_flight, release_a, interleaved = threading.Event(), threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    @sa_event.listens_for(writer_a._engine, "after_cursor_execute")
    def _pause_a(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_lock(" in statement and not release_a.is_set():
            a_in_flight.set()
            release_a.wait(60)

    def write_a() -> None:
        outcome["a"] = writer_a.insert(*make_event(event_id="a"))

    thread = threading.Thread(target=write_a)

    @sa_event.listens_for(reader._engine, "after_cursor_execute")
    def _interleave(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM pg_locks" in statement and not interleaved.is_set():
            interleaved.set()
            thread.start()
            assert a_in_flight.wait(30)
            outcome["b"] = writer_b.insert(*make_event(event_id="b"))

    try:
        shown = [e.event_id for e in reader.events_after(first)]
        assert interleaved.is_set() and outcome["b"][1]
        assert outcome["b"][0] > 0 and in_flight(postgres_database) == 1
        assert shown == [], "the reader was shown an event while an earlier sequence could still commit"
    finally:
        release_a.set()
        if thread.is_alive() or interleaved.is_set():
            thread.join(60)
    assert outcome["a"][0] < outcome["b"][0]
    assert [e.event_id for e in reader.events_after(first)] == ["a", "b"]
    for store in (reader, writer_a, writer_b):
        store.close()


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
    EventStore(url).ping()  # schema in place before the processes race for it
    started = [start_receiver_process(url, secrets=[SECRET], log_dir=log_dir) for _ in range(3)]
    yield started
    for r in started:
        if r.proc.poll() is None:
            os.kill(r.proc.pid, signal.SIGCONT)
        r.stop()


def _post(url: str, event_id: str) -> tuple[int, dict[str, Any]]:
    raw, _ = make_event(event_id=event_id)
    response = httpx.post(
        f"{url}/events",
        content=raw,
        headers={"X-Carerix-Secret": SECRET, "Content-Type": "application/json"},
        timeout=60,
    )
    return response.status_code, response.json()


def test_sigstopped_receiver_does_not_stop_the_fleet(
    postgres_database: str, receivers: list[ReceiverProcess]
) -> None:
    """SIGSTOP a loaded receiver with an insert in flight: the other keeps storing; readers wait, then catch up."""
    stopped, healthy, _ = receivers
    reader = EventStore(postgres_database)
    load = _Sender(stopped.url)
    acked_healthy: list[str] = []
    try:
        # Stop the loaded receiver until one stop lands between its insert and its commit.
        caught = False
        for _ in range(300):
            os.kill(stopped.proc.pid, signal.SIGSTOP)
            time.sleep(0.05)
            if in_flight(postgres_database):
                caught = True
                break
            os.kill(stopped.proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        assert caught, "never caught the receiver with an insert in flight"
        status, body = _post(healthy.url, "while-stopped")
        # Stored, so it did not wait for the stopped receiver: waiting for its lock ends in a 503 after
        # lock_timeout, and any wait past the receiver's ack deadline in a 503 too.
        assert status == 201, body
        acked_healthy.append("while-stopped")
        # Readers see it only once the stopped receiver's open transaction is gone (server timeout).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(e.event_id == "while-stopped" for e in reader.events_after(body["sequence"] - 1)):
                break
            time.sleep(0.2)
        else:
            pytest.fail("readers never saw the healthy receiver's event while the other was stopped")
        assert in_flight(postgres_database) == 0
        status, body = _post(healthy.url, "while-stopped-2")
        assert status == 201, body
        acked_healthy.append("while-stopped-2")
    finally:
        if stopped.proc.poll() is None:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        time.sleep(1)
        load.stop()
    # The resumed receiver works again, and nothing acknowledged by either receiver was lost or doubled.
    status, _ = _post(stopped.url, "after-resume")
    assert status == 201
    stored = [e.event_id for e in reader.events_after(0, limit=100_000)]
    reader.close()
    assert len(stored) == len(set(stored))
    assert set(load.acked) | set(acked_healthy) | {"after-resume"} <= set(stored)
    assert 201 in load.statuses


def test_three_receivers_reader_sees_every_acknowledged_event(
    postgres_database: str, receivers: list[ReceiverProcess]
) -> None:
    """Three receiver processes under concurrent load; a reader polling "after my cursor" misses nothing."""
    reader_store = EventStore(postgres_database)
    reader = FollowingReader(reader_store, limit=100, idle_sleep=0.005)
    senders = [_Sender(r.url, threads=3) for r in receivers]
    time.sleep(4)  # the load lasts at least this long
    # ... and until every receiver has acknowledged events (a loaded machine acknowledges fewer per second).
    deadline = time.monotonic() + 300
    while not all(sender.acked for sender in senders) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sender in senders:
        sender.stop()
    seen = reader.finish()
    stored = reader_store.events_after(0, limit=100_000)
    reader_store.close()
    acked = {event_id for sender in senders for event_id in sender.acked}
    assert all(sender.acked for sender in senders)  # every receiver stored events
    assert acked <= {e.event_id for e in stored}
    assert len({e.event_id for e in stored}) == len(stored)
    assert seen == [e.sequence for e in stored]  # in order, none skipped, none twice


def _slow_commits(store: EventStore, rng: random.Random) -> None:
    """Widen the window between handing out sequences and committing, as a busy network or disk does."""

    @sa_event.listens_for(store._engine, "after_cursor_execute")
    def _delay(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_lock(" in statement:
            time.sleep(rng.random() * 0.004)


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "control-unprotected"])
def test_concurrent_writers_reader_never_skips(postgres_database: str, protected: bool) -> None:
    """Writers commit in any order; a reader polling "after my cursor" must still see every event once.

    The control run switches the in-flight announcements (and the readers' bound) off and must miss events,
    which shows the check can fail.
    """
    writers, groups = 6, 30
    rng = random.Random(18)
    stores = [EventStore(with_options(postgres_database, **PATIENT)) for _ in range(writers)]
    reader_store = EventStore(postgres_database)
    for store in [*stores, reader_store]:
        store._pg_announce_in_flight = protected
        store.ping()
    for store in stores:
        _slow_commits(store, rng)
    acked: list[int] = []

    def write(store: EventStore) -> None:
        for _ in range(groups):
            results = store.insert_many([make_event() for _ in range(rng.randint(1, 4))])
            acked.extend(sequence for sequence, _ in results)

    reader = FollowingReader(reader_store)
    run_in_threads(write, [(s,) for s in stores])
    seen = reader.finish()
    stored = [e.sequence for e in reader_store.events_after(0, limit=100_000)]
    assert sorted(acked) == stored  # every acknowledged event stored, once
    missed = sorted(set(stored) - set(seen))
    if protected:
        assert seen == stored
    else:
        assert missed, "the unprotected control did not miss an event: the check could not fail"
    for store in [*stores, reader_store]:
        store.close()


def test_received_at_follows_sequence_order(postgres_database: str) -> None:
    """Concurrent writers: ``received_at`` never decreases along the sequence (it is stamped under the lock).

    The store's session bounds (a writer gives up after ``lock_timeout``, 1 s, with ``StoreUnavailable``) are
    what a receiver needs to answer 503 in time, not what this test is about: on a loaded machine a writer
    can wait that long for the insert lock, so here they are "never happens" bounds.
    """
    stores = [EventStore(with_options(postgres_database, **PATIENT)) for _ in range(4)]

    def write(store: EventStore) -> None:
        for _ in range(40):
            store.insert_many([make_event() for _ in range(3)])

    run_in_threads(write, [(s,) for s in stores])
    stored = stores[0].events_after(0, limit=10_000)
    assert len(stored) == 4 * 40 * 3
    backwards = [
        (a.sequence, b.sequence) for a, b in itertools.pairwise(stored) if b.received_at < a.received_at
    ]
    assert not backwards
    for store in stores:
        store.close()
