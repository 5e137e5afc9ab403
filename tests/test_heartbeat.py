"""Receivers say which store they write to; readers notice when none writes to theirs.

A deployment split in two (the receiver on one store, the triggers on another) reports healthy everywhere
while no event ever reaches a DAG. Receivers record heartbeats in the store they write to; the readers warn,
naming their store and where it came from, when none is recent. Real stores on both backends, a real
``carerix-receiver`` process.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
from airflow_provider_carerix.receiver.heartbeat import ReceiverHeartbeat
from airflow_provider_carerix.store import EventStore
from tests.fixtures.receiver import start_receiver_process

NOW = datetime.now(timezone.utc)


def test_a_store_has_one_identity_whoever_opens_it(store: EventStore, store_url: str) -> None:
    first = store.identity()
    with EventStore(store_url) as other:
        assert other.identity().store_id == first.store_id
    assert len(first.store_id) == 32 and "password" not in first.url


def test_heartbeats_are_one_row_per_receiver_newest_first(store: EventStore) -> None:
    for receiver_id in ("a", "b", "a"):
        store.record_heartbeat(receiver_id, kind="standalone", host="h", pid=1, version="1", started_at=NOW)
        time.sleep(0.01)
    seen = store.receivers_seen()
    assert [r.receiver_id for r in seen] == ["a", "b"]
    assert seen[0].last_seen >= seen[1].last_seen >= NOW
    assert store.receivers_seen(within=timedelta(seconds=-1)) == []
    # Receivers not seen for a week are dropped at the next heartbeat.
    store.record_heartbeat(
        "c", kind="api-server", host="h", pid=2, version="1", started_at=NOW, keep=timedelta(0)
    )
    assert [r.receiver_id for r in store.receivers_seen()] == ["c"]


def test_the_heartbeat_thread_beats_until_stopped(store: EventStore) -> None:
    beat = ReceiverHeartbeat(store, kind="standalone", interval=0.05).start()
    deadline = time.monotonic() + 30
    while beat.beats < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    beat.stop()
    [row] = store.receivers_seen()
    assert (row.receiver_id, row.kind) == (beat.receiver_id, "standalone")
    count = beat.beats
    time.sleep(0.2)
    assert beat.beats == count


def test_a_reader_warns_once_when_no_receiver_writes_to_its_store(
    store: EventStore, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hook = CarerixEventStoreHook(store_url=store_url)
    caplog.set_level(logging.INFO)
    try:
        assert hook.check_receivers() is False
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith(
            f"No Carerix receiver has recorded a heartbeat in the event store {hook.get_store_location().display} "
            "(from an explicit store URL) for 15m (last: never)"
        )
        assert hook.check_receivers() is False  # still silent: said once
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        store.record_heartbeat("r", kind="standalone", host="h", pid=1, version="1", started_at=NOW)
        assert hook.check_receivers() is True
        assert "A Carerix receiver writes to the event store" in caplog.text
        # A heartbeat older than the window counts as silence again.
        assert hook.check_receivers(now=datetime.now(timezone.utc) + timedelta(minutes=16)) is False
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        hook.close()


def test_the_warning_can_be_tuned_or_turned_off(
    store: EventStore, store_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store.record_heartbeat("r", kind="standalone", host="h", pid=1, version="1", started_at=NOW)
    hook = CarerixEventStoreHook(store_url=store_url)
    try:
        monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SILENCE_WARNING", "1h")
        assert hook.check_receivers(now=datetime.now(timezone.utc) + timedelta(minutes=30)) is True
        monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SILENCE_WARNING", "0")
        assert hook.check_receivers(now=datetime.now(timezone.utc) + timedelta(days=30)) is True
        monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SILENCE_WARNING", "soon")
        with pytest.raises(ValueError, match="receiver_silence_warning"):
            hook.check_receivers()
    finally:
        hook.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_running_receiver_records_its_heartbeat(store_url: str, tmp_path: Path) -> None:
    proc = start_receiver_process(store_url, secrets=["s3cret"], log_dir=tmp_path)
    try:
        with EventStore(store_url) as store:
            deadline = time.monotonic() + 60
            while not store.receivers_seen():
                assert time.monotonic() < deadline, proc.log
                time.sleep(0.1)
            [seen] = store.receivers_seen()
        assert seen.kind == "standalone" and seen.pid == proc.proc.pid
    finally:
        proc.stop()
