"""CarerixEvents and the store hook's claims: exactly once per consumer, on SQLite and PostgreSQL.

Real stores, real threads and a real process killed with SIGKILL: a claim hands every unprocessed event,
records them only on a clean exit, makes a concurrent claim wait, survives a crashed holder through the lease,
refuses a second DAG, and never records what it may no longer own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.hooks.event_store import (
    CarerixEventStoreHook,
    ConsumerBusy,
    ConsumerOwned,
    LeaseLost,
    store_url_from_connection,
)
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store.filters import EventFilter
from tests.guide import guide_event

ROOT = Path(__file__).resolve().parent.parent
EMPLOYEES = EventFilter.build(["cremployee:updated"])


def put(store: EventStore, event_type: str = "cremployee:updated") -> str:
    body = guide_event(int(uuid.uuid4().int % 100000), ["touser"])
    body["type"] = event_type
    store.insert(json.dumps(body), EventPayload.model_validate(body))
    return body["id"]


@pytest.fixture
def hook(store_url: str) -> Iterator[CarerixEventStoreHook]:
    h = CarerixEventStoreHook(store_url=store_url)
    yield h
    h.close()


def ids(claim: Any) -> list[str]:
    return [e.event_id for e in claim]


def test_claim_hands_unprocessed_oldest_first_and_records_only_on_success(
    store: EventStore, hook: CarerixEventStoreHook
) -> None:
    hook.ensure_consumer("c")  # a new consumer starts at the end of the log
    first = [put(store), put(store)]
    put(store, "crjob:created")  # not for this consumer
    with pytest.raises(RuntimeError, match="boom"), hook.claim("c", EMPLOYEES) as claim:
        assert ids(claim) == first
        raise RuntimeError("boom")  # a failed try records nothing
    later = put(store)
    with hook.claim("c", EMPLOYEES) as claim:
        assert ids(claim) == [*first, later]  # the retry: the same events plus newer ones
        assert claim.events[0]["data"]["entityId"] == claim.events[0].entity_id  # reads like the payload
    with hook.claim("c", EMPLOYEES) as claim:
        assert ids(claim) == []


def test_limit_leaves_the_rest_for_the_next_claim(store: EventStore, hook: CarerixEventStoreHook) -> None:
    hook.ensure_consumer("c")
    sent = [put(store) for _ in range(5)]
    with hook.claim("c", EMPLOYEES, limit=2) as claim:
        assert ids(claim) == sent[:2] and claim.has_more
    with hook.claim("c", EMPLOYEES, limit=10) as claim:
        assert ids(claim) == sent[2:] and not claim.has_more


def test_a_second_dag_cannot_claim_the_consumer(store: EventStore, hook: CarerixEventStoreHook) -> None:
    with hook.claim("c", EMPLOYEES, owner="dag_a"):
        pass
    with (
        pytest.raises(ConsumerOwned, match="belongs to DAG 'dag_a', not 'dag_b'"),
        hook.claim("c", EMPLOYEES, owner="dag_b"),
    ):
        pass


def test_concurrent_claims_take_turns_and_never_share_an_event(store: EventStore, store_url: str) -> None:
    """Several "runs" claim the same consumer at once while events keep arriving: each event exactly once."""
    CarerixEventStoreHook(store_url=store_url).ensure_consumer("c")
    sent: list[str] = []
    got: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        hook = CarerixEventStoreHook(store_url=store_url)
        try:
            for _ in range(5):
                with hook.claim("c", EMPLOYEES, owner="dag") as claim:
                    time.sleep(0.02)  # work while holding the lease
                    with lock:
                        got.extend(ids(claim))
        except BaseException as exc:
            errors.append(exc)
        finally:
            hook.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(40):
        sent.append(put(store))
        time.sleep(0.005)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with CarerixEventStoreHook(store_url=store_url).claim("c", EMPLOYEES) as rest:
        got.extend(ids(rest))
    assert sorted(got) == sorted(sent)
    assert len(got) == len(set(got)), "an event was handed to two claims"


def test_busy_consumer_is_a_clear_error_after_wait_timeout(
    store: EventStore, hook: CarerixEventStoreHook, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = CarerixEventStoreHook(store_url=store_url)
    with (
        hook.claim("c", EMPLOYEES, holder="run-1"),
        caplog.at_level("INFO"),
        pytest.raises(ConsumerBusy, match="run-1 holds its lease"),
        other.claim("c", EMPLOYEES, wait_timeout=0.5),
    ):
        pass
    assert "is busy: run-1 is processing it" in caplog.text
    other.close()


def test_lost_lease_records_nothing(store: EventStore, hook: CarerixEventStoreHook) -> None:
    hook.ensure_consumer("c")
    sent = put(store)
    processed_before = store.get_cursor("c:processed")
    with pytest.raises(LeaseLost), hook.claim("c", EMPLOYEES, holder="slow") as claim:
        assert ids(claim) == [sent]
        # The holder stalled past its lease and another run took over.
        with store._engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE carerix_consumers SET lease_until = :t"), {"t": "2000-01-01 00:00:00"}
            )
        assert store.acquire_lease("c", owner=None, holder="fast", ttl=60).acquired
    assert store.get_cursor("c:processed") == processed_before


def test_a_holder_killed_mid_batch_is_taken_over_after_its_lease(store: EventStore, store_url: str) -> None:
    """kill -9 of the process inside its claim: nothing recorded, the lease expires, the next claim gets all."""
    CarerixEventStoreHook(store_url=store_url).ensure_consumer("c")
    sent = [put(store) for _ in range(3)]
    script = textwrap.dedent(
        f"""
        import sys, time
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
        from airflow_provider_carerix.store.filters import EventFilter

        hook = CarerixEventStoreHook(store_url={store_url!r})
        with hook.claim("c", EventFilter.build(["cremployee:updated"]), lease_seconds=3, holder="doomed") as c:
            print("CLAIMED", len(c), flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"CLAIMED") and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.strip() == b"CLAIMED 3"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    hook = CarerixEventStoreHook(store_url=store_url)
    try:
        with hook.claim("c", EMPLOYEES, wait_timeout=60) as claim:  # waits out the 3 s lease
            assert ids(claim) == sent
    finally:
        hook.close()


