"""The event store on SQLite and on a real throwaway PostgreSQL: the contract triggers and receiver rely on."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.durations import parse_duration
from airflow_provider_carerix.store import (
    NOTIFY_CHANNEL,
    SCHEMA_VERSION,
    EventStore,
    StoreUnavailable,
    resolve_store_url,
)
from tests.fixtures.store import PATIENT, FollowingReader, pause_after_insert, run_in_threads, with_options

GUIDE_PAYLOAD = (
    b'{\n"id": "8469bf71-4942-45ea-98b8-393077288785",\n"time": "2024-02-14T14:24:40Z",\n'
    b'"type": "cremployee:updated",\n"applicationId": "192e953d-1e3a-4513-b14c-a66bca4be005", '
    b'"webhookId": "4c3174c9-deab-426a-8d26-23bbc89e461e",\n"tenant": "cxdev50streamer",\n'
    b'"data": { "entityId": "1",\n"changedFields": [ "touser.attributechanges", "touser", '
    b'"touser.lastname", "modificationdate", "touser.modificationdate" ] } }'
)


def make_event(
    type_: str = "cremployee:updated",
    *,
    event_id: str | None = None,
    webhook_id: str = "wh-1",
    application_id: str = "app-1",
    tenant: str = "demo",
    entity_id: str | int = "1",
    time: str = "2024-02-14T14:24:40Z",
) -> tuple[bytes, EventPayload]:
    import json

    body = {
        "id": event_id or str(uuid.uuid4()),
        "time": time,
        "type": type_,
        "applicationId": application_id,
        "webhookId": webhook_id,
        "tenant": tenant,
        "data": {"entityId": entity_id, "changedFields": ["x"]},
    }
    raw = json.dumps(body).encode()
    return raw, EventPayload.model_validate_json(raw)


def test_guide_payload_stored_byte_for_byte(store: EventStore) -> None:
    event = EventPayload.model_validate_json(GUIDE_PAYLOAD)
    sequence, inserted = store.insert(GUIDE_PAYLOAD, event)
    assert inserted and sequence >= 1
    [stored] = store.events_after(0)
    assert stored.raw.encode() == GUIDE_PAYLOAD
    assert stored.payload["data"]["changedFields"][2] == "touser.lastname"
    assert stored.sequence == sequence
    assert stored.event_id == "8469bf71-4942-45ea-98b8-393077288785"
    assert stored.type == "cremployee:updated"
    assert stored.time == datetime(2024, 2, 14, 14, 24, 40, tzinfo=timezone.utc)
    assert stored.tenant == "cxdev50streamer"
    assert stored.application_id == "192e953d-1e3a-4513-b14c-a66bca4be005"
    assert stored.webhook_id == "4c3174c9-deab-426a-8d26-23bbc89e461e"
    assert stored.entity_id == "1"
    assert stored.received_at.tzinfo is not None
    assert abs(stored.received_at - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_provenance_is_stored_per_event_in_a_group(store: EventStore) -> None:
    """How each event arrived (signature checked, recovered from Carerix's delivery log) is recorded beside it,
    item by item in one group; an item without one counts as a plain delivery."""
    from airflow_provider_carerix.store import Provenance

    signed, recovered, plain = make_event(), make_event(), make_event()
    store.insert_many(
        [
            (*signed, Provenance(signature_verified=True)),
            (*recovered, Provenance(recovered=True)),
            plain,
        ]
    )
    stored = {e.event_id: (e.signature_verified, e.recovered) for e in store.events_after(0)}
    assert stored == {signed[1].id: (True, False), recovered[1].id: (None, True), plain[1].id: (None, False)}


def test_a_group_of_more_ids_than_one_lookup_takes_finds_every_duplicate(store: EventStore) -> None:
    """Duplicates are looked up in chunks of ids (SQL parameter limits): every chunk must be read, or an id past
    the first ones is taken as new and its insert fails on the unique key."""
    group = [make_event() for _ in range(1_200)]
    first = store.insert_many(group)
    again = store.insert_many(list(reversed(group)))
    assert again == [(sequence, False) for sequence, _ in reversed(first)]
    assert store.last_sequence() == first[-1][0]


def test_type_is_lowercased(store: EventStore) -> None:
    store.insert(*make_event("CREmployee:Updated"))
    assert [e.type for e in store.events_after(0)] == ["cremployee:updated"]
    assert len(store.events_after(0, event_types=["CREMPLOYEE:updated"])) == 1


def test_duplicates_stored_once(store: EventStore) -> None:
    raw, event = make_event(event_id="dup-1")
    first = store.insert(raw, event)
    assert first[1] is True
    assert store.insert(raw, event) == (first[0], False)
    other = make_event(event_id="other")
    results = store.insert_many([other, (raw, event), other])
    assert results[1] == (first[0], False)
    assert results[0][1] is True and results[2] == (results[0][0], False)
    assert [e.event_id for e in store.events_after(0)] == ["dup-1", "other"]


def test_a_repeat_inside_a_group_does_not_end_the_group(store: EventStore) -> None:
    a, b = make_event(), make_event()
    results = store.insert_many([a, a, b, a])
    assert [new for _, new in results] == [True, False, True, False]
    assert results[0][0] == results[1][0] == results[3][0] != results[2][0]
    assert [e.event_id for e in store.events_after(0)] == [a[1].id, b[1].id]


def test_sequences_increase(store: EventStore) -> None:
    results = store.insert_many([make_event() for _ in range(5)])
    results += [store.insert(*make_event()) for _ in range(3)]
    sequences = [s for s, _ in results]
    assert sequences == sorted(sequences) and len(set(sequences)) == 8
    assert store.last_sequence() == sequences[-1]
    assert [e.sequence for e in store.events_after(sequences[2])] == sequences[3:]


def test_events_after_filters(store: EventStore) -> None:
    rows = [
        make_event("cremployee:updated", webhook_id="w1", application_id="a1", tenant="t1"),
        make_event("cremployee:created", webhook_id="w2", application_id="a1", tenant="t1"),
        make_event("crmatch:updated", webhook_id="w1", application_id="a2", tenant="t2"),
        make_event("crjob:created", webhook_id="w3", application_id="a2", tenant="t2"),
        make_event("cr_x:updated", webhook_id="w3", application_id="a2", tenant="t2"),
        # What "cr_x:*" and "*:re_sent" would match if "_" were read as LIKE's one-character wildcard.
        make_event("crmx:updated", webhook_id="w4", application_id="a3", tenant="t3"),
        make_event("crmx:re_sent", webhook_id="w4", application_id="a3", tenant="t3"),
        make_event("crmx:rexsent", webhook_id="w4", application_id="a3", tenant="t3"),
    ]
    store.insert_many(rows)

    def types(**kwargs: object) -> list[str]:
        return [e.type for e in store.events_after(0, **kwargs)]  # type: ignore[arg-type]

    assert types(event_types=["cremployee:updated"]) == ["cremployee:updated"]
    assert types(event_types=["cremployee:*"]) == ["cremployee:updated", "cremployee:created"]
    assert types(event_types=["*:created"]) == ["cremployee:created", "crjob:created"]
    assert types(event_types=["*"]) == [r[1].type for r in rows]
    assert types(event_types=["*:*"]) == [r[1].type for r in rows]
    assert types(event_types="crmatch:updated") == ["crmatch:updated"]
    assert types(event_types=["crmatch:updated", "crjob:*"]) == ["crmatch:updated", "crjob:created"]
    # "_" is a LIKE wildcard: "cr_x:*" must not match "crmx:updated", only itself; likewise for the action.
    assert types(event_types=["cr_x:*"]) == ["cr_x:updated"]
    assert types(event_types=["*:re_sent"]) == ["crmx:re_sent"]
    assert types(event_types=["cr%:*"]) == []
    assert types(event_types=[]) == []
    assert types(webhook_id="w1") == ["cremployee:updated", "crmatch:updated"]
    assert types(application_id="a2", event_types=["*:updated"]) == ["crmatch:updated", "cr_x:updated"]
    assert types(tenant="t1") == ["cremployee:updated", "cremployee:created"]
    assert types(limit=2) == ["cremployee:updated", "cremployee:created"]
    assert types(received_after=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    assert len(types(received_after=datetime.now(timezone.utc) - timedelta(minutes=1))) == len(rows)


def test_cursors_never_move_backwards(store: EventStore) -> None:
    assert store.get_cursor("dag-a") == 0
    assert store.advance_cursor("dag-a", 5) == 5
    assert store.advance_cursor("dag-a", 3) == 5
    assert store.get_cursor("dag-a") == 5
    assert store.advance_cursor("dag-a", 9) == 9
    assert store.get_cursor("dag-b") == 0
    # Durable: another handle on the same store sees it.
    other = EventStore(store.url)
    try:
        assert other.get_cursor("dag-a") == 9
    finally:
        other.close()


def test_purge_keeps_newest(store: EventStore) -> None:
    store.insert_many([make_event() for _ in range(3)])
    assert store.purge(timedelta(days=30)) == 0
    last = store.last_sequence()
    assert store.purge(timedelta(seconds=-60)) == 2
    assert [e.sequence for e in store.events_after(0)] == [last]
    assert store.last_sequence() == last
    new_seq, _ = store.insert(*make_event())
    assert new_seq > last


def test_purge_keeps_an_event_timed_after_the_horizon_whenever_it_was_received(store: EventStore) -> None:
    """Carerix's clock ahead of ours: an event received before the cutoff but timed after it stays. Purged, a
    replay of it (timed after the recorded horizon) would be accepted as new and start its DAG again."""
    ahead = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old, skewed, newest = make_event(), make_event(time=ahead), make_event()
    store.insert_many([old, skewed, newest])
    # Received a minute "before" the cutoff: only the events' own times decide.
    assert store.purge(timedelta(seconds=-60)) == 1
    assert [e.event_id for e in store.events_after(0)] == [skewed[1].id, newest[1].id]
    horizon = store.purge_horizon()
    assert horizon is not None and horizon < datetime.fromisoformat(ahead.replace("Z", "+00:00"))


def test_schema_versioned(store: EventStore) -> None:
    store.ping()
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT version FROM carerix_schema_version")).scalar() == SCHEMA_VERSION
            )
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE carerix_schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    finally:
        engine.dispose()
    newer = EventStore(store.url)
    with pytest.raises(RuntimeError, match="newer"):
        newer.last_sequence()
    newer.close()


def test_dialect(store: EventStore) -> None:
    assert store.dialect in ("sqlite", "postgresql")
    assert store.dialect in store.url


def test_sqlite_is_wal_and_full_sync(tmp_path: Path) -> None:
    store = EventStore(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'events.db'}")
    store.ping()
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_unreachable_sqlite_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = EventStore(f"sqlite:///{blocker / 'events.db'}")
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.insert(*make_event())


def test_unreachable_postgres_raises_store_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = EventStore(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=2")
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_unsupported_backend() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        EventStore("mysql://x@y/z")


def test_resolve_store_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Explicit URL, then the environment (either name), then the default in AIRFLOW_HOME (Airflow's own
    default, ~/airflow, when unset: never the working directory, which differs per process)."""
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", "sqlite:////env.db")
    monkeypatch.delenv("AIRFLOW__CARERIX__EVENT_STORE_URL", raising=False)
    assert resolve_store_url("sqlite:////explicit.db") == "sqlite:////explicit.db"
    assert resolve_store_url() == "sqlite:////env.db"
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_URL", "sqlite:////env.db")
    assert resolve_store_url() == "sqlite:////env.db"  # two names, one value: fine
    monkeypatch.delenv("CARERIX_EVENT_STORE_URL")
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_URL", "sqlite:////airflow.db")
    assert resolve_store_url() == "sqlite:////airflow.db"
    monkeypatch.delenv("AIRFLOW__CARERIX__EVENT_STORE_URL")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert resolve_store_url() == f"sqlite:///{tmp_path / 'carerix_events.db'}"
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.chdir(tmp_path)
    assert resolve_store_url() == f"sqlite:///{Path('~/airflow').expanduser() / 'carerix_events.db'}"
    assert resolve_store_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError):
        parse_duration("soon")


