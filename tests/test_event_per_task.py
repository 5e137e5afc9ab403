"""One task instance per event: reservations on SQLite and PostgreSQL, with real threads and a real SIGKILL.

A "run" here is what a DAG run does through the hook-level functions ``CarerixEvents`` calls: ``reserve``
for its run id, ``claim_event`` per event with one holder per try, ``release`` at its end. Whether Airflow
still has a run queued or running is the ``alive`` answer a test gives (``tests/test_event_per_task_dag.py``
and the end-to-end tests ask a real Airflow). Checked: each event recorded processed exactly once per
consumer whatever the order, failures, concurrent runs and killed tries; an event reserved by a live run is
never handed to another run (nor to ``claim()``); a run that is over gives its events back; the processed
cursor moves over the contiguous prefix of processed events.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.hooks import reservations
from airflow_provider_carerix.hooks.event_store import (
    CarerixEventStoreHook,
    ClaimedEvent,
    ConsumerBusy,
    ConsumerOwned,
    LeaseLost,
)
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store.filters import EventFilter
from tests.fixtures.store import PATIENT, with_options
from tests.guide import guide_event

ROOT = Path(__file__).resolve().parent.parent
EMPLOYEES = EventFilter.build(["cremployee:updated"])


def put(store: EventStore, event_type: str = "cremployee:updated") -> str:
    body = guide_event(int(uuid.uuid4().int % 100000), ["touser"])
    body["type"] = event_type
    store.insert(json.dumps(body), EventPayload.model_validate(body))
    return body["id"]


def sequence_of(store: EventStore, event_id: str) -> int:
    stored = store.event_by_id(event_id)
    assert stored is not None
    return stored.sequence


class Airflow:
    """What Airflow would answer about runs: alive unless a test says the run is over."""

    def __init__(self) -> None:
        self.over: set[str] = set()
        self.asked: list[str] = []

    def alive(self, run_id: str, dag_id: str | None) -> bool | None:
        self.asked.append(run_id)
        return run_id not in self.over


class Run:
    """One DAG run of the per-event shape, through the functions ``CarerixEvents`` calls."""

    def __init__(
        self,
        hook: CarerixEventStoreHook,
        run_id: str,
        airflow: Airflow,
        *,
        consumer: str = "c",
        dag_id: str = "dag",
        lease: float = 60.0,
    ) -> None:
        self.hook, self.run_id, self.airflow = hook, run_id, airflow
        self.consumer, self.dag_id, self.lease = consumer, dag_id, lease

    def holder(self, task: str = "reserve", try_number: int = 1) -> str:
        return f"{self.dag_id} run {self.run_id} task {task} try {try_number} ({uuid.uuid4().hex[:8]})"

    def reserve(self, **kwargs: Any) -> list[str]:
        return reservations.reserve(
            self.hook,
            self.consumer,
            EMPLOYEES,
            run_id=self.run_id,
            dag_id=self.dag_id,
            holder=self.holder(),
            lease_seconds=self.lease,
            alive=self.airflow.alive,
            **kwargs,
        ).event_ids

    def claim_event(self, event_id: str, *, holder: str | None = None, **kwargs: Any) -> Any:
        return reservations.claim_event(
            self.hook,
            self.consumer,
            event_id,
            run_id=self.run_id,
            dag_id=self.dag_id,
            holder=holder or self.holder(f"handle[{event_id[:6]}]"),
            lease_seconds=self.lease,
            alive=self.airflow.alive,
            **kwargs,
        )

    def process(self, event_id: str) -> ClaimedEvent:
        with self.claim_event(event_id) as event:
            return event

    def release(self) -> int:
        return reservations.release(self.hook, self.consumer, run_id=self.run_id)


@pytest.fixture
def hook(store_url: str) -> Iterator[CarerixEventStoreHook]:
    h = CarerixEventStoreHook(store_url=store_url)
    yield h
    h.close()


@pytest.fixture
def airflow() -> Airflow:
    return Airflow()


def test_each_run_gets_its_own_events_and_each_is_recorded_once_in_any_order(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    from airflow_provider_carerix.ui.sections import consumers

    hook.ensure_consumer("c")
    start = hook.processed_position("c")
    first, second = put(store), put(store)
    skipped = put(store, "crjob:created")  # not this consumer's: the cursor moves over it
    third, fourth = put(store), put(store)
    a, b = Run(hook, "run-a", airflow), Run(hook, "run-b", airflow)
    assert a.reserve() == [first, second, third, fourth]
    assert b.reserve() == []  # run-a is alive: none of its events for run-b
    assert a.process(third).event_id == third  # out of order: recorded, the cursor stays
    assert hook.processed_position("c") == start
    assert a.process(first)["data"]["entityId"]  # reads like the payload
    assert hook.processed_position("c") == sequence_of(store, first)
    assert a.process(second).event_id == second  # the prefix now reaches past the third one
    assert hook.processed_position("c") == sequence_of(store, third) > sequence_of(store, skipped)
    (row,) = [r for r in consumers(store) if r["name"] == "c"]
    assert row["lag"] == 1  # the fourth one, on the Carerix page
    with pytest.raises(reservations.EventNotYours, match="already recorded processed") as caught:
        a.process(first)
    assert caught.value.reason == "processed"
    a.process(fourth)
    assert hook.processed_position("c") == sequence_of(store, fourth)
    assert store.event_states("c") == {}  # rows at or below the cursor are gone
    fifth = put(store)
    assert b.reserve() == [fifth] and a.reserve() == [first, second, third, fourth]
    with pytest.raises(reservations.EventNotReserved, match="not reserved by this run"):
        a.process(fifth)  # run-b's, and never in run-a's list
    with pytest.raises(reservations.EventNotReserved, match="not in the event store"):
        a.process("no-such-event")


def test_a_failed_try_records_nothing_and_its_retry_gets_the_event_while_the_run_lives(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = [put(store), put(store)]
    a = Run(hook, "run-a", airflow, lease=0.5)
    assert a.reserve() == sent
    with pytest.raises(RuntimeError, match="boom"), a.claim_event(sent[0]):
        raise RuntimeError("boom")
    assert not store.was_processed("c", sequence_of(store, sent[0]))
    time.sleep(0.7)  # run-a's lease lapses (a retry_delay): only Airflow's word keeps its events now
    later = put(store)
    b = Run(hook, "run-b", airflow)
    assert b.reserve() == [later]
    assert "run-a" in airflow.asked
    assert a.process(sent[0]).event_id == sent[0]  # the retry, same run: its own event
    assert hook.processed_position("c") == sequence_of(store, sent[0])


def test_a_run_that_is_over_gives_its_events_to_the_next_run(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = [put(store), put(store), put(store)]
    # Long enough that a loaded machine still asks run-b's question inside it (0.5 s left little margin).
    a = Run(hook, "run-a", airflow, lease=3.0)
    assert a.reserve() == sent
    a.process(sent[1])
    airflow.over.add("run-a")  # marked failed, or its tasks out of retries without a release
    b = Run(hook, "run-b", airflow)
    assert b.reserve() == []  # its lease has not expired yet: run-a may still be finishing
    time.sleep(3.2)
    c = Run(hook, "run-c", airflow)
    assert c.reserve() == [sent[0], sent[2]]
    with pytest.raises(reservations.EventNotYours, match="reserved for run run-c") as caught:
        a.process(sent[0])  # a late try of the run that is over: run-c has it now
    assert caught.value.reason == "reserved"
    c.process(sent[2])
    c.process(sent[0])
    assert hook.processed_position("c") == sequence_of(store, sent[2])
    # A run's last task gives back at once what its tasks left, whatever Airflow says of the run.
    more = [put(store), put(store)]
    d = Run(hook, "run-d", airflow)
    assert d.reserve() == more
    d.process(more[1])
    assert d.release() == 1
    assert Run(hook, "run-e", airflow).reserve() == [more[0]]


def test_a_cleared_run_reserves_its_own_list_again_and_takes_back_what_it_gave_back(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = [put(store), put(store)]
    a = Run(hook, "run-a", airflow)
    assert a.reserve() == sent
    put(store)
    assert a.reserve() == sent  # a retry of the reserving task: the same ids at the same indexes
    a.process(sent[1])
    assert a.release() == 1  # the first one's task failed for good
    assert a.reserve() == sent  # the run cleared: its list again, the given-back event its own again
    assert Run(hook, "run-b", airflow).reserve() != [sent[0]]
    a.release()
    # A cleared mapped task alone (reserve not run again) takes its given-back event back itself.
    assert a.process(sent[0]).event_id == sent[0]


def test_a_cleared_run_takes_its_events_back_from_a_run_that_is_over_before_it_returns_them(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """What reserve() returns is the run's from then on: an event of its list that a dead run still holds is
    given back and reserved for it inside reserve(), not left for a concurrent new run's give-back to take."""
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow, lease=0.3)
    assert a.reserve() == [sent]
    airflow.over.add("run-a")  # marked failed before its mapped task ran
    time.sleep(0.5)
    b = Run(hook, "run-b", airflow, lease=0.3)
    assert b.reserve() == [sent]  # run-a is over: its event is run-b's
    airflow.over.add("run-b")  # marked failed too, and run-a cleared: running again
    airflow.over.discard("run-a")
    time.sleep(0.5)
    assert a.reserve() == [sent]  # its own list again, the event held by run-b (over) taken back
    assert store.event_states("c")[sequence_of(store, sent)].reserved_by == "run-a"
    assert Run(hook, "run-c", airflow).reserve() == []  # run-a is alive and reserved it
    with pytest.raises(reservations.EventNotYours, match="reserved for run run-a"):
        b.process(sent)  # a late try of run-b
    assert a.process(sent).event_id == sent
    assert hook.processed_position("c") == sequence_of(store, sent)