def test_store_url_from_connection() -> None:
    from airflow.sdk import Connection

    pg = Connection(
        conn_id="s",
        conn_type="postgres",
        host="db",
        port=5432,
        schema="carerix",
        login="u",
        password="p@s:s/w",
    )
    url = sa.engine.make_url(store_url_from_connection(pg))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        "u",
        "p@s:s/w",
        "db",
        5432,
        "carerix",
    )
    lite = Connection(conn_id="s", conn_type="sqlite", host="/data/events.db")
    assert store_url_from_connection(lite) == "sqlite:////data/events.db"
    extra = Connection(
        conn_id="s", conn_type="generic", password="pw", extra=json.dumps({"url": "postgresql://u@db/x"})
    )
    assert store_url_from_connection(extra) == "postgresql+psycopg://u:pw@db/x"
    # This provider's type, and "generic": what `airflow connections add --conn-type postgres` stores when
    # the postgres provider is not installed.
    for conn_type in ("carerix_event_store", "generic"):
        fields = Connection(
            conn_id="s", conn_type=conn_type, host="db", port=5432, schema="c", login="u", password="p"
        )
        assert store_url_from_connection(fields) == "postgresql+psycopg://u:p@db:5432/c"
        file = Connection(conn_id="s", conn_type=conn_type, host="/data/events.db")
        assert store_url_from_connection(file) == "sqlite:////data/events.db"
    with pytest.raises(ValueError, match=r"'s' \(type http\) does not describe a Carerix event store"):
        store_url_from_connection(Connection(conn_id="s", conn_type="http", host="x"))
    with pytest.raises(ValueError, match="does not describe a Carerix event store"):
        store_url_from_connection(Connection(conn_id="s", conn_type="generic"))


def test_connection_password_never_reaches_trigger_kwargs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow_provider_carerix.events import CarerixEvents

    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_EVENT_STORE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "via-conn.db"), "password": "s3cret"}),
    )
    monkeypatch.delenv("CARERIX_EVENT_STORE_URL")  # the connection is the only store configured
    events = CarerixEvents("conn_test", event_types=["cremployee:updated"])
    _, kwargs = events.watchers[0].trigger.serialize()
    assert "s3cret" not in json.dumps(kwargs)
    assert kwargs["store_conn_id"] == "carerix_event_store" and kwargs["store_url"] is None
    hook = CarerixEventStoreHook()
    assert hook.get_store_url() == f"sqlite:///{tmp_path / 'via-conn.db'}"
    hook.close()


def test_same_name_with_another_filter_is_a_parse_time_error() -> None:
    from airflow_provider_carerix.events import CarerixEvents

    CarerixEvents("dup_test", event_types=["cremployee:updated"])
    CarerixEvents("dup_test", event_types=["CREmployee:updated"])  # the same filter: the same declaration
    other_file: dict[str, Any] = {"__file__": "/dags/other.py", "CarerixEvents": CarerixEvents}
    with pytest.raises(ValueError, match="declared twice with different filters"):
        exec('CarerixEvents("dup_test", event_types=["crjob:updated"])', other_file)
    CarerixEvents("dup_test", event_types=["crjob:updated"])  # this file, edited and parsed again: fine


def test_carerix_events_survive_dag_serialization() -> None:
    """The scheduler sees only the serialized DAG: the asset, its watcher and plain JSON trigger kwargs."""
    from airflow.sdk import DAG

    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow < 3.3
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    from airflow_provider_carerix.events import CarerixEvents

    events = CarerixEvents("ser_test", event_types=["cremployee:updated"], condition="data.entityId eq '1'")
    with DAG("ser_test_dag", schedule=[events]) as dag:
        pass
    data = DagSerialization.to_dict(dag)
    json.dumps(data)
    restored = DagSerialization.from_dict(data)
    (asset,) = [a for _, a in restored.timetable.asset_condition.iter_assets()]
    assert asset.name == "ser_test" and asset.uri == "ser_test"
    assert len(asset.watchers) == 1
    text = json.dumps(data)
    assert "airflow_provider_carerix.triggers.events.CarerixEventTrigger" in text
    assert '"consumer": "ser_test"' in text