@pytest.mark.postgres
def test_postgres_notify_inside_transaction(postgres_database: str) -> None:
    import psycopg

    store = EventStore(postgres_database)
    store.ping()
    dsn = postgres_database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        results = store.insert_many([make_event(), make_event()])
        store.insert(*make_event(event_id="x"))
        store.insert(*make_event(event_id="x"))  # duplicate: no new row, no notification
        payloads = []
        for notification in listener.notifies(timeout=5, stop_after=3):
            payloads.append(int(notification.payload))
    assert payloads[:2] == [s for s, _ in results]
    assert len(payloads) == 3
    store.close()


@pytest.mark.postgres
def test_postgres_concurrent_writers_reader_never_skips(postgres_database: str) -> None:
    """A reader that advances past what it saw must see every event: sequence order == commit order."""
    writers, per_writer = 4, 40
    store = EventStore(with_options(postgres_database, **PATIENT))
    store.ping()

    def write() -> None:
        for _ in range(per_writer):
            store.insert_many([make_event(), make_event()])

    reader = FollowingReader(store)
    run_in_threads(write, [()] * writers)
    seen = reader.finish()
    all_sequences = [e.sequence for e in store.events_after(0, limit=10_000)]
    assert len(all_sequences) == writers * per_writer * 2
    assert seen == all_sequences
    store.close()