def test_a_try_killed_mid_event_is_taken_over_by_its_retry_after_its_lease(
    store: EventStore, store_url: str, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """kill -9 inside the block: nothing recorded, no other run gets it, the retry takes it after 3 s."""
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow, lease=3.0)
    assert a.reserve() == [sent]
    script = textwrap.dedent(
        f"""
        import time
        from airflow_provider_carerix.hooks import reservations
        from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook

        hook = CarerixEventStoreHook(store_url={store_url!r})
        with reservations.claim_event(
            hook, "c", {sent!r}, run_id="run-a", dag_id="dag", holder="run-a try 1", lease_seconds=3
        ) as event:
            print("PROCESSING", event.event_id, flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"PROCESSING") and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.split() == [b"PROCESSING", sent.encode()]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not store.was_processed("c", sequence_of(store, sent))
    assert Run(hook, "run-b", airflow).reserve() == []  # run-a is alive: its retry is coming
    started = time.monotonic()
    with a.claim_event(sent, holder="run-a try 2") as event:
        waited = time.monotonic() - started
    assert event.event_id == sent and 0.5 < waited < 30  # waited out the killed try's lease
    assert store.was_processed("c", sequence_of(store, sent))


def test_a_stalled_try_whose_event_was_taken_over_records_nothing(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow)
    assert a.reserve() == [sent]
    with pytest.raises(LeaseLost), a.claim_event(sent, holder="try 1"):
        # This try stalled past its processing lease; Airflow started the next try, which finished first.
        with store._engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE carerix_event_states SET lease_until = :t"), {"t": "2000-01-01 00:00:00"}
            )
        with a.claim_event(sent, holder="try 2"):
            pass
    assert store.was_processed("c", sequence_of(store, sent))
    assert hook.processed_position("c") == sequence_of(store, sent)


def test_a_stalled_try_that_ends_while_its_successor_processes_records_nothing(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow)
    assert a.reserve() == [sent]
    second = a.claim_event(sent, holder="try 2")
    with pytest.raises(LeaseLost), a.claim_event(sent, holder="try 1"):
        with store._engine.begin() as conn:  # try 1 stalled past its processing lease
            conn.execute(
                sa.text("UPDATE carerix_event_states SET lease_until = :t"), {"t": "2000-01-01 00:00:00"}
            )
        second.__enter__()  # try 2 took it over and is still in its block when try 1 comes back
    assert not store.was_processed("c", sequence_of(store, sent))
    second.__exit__(None, None, None)
    assert store.was_processed("c", sequence_of(store, sent))


def test_another_try_in_its_block_makes_the_retry_wait(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow)
    a.reserve()
    with (
        a.claim_event(sent, holder="try 1"),
        pytest.raises(ConsumerBusy, match="being processed by try 1"),
        a.claim_event(sent, holder="try 2", wait_timeout=0.5),
    ):
        pass


def test_claim_and_reservations_on_one_consumer_never_share_an_event(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """The same consumer lease: a claim waits for a reservation, skips reserved events, keeps the cursor
    before them, and records what it took beyond the cursor so nobody takes it again."""
    hook.ensure_consumer("c")
    reserved = [put(store), put(store)]
    a = Run(hook, "run-a", airflow, lease=0.5)
    assert a.reserve() == reserved
    claimed = [put(store), put(store)]
    with hook.claim("c", EMPLOYEES, owner="dag", alive=airflow.alive) as claim:
        assert [e.event_id for e in claim] == claimed
        with pytest.raises(ConsumerBusy):  # a reservation waits for the claim, as a claim would
            Run(hook, "run-b", airflow).reserve(wait_timeout=0.5)
    assert hook.processed_position("c") < sequence_of(store, reserved[0])  # run-a's are not processed
    assert Run(hook, "run-b", airflow).reserve() == []  # the claimed ones are recorded, run-a's reserved
    a.process(reserved[1])
    a.process(reserved[0])
    assert hook.processed_position("c") == sequence_of(store, claimed[1])
    # A run that is over: its events go to the next claim.
    late = [put(store), put(store)]
    c = Run(hook, "run-c", airflow, lease=0.3)
    assert c.reserve() == late
    c.process(late[1])
    airflow.over.add("run-c")
    time.sleep(0.5)
    with hook.claim("c", EMPLOYEES, owner="dag", alive=airflow.alive) as claim:
        assert [e.event_id for e in claim] == [late[0]]
    assert hook.processed_position("c") == sequence_of(store, late[1])
    with hook.claim("c", EMPLOYEES, owner="dag", alive=airflow.alive) as claim:
        assert not claim
    assert store.event_states("c") == {}


def test_a_claim_dag_and_a_per_event_dag_share_one_store(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("batch")
    hook.ensure_consumer("per_event")
    sent = [put(store) for _ in range(6)]
    run = Run(hook, "run-1", airflow, consumer="per_event", dag_id="dag_b")
    with hook.claim("batch", EMPLOYEES, owner="dag_a") as claim:
        batch = [e.event_id for e in claim]
        assert run.reserve() == sent  # another consumer: no waiting for dag_a's claim
    for event_id in reversed(sent):
        run.process(event_id)
    assert batch == sent
    assert (
        hook.processed_position("batch")
        == hook.processed_position("per_event")
        == sequence_of(store, sent[-1])
    )
    with pytest.raises(ConsumerOwned, match="belongs to DAG 'dag_a', not 'dag_b'"):
        Run(hook, "run-2", airflow, consumer="batch", dag_id="dag_b").reserve()
    with (
        pytest.raises(ConsumerOwned, match="belongs to DAG 'dag_b', not 'dag_a'"),
        hook.claim("per_event", EMPLOYEES, owner="dag_a"),
    ):
        pass


def test_concurrent_runs_with_failing_tries_record_every_event_exactly_once(
    store: EventStore, store_url: str, airflow: Airflow
) -> None:
    """Four runs at a time, each mapping its events over three workers, a third of the tries failing, events
    arriving all along, one claim() in the mix: every event recorded once, the cursor at the end."""
    url = with_options(store_url, **PATIENT) if store_url.startswith("postgresql") else store_url
    CarerixEventStoreHook(store_url=url).ensure_consumer("c")
    sent: list[str] = []
    recorded: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    rng = random.Random(31)

    def handle(run: Run, event_id: str) -> None:
        for attempt in range(1, 20):  # Airflow's retries of one mapped task instance
            try:
                with run.claim_event(event_id, holder=f"{run.run_id} {event_id[:6]} try {attempt}") as event:
                    time.sleep(0.002)
                    if rng.random() < 0.33:
                        raise RuntimeError("forced failure")
                with lock:
                    recorded.append(event.event_id)
                return
            except RuntimeError:
                continue
            except reservations.EventNotYours:
                return
        raise AssertionError(f"{event_id} never succeeded")

    def dag_run(index: int) -> None:
        hook = CarerixEventStoreHook(store_url=url)
        try:
            run = Run(hook, f"run-{index}", airflow, lease=5.0)
            ids = run.reserve(limit=8)
            workers = [
                threading.Thread(target=lambda mine=ids[i::3]: [handle(run, e) for e in mine])
                for i in range(3)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            run.release()
        except BaseException as exc:
            errors.append(exc)
        finally:
            hook.close()

    def claimer() -> None:
        hook = CarerixEventStoreHook(store_url=url)
        try:
            for _ in range(3):
                with hook.claim("c", EMPLOYEES, owner="dag", alive=airflow.alive) as claim:
                    taken = [e.event_id for e in claim]
                with lock:
                    recorded.extend(taken)
                time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)
        finally:
            hook.close()

    runs: list[threading.Thread] = []
    for wave in range(6):
        for _ in range(8):
            sent.append(put(store))
        batch = [threading.Thread(target=dag_run, args=(wave * 4 + i,)) for i in range(4)]
        if wave == 3:
            batch.append(threading.Thread(target=claimer))
        for t in batch:
            t.start()
        runs.extend(batch)
        time.sleep(0.05)
    for t in runs:
        t.join(timeout=300)
    assert not errors, errors
    final = Run(CarerixEventStoreHook(store_url=url), "run-final", airflow)
    for event_id in final.reserve():
        final.process(event_id)
        recorded.append(event_id)
    counts = Counter(recorded)
    assert {k: v for k, v in counts.items() if v != 1} == {}, "an event was recorded twice"
    assert sorted(counts) == sorted(sent)
    assert store.get_cursor("c:processed") == sequence_of(store, sent[-1])
    assert store.event_states("c") == {}


_RESERVER = textwrap.dedent(
    """
    import json, sys, time
    from airflow_provider_carerix.hooks import reservations
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.store.filters import EventFilter

    url, name = sys.argv[1], sys.argv[2]
    hook = CarerixEventStoreHook(store_url=url)
    hook.store.last_sequence()  # connected, schema checked
    print("READY", flush=True)
    sys.stdin.readline()  # every process is ready: go
    got = {}
    until = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < until:
        run_id = f"run-{name}-{i}"
        got[run_id] = reservations.reserve(
            hook, "c", EventFilter.build(["cremployee:updated"]), run_id=run_id, dag_id="dag",
            holder=f"{run_id} reserve", lease_seconds=60, alive=lambda run_id, dag_id: True,
        ).event_ids
        i += 1
        time.sleep(0.05)
    hook.close()
    print("RESERVED", json.dumps(got), flush=True)
    """
)


def _line(proc: subprocess.Popen[bytes], prefix: str) -> str:
    """The child's next stdout line starting with ``prefix`` (its log lines skipped)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode()
        assert line, f"the reserving process ended before printing {prefix}"
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()


def test_runs_reserving_at_once_in_separate_processes_never_get_the_same_event(
    store: EventStore, store_url: str, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """Four processes (four workers) reserve for one run after another, all at the same time, while events
    keep arriving: the lists are disjoint, and with a last run's every event is reserved once; the processed
    cursor has not moved (nothing is processed)."""
    url = with_options(store_url, **PATIENT) if store_url.startswith("postgresql") else store_url
    hook.ensure_consumer("c")
    start_position = hook.processed_position("c")
    sent = [put(store) for _ in range(10)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RESERVER, url, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(4)
    ]
    lists: dict[str, list[str]] = {}
    try:
        for proc in procs:
            _line(proc, "READY")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            sent.append(put(store))
            time.sleep(0.02)
        for proc in procs:
            lists.update(json.loads(_line(proc, "RESERVED ")))
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    winners = {run_id.split("-")[1] for run_id, ids in lists.items() if ids}
    assert len(winners) > 1  # events went to runs of several processes: they did contend
    lists["run-last"] = Run(hook, "run-last", airflow).reserve()
    taken = Counter(event_id for ids in lists.values() for event_id in ids)
    assert {k: v for k, v in taken.items() if v != 1} == {}, "an event reserved for two runs"
    assert sorted(taken) == sorted(sent)
    assert hook.processed_position("c") == start_position
    owners = {state.event_id: state.reserved_by for state in store.event_states("c").values()}
    assert owners == {event_id: run_id for run_id, ids in lists.items() for event_id in ids}


def test_a_run_airflow_cannot_tell_about_keeps_its_events_until_it_releases_them(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """No answer from Airflow (None) counts as alive: an expired lease alone never gives events away."""
    hook.ensure_consumer("c")
    sent = [put(store), put(store)]
    a = Run(hook, "run-a", airflow, lease=0.3)
    assert a.reserve() == sent
    time.sleep(0.5)

    def unknown(run_id: str, dag_id: str | None) -> bool | None:
        return None

    b = reservations.reserve(
        hook, "c", EMPLOYEES, run_id="run-b", dag_id="dag", holder="run-b reserve", alive=unknown
    )
    assert b.event_ids == []
    with hook.claim("c", EMPLOYEES, owner="dag", alive=unknown) as claim:
        assert not claim
    assert a.release() == 2
    assert Run(hook, "run-c", airflow).reserve() == sent


def test_a_released_run_keeps_the_event_a_stalled_try_is_still_processing(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    """The run was marked failed and its teardown released it while one try still runs its block: that event
    stays the run's (the try records it), the rest go to the next run; nothing is processed twice."""
    hook.ensure_consumer("c")
    sent = [put(store), put(store)]
    a = Run(hook, "run-a", airflow, lease=30.0)
    assert a.reserve() == sent
    with a.claim_event(sent[0], holder="run-a stalled try") as event:
        airflow.over.add("run-a")
        assert a.release() == 1
        assert Run(hook, "run-b", airflow).reserve() == [sent[1]]
        assert Run(hook, "run-c", airflow).reserve() == []
    assert event.event_id == sent[0]
    assert store.was_processed("c", sequence_of(store, sent[0]))
    assert hook.processed_position("c") == sequence_of(store, sent[0])


def test_old_reservations_are_forgotten(
    store: EventStore, hook: CarerixEventStoreHook, airflow: Airflow
) -> None:
    hook.ensure_consumer("c")
    sent = put(store)
    a = Run(hook, "run-a", airflow)
    a.reserve()
    a.process(sent)
    a.release()
    with store._engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE carerix_reservations SET released_at = :t"), {"t": "2000-01-01 00:00:00"}
        )
    put(store)
    Run(hook, "run-b", airflow).reserve()
    assert store.reserved_ids("c", "run-a") is None and store.reserved_ids("c", "run-b") is not None


# -- in Airflow (dag.test): the example DAG, a run with nothing to map, a retried instance, run states -------


def _mapped(dag_run: Any, task_id: str) -> dict[int, tuple[str, Any]]:
    """map index -> (state, XCom) of one mapped task's instances in a run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            sa.select(TaskInstance).where(
                TaskInstance.dag_id == dag_run.dag_id,
                TaskInstance.run_id == dag_run.run_id,
                TaskInstance.task_id == task_id,
            )
        ).all()
        result = {}
        for ti in tis:
            row = session.scalars(
                XComModel.get_many(
                    run_id=dag_run.run_id,
                    dag_ids=dag_run.dag_id,
                    task_ids=task_id,
                    map_indexes=ti.map_index,
                    key="return_value",
                )
            ).first()
            result[ti.map_index] = (str(ti.state), None if row is None else XComModel.deserialize_value(row))
        return result


def _fresh_consumer(store: EventStore, consumer: str) -> None:
    """The session's store may hold other tests' events: this consumer starts after them."""
    store.advance_cursor(f"{consumer}:origin", store.last_sequence() + 1)
    store.advance_cursor(f"{consumer}:processed", store.last_sequence())


@pytest.mark.timeout(300)
def test_example_dag_maps_one_instance_per_event_and_none_when_nothing_is_left(airflow_db: None) -> None:
    from airflow_provider_carerix.store import resolve_store_url
    from tests.test_sensors import load_dag

    dag = load_dag("carerix_event_per_task")
    consumer = "carerix_cremployee_updated_per_task"
    store = EventStore(resolve_store_url())
    try:
        _fresh_consumer(store, consumer)
        sent = [put(store), put(store, "crjob:created"), put(store), put(store)]
        mine = [sent[0], sent[2], sent[3]]
        first = dag.test()
        assert first.state == "success"
        assert _mapped(first, "handle") == {i: ("success", event_id) for i, event_id in enumerate(mine)}
        assert store.get_cursor(f"{consumer}:processed") == sequence_of(store, sent[3])
        second = dag.test()  # nothing left: zero instances, skipped, and the run succeeds
        assert second.state == "success"
        assert _mapped(second, "handle") == {-1: ("skipped", None)}
        assert _mapped(second, "release") == {-1: ("success", None)}
    finally:
        store.close()


@pytest.mark.timeout(300)
def test_a_failed_instance_is_retried_with_its_own_event_and_airflow_tells_runs_apart(
    airflow_db: None,
) -> None:
    from datetime import timedelta

    from airflow.sdk import DAG, task

    from airflow_provider_carerix.events import CarerixEvents, _alive_in_airflow, _context_ti
    from airflow_provider_carerix.store import resolve_store_url
    from tests.test_claim_exclusive import run_dag

    consumer = "per_task_retry_test"
    store = EventStore(resolve_store_url())
    _fresh_consumer(store, consumer)
    events = CarerixEvents(consumer, event_types=["cremployee:updated"])
    sent = [put(store) for _ in range(3)]
    failed: list[tuple[str, int]] = []
    handled: list[tuple[str, int, int]] = []
    runs: list[str] = []
    answers: list[list[bool | None]] = []

    with DAG("carerix_per_task_retry", schedule=None) as dag:

        @task
        def reserve() -> list[str]:
            ti = _context_ti()
            alive = _alive_in_airflow(ti)
            answers.append([alive(ti.run_id, ti.dag_id), alive("no-such-run", ti.dag_id)])
            answers[-1] += [alive(run_id, ti.dag_id) for run_id in runs]  # earlier runs: over
            runs.append(ti.run_id)
            return events.reserve()

        @task(retries=1, retry_delay=timedelta(seconds=0))
        def handle(event_id: str) -> str:
            ti = _context_ti()
            with events.claim_event(event_id) as event:
                if event_id == sent[1] and not failed:
                    failed.append((event_id, ti.map_index))
                    raise RuntimeError("forced failure")
                handled.append((event.event_id, ti.map_index, ti.try_number))
            return event_id

        @task
        def again(event_id: str) -> None:
            with events.claim_event(event_id):  # recorded already: the task is skipped, this never runs
                raise AssertionError(f"{event_id} handed out twice")

        @task
        def release() -> int:
            return events.release()

        reserved = reserve()
        handle.expand(event_id=reserved) >> again.expand(event_id=reserved) >> release().as_teardown()

    try:
        first = run_dag(dag)
        assert first.state == "success"
        assert [state for state, _ in _mapped(first, "again").values()] == ["skipped"] * 3
        assert failed == [(sent[1], 1)]
        assert sorted(handled, key=lambda h: h[1]) == [
            (sent[0], 0, 1),
            (sent[1], 1, 2),
            (sent[2], 2, 1),
        ]  # try 2: its own
        assert store.get_cursor(f"{consumer}:processed") == sequence_of(store, sent[2])
        run_dag(dag)
        assert answers == [[True, False], [True, False, False]]
    finally:
        store.close()