@pytest.mark.postgres
def test_postgres_same_event_from_two_receivers_at_once_is_stored_once(postgres_database: str) -> None:
    """Carerix retries a delivery to another receiver while the first is still committing it: the second
    writer's insert waits for the first, then reports the first one's sequence, not new, beside its own new
    event in the same group."""
    import threading

    url = with_options(postgres_database, **PATIENT)
    first, second = EventStore(url), EventStore(url)
    first.ping()
    second.ping()
    in_flight, resume = pause_after_insert(first)

    shared, own = make_event(event_id="shared"), make_event(event_id="own")
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("first", first.insert_many([shared]))),
        threading.Thread(target=lambda: results.__setitem__("second", second.insert_many([shared, own]))),
    ]
    threads[0].start()
    try:
        assert in_flight.wait(30)
        threads[1].start()
        time.sleep(0.5)  # at least this long: the second writer is waiting for the first one's row
        assert threads[1].is_alive() and "second" not in results
    finally:
        resume.set()
        for thread in threads:
            thread.join(60)
    [(shared_sequence, shared_new)] = results["first"]
    assert shared_new
    ((again_sequence, again_new), (own_sequence, own_new)) = results["second"]
    assert (again_sequence, again_new) == (shared_sequence, False)
    assert own_new and own_sequence != shared_sequence
    assert [e.event_id for e in first.events_after(0)] == ["shared", "own"]
    first.close()
    second.close()


@pytest.mark.postgres
def test_postgres_readers_are_held_back_below_an_insert_in_flight(postgres_database: str) -> None:
    """A writer has its sequence but has not committed; a later writer commits. Readers must not be shown the
    later event yet (a cursor moved past it would skip the earlier one when it commits), then see both."""
    import threading

    url = with_options(postgres_database, **PATIENT)
    slow, fast = EventStore(url), EventStore(url)
    slow.ping()
    fast.ping()
    settled, _ = fast.insert(*make_event(event_id="settled"))
    in_flight, resume = pause_after_insert(slow)
    results: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: results.__setitem__("slow", slow.insert(*make_event(event_id="slow")))
    )
    thread.start()
    try:
        assert in_flight.wait(30)
        later, _ = fast.insert(*make_event(event_id="fast"))
        # Held back exactly below the insert in flight: what settled before it is shown.
        shown = [e.event_id for e in fast.events_after(0)]
        last_shown = fast.last_sequence()
    finally:
        resume.set()
        thread.join(60)
    earlier, inserted = results["slow"]
    assert inserted and settled < earlier < later
    assert shown == ["settled"] and last_shown == earlier - 1 == settled
    assert [(e.event_id, e.sequence) for e in fast.events_after(0)] == [
        ("settled", settled),
        ("slow", earlier),
        ("fast", later),
    ]
    assert fast.last_sequence() == later
    slow.close()
    fast.close()


def test_sqlite_concurrent_writers_from_two_handles(tmp_path: Path) -> None:
    """Two processes' worth of handles on one SQLite file: no 'database is locked' and nothing lost."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    a, b = EventStore(url), EventStore(url)

    def write(store: EventStore) -> None:
        for _ in range(30):
            store.insert_many([make_event() for _ in range(3)])

    run_in_threads(write, [(a,), (b,), (a,), (b,)])
    sequences = [e.sequence for e in a.events_after(0, limit=10_000)]
    assert len(sequences) == 4 * 30 * 3
    assert sequences == sorted(set(sequences))
    a.close()
    b.close()


def _integrity_error(engine_url: str, statements: list[str]) -> sa.exc.IntegrityError:
    """The error SQLAlchemy raises for the last statement, from a real database."""
    engine = sa.create_engine(engine_url)
    try:
        with engine.begin() as conn:
            for statement in statements[:-1]:
                conn.exec_driver_sql(statement)
            with pytest.raises(sa.exc.IntegrityError) as caught:
                conn.exec_driver_sql(statements[-1])
        return caught.value
    finally:
        engine.dispose()


def test_a_unique_key_race_is_retryable_other_refusals_are_not(tmp_path: Path) -> None:
    """A unique key taken by a concurrent writer answers 503 (Carerix retries and the event is then found as a
    duplicate); a value the database refuses is the event's fault (422), and the message quotes no row."""
    import sqlite3

    psycopg = pytest.importorskip("psycopg")
    from airflow_provider_carerix.store import EventRejected

    url = f"sqlite:///{tmp_path / 'errors.db'}"
    table = "CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT UNIQUE, v TEXT NOT NULL CHECK (v != 'bad'))"
    unique = _integrity_error(
        url, [table, "INSERT INTO t VALUES (1, 'k', 'a')", "INSERT INTO t VALUES (2, 'k', 'a')"]
    )
    primary = _integrity_error(url, ["INSERT INTO t VALUES (1, 'other', 'a')"])
    not_null = _integrity_error(url, ["INSERT INTO t VALUES (3, 'x', NULL)"])
    check = _integrity_error(url, ["INSERT INTO t VALUES (4, 'secret-row', 'bad')"])
    # Python 3.10's sqlite3 has no error code (nor has one built by hand): the message decides there.
    by_text = sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed: t.key"))
    other_text = sa.exc.IntegrityError(
        "INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed: t.v")
    )
    pg_unique = sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key"))
    pg_not_null = sa.exc.IntegrityError("INSERT", {}, psycopg.errors.NotNullViolation("null value"))
    for race in (unique, primary, by_text):
        with pytest.raises(StoreUnavailable, match="event store busy: IntegrityError"), EventStore._guard():
            raise race
    with pytest.raises(StoreUnavailable, match="event store busy: UniqueViolation"), EventStore._guard():
        raise pg_unique
    for refused in (not_null, check, other_text, pg_not_null):
        with (
            pytest.raises(
                EventRejected, match=r"refused the event: (IntegrityError|NotNullViolation)$"
            ) as caught,
            EventStore._guard(),
        ):
            raise refused
        assert "secret-row" not in str(caught.value) and caught.value.__cause__ is None


def test_a_lease_has_one_holder_until_it_expires_and_only_its_holder_commits(store: EventStore) -> None:
    """The consumer lease contract the events API builds on, on the store itself (both backends)."""
    from airflow_provider_carerix.store import ConsumerOwned, Lease

    first = store.acquire_lease("c", owner="dag_a", holder="run-1", ttl=60)
    assert (first.acquired, first.holder) == (True, "run-1")
    assert first.until is not None and first.until > datetime.now(timezone.utc) + timedelta(seconds=50)
    # Held and not expired: another run waits, told who holds it and until when.
    assert store.acquire_lease("c", owner="dag_a", holder="run-2", ttl=60) == Lease(
        False, "run-1", first.until
    )
    with pytest.raises(ConsumerOwned, match="dag_a"):  # another DAG never takes this DAG's consumer
        store.acquire_lease("c", owner="dag_b", holder="run-3", ttl=60)
    assert store.consumer_owner("c") == "dag_a"
    assert store.acquire_lease("c", owner="dag_a", holder="run-1", ttl=60).acquired  # its holder renews
    assert store.renew_lease("c", "run-1", ttl=60) and not store.renew_lease("c", "run-2", ttl=60)
    # Only the holder releases, and only the holder's release moves the cursor.
    assert not store.release_lease("c", "run-2", cursor="c:processed", sequence=7)
    assert store.get_cursor("c:processed") == 0
    assert not store.release_lease("nobody", "run-1", cursor="c:processed", sequence=7)
    assert store.release_lease("c", "run-1", cursor="c:processed", sequence=7)
    assert store.get_cursor("c:processed") == 7
    assert not store.renew_lease("c", "run-1", ttl=60)  # released: nothing left to renew
    # Free again; then an expired lease is taken over by another run.
    assert store.acquire_lease("c", owner=None, holder="run-2", ttl=0.2).acquired
    assert not store.acquire_lease("c", owner=None, holder="run-3", ttl=60).acquired
    time.sleep(0.5)
    taken = store.acquire_lease("c", owner=None, holder="run-3", ttl=60)
    assert (taken.acquired, taken.holder) == (True, "run-3")
    assert not store.release_lease("c", "run-2", cursor="c:processed", sequence=9)  # the old holder lost it
    assert store.get_cursor("c:processed") == 7 and store.consumer_owner("c") == "dag_a"
