"""Event triggers against a real store: filters, cursors, Airflow 3.3 shared streams in ack mode, errors."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_carerix.definitions.conditions import ConditionSyntaxError
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.hooks.event_store import cursor_names
from airflow_provider_carerix.store import EventStore, StoredEvent
from airflow_provider_carerix.store.filters import EventFilter
from airflow_provider_carerix.store.schema import cursors
from airflow_provider_carerix.triggers.events import (
    HAS_SHARED_STREAMS,
    CarerixEventSensorTrigger,
    CarerixEventTrigger,
)
from tests.fixtures.postgres import PostgresCluster, _require_postgres

GUIDE_PAYLOAD = {
    "id": "8469bf71-4942-45ea-98b8-393077288785",
    "time": "2024-02-14T14:24:40Z",
    "type": "cremployee:updated",
    "applicationId": "192e953d-1e3a-4513-b14c-a66bca4be005",
    "webhookId": "4c3174c9-deab-426a-8d26-23bbc89e461e",
    "tenant": "cxdev50streamer",
    "data": {
        "entityId": "1",
        "changedFields": ["touser.attributechanges", "touser", "touser.lastname", "modificationdate"],
    },
}


def payload(event_type: str = "cremployee:updated", data: dict[str, Any] | None = None, **extra: Any) -> dict:
    body = dict(GUIDE_PAYLOAD, id=str(uuid.uuid4()), type=event_type)
    body["data"] = dict(GUIDE_PAYLOAD["data"], **(data or {}))
    body.update(extra)
    return body


def put(store: EventStore, body: dict[str, Any]) -> int:
    raw = json.dumps(body)
    sequence, _ = store.insert(raw, EventPayload.model_validate(body))
    return sequence


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(store_url: str) -> EventStore:
    s = EventStore(store_url)
    s.ping()
    yield s
    s.close()


def stored(body: dict[str, Any], sequence: int = 1) -> StoredEvent:
    event = EventPayload.model_validate(body)
    return StoredEvent(
        sequence=sequence,
        event_id=event.id,
        type=event.type.lower(),
        time=event.time,
        tenant=event.tenant,
        application_id=event.application_id,
        webhook_id=event.webhook_id,
        entity_id=None,
        received_at=datetime.now(timezone.utc),
        payload=body,
    )


async def wait_until(
    predicate: Callable[[], bool],
    what: str,
    limit: float = 60.0,
    progress: Callable[[], object] | None = None,
) -> None:
    """Wait for a state, not for a time: fails only when nothing happens for ``limit`` seconds.

    ``limit`` is a "never happens" bound, far above what a loaded machine needs. With ``progress`` (a value
    that changes while the work advances, e.g. a count), the bound applies to the time since it last changed,
    so a long but advancing setup is never cut off on a slow machine.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    seen = progress() if progress is not None else None
    while not predicate():
        if progress is not None and (now := progress()) != seen:
            seen, end = now, loop.time() + limit
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what} (nothing happened for {limit:.0f} s)")
        await asyncio.sleep(0.01)


# -- construction and serialisation -----------------------------------------------------------------------


def test_serialize_round_trip_and_equal_watchers_hash_equal(store_url: str) -> None:
    trigger = CarerixEventTrigger(
        event_types=["CRMatch:updated", "cremployee:updated", "crmatch:updated"],
        condition="  data.statusinfo eq '1234' ",
        webhook_id="wh",
        application_id="app",
        tenant="t",
        consumer="my-consumer",
        poll_interval=1,
        store_url=store_url,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_carerix.triggers.events.CarerixEventTrigger"
    assert kwargs == {
        "event_types": ["cremployee:updated", "crmatch:updated"],
        "condition": "data.statusinfo eq '1234'",
        "webhook_id": "wh",
        "application_id": "app",
        "tenant": "t",
        "consumer": "my-consumer",
        "poll_interval": 1.0,
        "store_conn_id": "carerix_event_store",
        "store_url": store_url,
        "start_from": "deployed",
    }
    json.dumps(kwargs)  # primitives only
    again = CarerixEventTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    other = CarerixEventTrigger(
        event_types=("crmatch:updated", "cremployee:updated"),
        condition="data.statusinfo eq '1234'",
        webhook_id="wh",
        application_id="app",
        tenant="t",
        consumer="my-consumer",
        poll_interval=1.0,
        store_url=store_url,
    )
    assert BaseEventTrigger.hash(*other.serialize()) == BaseEventTrigger.hash(classpath, kwargs)


def test_default_consumer_is_deterministic_and_follows_filters() -> None:
    a = CarerixEventTrigger(event_types=["crjob:created"])
    b = CarerixEventTrigger(event_types="CRJOB:created")
    c = CarerixEventTrigger(event_types=["crjob:created"], tenant="x")
    assert a.consumer == b.consumer != c.consumer
    assert a.consumer.startswith("watcher-")


def test_rejects_secrets_bad_types_and_bad_conditions() -> None:
    with pytest.raises(ValueError, match="password"):
        CarerixEventTrigger(event_types=["*"], store_url="postgresql+psycopg://u:secret@db/carerix")
    with pytest.raises(ValueError, match="invalid event type"):
        CarerixEventTrigger(event_types=["cremployee"])
    with pytest.raises(ConditionSyntaxError):
        CarerixEventTrigger(event_types=["*"], condition="data.x eq")
    with pytest.raises(ValueError, match="password"):
        CarerixEventSensorTrigger(event_types=["*"], store_url="postgresql://u:pw@db/x")


def test_sensor_trigger_serialize_round_trip() -> None:
    trigger = CarerixEventSensorTrigger(
        event_types=["crmatch:updated"],
        condition="data.statusinfo eq '1234'",
        since="2024-02-14T14:24:40Z",
        deadline="2024-02-14T15:24:40+00:00",
    )
    classpath, kwargs = trigger.serialize()
    assert kwargs["since"] == "2024-02-14T14:24:40+00:00"
    assert CarerixEventSensorTrigger(**kwargs).serialize() == (classpath, kwargs)


# -- filter semantics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "event_type", "expected"),
    [
        (("cremployee:updated",), "cremployee:updated", True),
        (("cremployee:updated",), "CREmployee:updated", True),
        (("cremployee:updated",), "cremployee:created", False),
        (("crmatch:*",), "crmatch:created", True),
        (("crmatch:*",), "crmatchx:created", False),
        (("*:created",), "crpublication:created", True),
        (("*:created",), "crpublication:updated", False),
        (("*",), "anything:goes", True),
        (("crjob:created", "crmatch:updated"), "crmatch:updated", True),
    ],
)
def test_type_filter(types: tuple[str, ...], event_type: str, expected: bool) -> None:
    flt = EventFilter(event_types=types)
    assert flt.matches(stored(payload(event_type))) is expected


def test_id_and_condition_filters() -> None:
    body = payload(
        "crmatch:updated", {"statusinfo": "1234"}, tenant="acme", webhookId="w1", applicationId="a1"
    )
    event = stored(body)
    assert EventFilter(event_types=("*",), tenant="acme", webhook_id="w1", application_id="a1").matches(event)
    assert not EventFilter(event_types=("*",), tenant="other").matches(event)
    assert not EventFilter(event_types=("*",), webhook_id="w2").matches(event)
    assert not EventFilter(event_types=("*",), application_id="a2").matches(event)
    assert EventFilter(event_types=("*",), condition="data.statusinfo eq '1234'").matches(event)
    assert not EventFilter(event_types=("*",), condition="data.statusinfo eq '999'").matches(event)


def test_a_condition_that_raises_skips_the_event_and_logs_its_id(caplog: pytest.LogCaptureFixture) -> None:
    """Conditions never raise by contract; if one did (a bug), the watcher skips the event and goes on."""

    class Broken:
        def matches(self, payload: Any) -> bool:
            raise RuntimeError("bug")

    flt = EventFilter(event_types=("*",), condition="data.statusinfo eq '1'")
    object.__setattr__(flt, "_parsed", Broken())  # the parsed condition, as parsed_condition() caches it
    event = stored(payload())
    with caplog.at_level("ERROR", logger="airflow_provider_carerix.store.filters"):
        assert flt.matches(event) is False
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("store.filters")]
    assert messages == [f"Carerix condition failed on event {event.event_id}; skipped"]


# -- standalone run() (Airflow 3.0-3.2 path) ----------------------------------------------------------------


async def cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def recorded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits of the triggers' store calls, recorded and not slept (exact and fast)."""
    from airflow_provider_carerix.triggers import shared_stream

    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(shared_stream.asyncio, "sleep", sleep)
    return waits


async def next_event(gen: AsyncIterator[TriggerEvent], limit: float = 60.0) -> TriggerEvent:
    return await asyncio.wait_for(gen.__anext__(), timeout=limit)


def test_run_starts_at_end_of_log_and_commits_after_resume(store: EventStore, store_url: str) -> None:
    put(store, payload())  # history: a new consumer does not fire for it
    trigger = CarerixEventTrigger(
        event_types=["cremployee:updated"], consumer="c1", store_url=store_url, poll_interval=0.05
    )

    async def scenario() -> None:
        gen = trigger.run()
        first_task = asyncio.ensure_future(next_event(gen))
        await wait_until(lambda: store.get_cursor(cursor_names("c1")[2]) > 0, "consumer creation")
        start = store.get_cursor("c1")
        assert start == store.last_sequence() == 1
        body = payload()
        put(store, payload("crjob:created"))  # not matching
        seq = put(store, body)
        event = await first_task
        # A reference, never the payload (Airflow logs fired events and keeps them as asset-event extra).
        assert event.payload == {
            "status": "event",
            "event_id": body["id"],
            "type": "cremployee:updated",
            "entity_id": body["data"]["entityId"],
            "sequence": seq,
            "received_at": event.payload["received_at"],
        }
        # Yielded but not resumed: the triggerer has not taken it yet, the cursor stays.
        assert store.get_cursor("c1") == start
        second = asyncio.ensure_future(next_event(gen))
        await wait_until(lambda: store.get_cursor("c1") == seq, "cursor commit after resume")
        await cancel(second)
        await gen.aclose()

    asyncio.run(scenario())


def test_run_resumes_from_cursor_after_restart(store: EventStore, store_url: str) -> None:
    kwargs = {"event_types": ["crmatch:*"], "consumer": "c2", "store_url": store_url, "poll_interval": 0.05}

    async def first_life() -> None:
        gen = CarerixEventTrigger(**kwargs).run()
        task = asyncio.ensure_future(next_event(gen))
        await wait_until(lambda: store.get_cursor("c2:origin") > 0, "consumer creation")
        await cancel(task)
        await gen.aclose()

    asyncio.run(first_life())
    # Events arrive while no triggerer runs.
    missed = [put(store, payload("crmatch:created")) for _ in range(3)]

    async def second_life() -> list[int]:
        gen = CarerixEventTrigger(**kwargs).run()
        got = [(await next_event(gen)).payload["sequence"] for _ in range(3)]
        await gen.aclose()
        return got

    assert asyncio.run(second_life()) == missed


def test_unreachable_store_is_waited_for_not_an_event(caplog: pytest.LogCaptureFixture) -> None:
    """A store outage must not become an asset event (and so a DAG run): the watcher logs and retries."""
    trigger = CarerixEventTrigger(
        event_types=["*"], store_url="postgresql+psycopg://nobody@127.0.0.1:1/nothing", poll_interval=0.05
    )

    async def scenario() -> None:
        gen = trigger.run()
        task = asyncio.ensure_future(next_event(gen, 60))
        # The watcher has met the outage (a loaded machine may take a while to get there) ...
        await wait_until(lambda: "unavailable" in caplog.text, "the watcher meeting the outage")
        await asyncio.sleep(3.0)  # ... and then retries for a while: never an event
        assert not task.done(), task.result()
        await cancel(task)
        await gen.aclose()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert "unavailable" in caplog.text


@pytest.mark.postgres
def test_outage_after_the_watcher_started_is_waited_out_and_nothing_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database goes down under a running watcher (a restart, a failover) and comes back.

    The watcher fires nothing for the outage, retries from where it was with backoff, and fires the event
    stored after it, once: the sequence of fired events has no gap and no repeat.
    """
    _require_postgres()
    pg = PostgresCluster(fsync=False).start()
    try:
        url = pg.create_database()
        store = EventStore(url)
        store.ping()
        put(store, payload())  # history: a new consumer starts after it
        trigger = CarerixEventTrigger(
            event_types=["cremployee:updated"], consumer="c-outage", store_url=url, poll_interval=0.05
        )

        async def scenario() -> list[int]:
            gen = trigger.run()
            first_task = asyncio.ensure_future(next_event(gen))
            await wait_until(lambda: store.get_cursor("c-outage:origin") > 0, "consumer creation")
            first = put(store, payload())
            fired = [(await first_task).payload["sequence"]]
            assert fired == [first]
            waiting = asyncio.ensure_future(next_event(gen, 120))
            # The batch's cursor committed first: the outage then meets the poll loop itself (an outage
            # during the commit is test_an_outage_while_committing_cursors_is_waited_out_not_a_failed_watcher).
            await wait_until(lambda: store.get_cursor("c-outage") == first, "the first batch's cursor")
            await asyncio.to_thread(pg.pause)
            await wait_until(lambda: "unavailable" in caplog.text, "the watcher meeting the outage")
            await asyncio.sleep(1.0)  # retrying with backoff meanwhile: never an event
            assert not waiting.done(), waiting.result()
            await asyncio.to_thread(pg.resume)
            after = await asyncio.to_thread(put, store, payload())
            fired.append((await waiting).payload["sequence"])
            later = await asyncio.to_thread(put, store, payload())  # and the watcher goes on polling
            fired.append((await next_event(gen, 60)).payload["sequence"])
            await gen.aclose()
            assert fired == [first, after, later]
            return fired

        with caplog.at_level("INFO"):
            asyncio.run(scenario())
        recovered = [r.getMessage() for r in caplog.records if "available again" in r.getMessage()]
        assert len(recovered) == 1, recovered  # once per outage, from the poll loop that met it
        seconds = re.fullmatch(r"Carerix event store available again after (\d+\.\d) s", recovered[0])
        assert seconds and float(seconds[1]) < 600  # the outage's length, not a clock reading
        store.close()
    finally:
        pg.stop()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"store_url": "mysql://db/carerix"}, "unsupported event store backend"),
        ({"store_conn_id": "no_such_store_connection"}, "store_conn_id 'no_such_store_connection'"),
    ],
)
def test_permanent_store_errors_fail_the_trigger_naming_the_setting(
    kwargs: dict[str, Any], setting: str
) -> None:
    trigger = CarerixEventTrigger(event_types=["*"], poll_interval=0.05, **kwargs)

    async def scenario() -> None:
        gen = trigger.run()
        with pytest.raises(ValueError, match=setting):
            await next_event(gen, 60)

    asyncio.run(scenario())


# -- shared streams in ack mode (Airflow >= 3.3) ------------------------------------------------------------


class MiniTriggerer:
    """The part of Airflow's TriggerRunner that drives shared streams, with persistence under test control."""

    def __init__(self, ack_timeout: float | None = None, clock: Callable[[], float] | None = None) -> None:
        # Airflow's own default unless a test is about the timeout: starting a thousand watchers on a loaded
        # machine can take longer than a short ack timeout, which would then fail the late ones. A test about
        # the timeout passes ``clock`` (the manager's ack-timeout clock) and moves it past the timeout itself.
        from airflow.triggers.shared_stream import DEFAULT_ACK_TIMEOUT, SharedStreamManager

        ack_timeout = DEFAULT_ACK_TIMEOUT if ack_timeout is None else ack_timeout
        if clock is None:
            self.manager = SharedStreamManager(ack_timeout=ack_timeout)
        else:
            self.manager = SharedStreamManager(ack_timeout=ack_timeout, _now=clock)
        self.events: list[tuple[int, dict[str, Any], int | None]] = []
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.keys: dict[int, Any] = {}

    def add(self, trigger_id: int, trigger: CarerixEventTrigger) -> None:
        key = trigger.shared_stream_key()
        self.keys[trigger_id] = key
        self.tasks[trigger_id] = asyncio.ensure_future(self._run(trigger_id, trigger, key))

    async def _run(self, trigger_id: int, trigger: CarerixEventTrigger, key: Any) -> None:
        stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
        try:
            async for event in trigger.filter_shared_stream(stream):
                seq = self.manager.bind_pending_event(trigger_id=trigger_id, key=key)
                self.events.append((trigger_id, event.payload, seq))
        finally:
            await self.manager.unsubscribe(trigger_id, key)

    def persist_all(self) -> None:
        self.manager.confirm_persisted([seq for _, _, seq in self.events if seq is not None])

    def sequences(self, trigger_id: int) -> list[int]:
        return [p["sequence"] for t, p, _ in self.events if t == trigger_id and p["status"] == "event"]

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with pytest.raises(asyncio.CancelledError):
                await task
        await self.manager.stop_all()


needs_shared = pytest.mark.skipif(not HAS_SHARED_STREAMS, reason="Airflow < 3.3 has no shared streams")


@needs_shared
def test_shared_stream_advances_cursor_only_after_persist(store: EventStore, store_url: str) -> None:
    async def scenario() -> None:
        runner = MiniTriggerer()
        employees = CarerixEventTrigger(
            event_types=["cremployee:updated"], consumer="emp", store_url=store_url, poll_interval=0.05
        )
        matches = CarerixEventTrigger(
            event_types=["crmatch:*"],
            condition="data.statusinfo eq '1234'",
            consumer="match",
            store_url=store_url,
            poll_interval=0.05,
        )
        assert employees.shared_stream_key() == matches.shared_stream_key()
        runner.add(1, employees)
        runner.add(2, matches)
        await wait_until(
            lambda: store.get_cursor("match:origin") and store.get_cursor("emp:origin"), "consumers"
        )
        e1 = put(store, payload())
        put(store, payload("crmatch:updated", {"statusinfo": "1"}))
        m1 = put(store, payload("crmatch:created", {"statusinfo": "1234"}))
        e2 = put(store, payload())
        await wait_until(lambda: len(runner.events) == 3, "three trigger events")
        assert runner.sequences(1) == [e1, e2]
        assert runner.sequences(2) == [m1]
        await asyncio.sleep(0.3)  # several poll intervals: nothing persisted, nothing may be committed
        assert store.get_cursor("emp") == 0 and store.get_cursor("match") == 0
        runner.persist_all()
        # A subscriber resolves a batch when it moves to the next one: one more event gets everything moving.
        put(store, payload("crjob:created"))
        # The match watcher commits where it stands in the log (at or after its event), not its event's sequence.
        await wait_until(lambda: store.get_cursor("emp") == e2 and store.get_cursor("match") >= m1, "commit")
        await runner.stop()

    asyncio.run(scenario())


@needs_shared
def test_shared_stream_redelivery_after_restart_is_idempotent(store: EventStore, store_url: str) -> None:
    kwargs = {
        "event_types": ["cremployee:updated"],
        "consumer": "re",
        "store_url": store_url,
        "poll_interval": 0.05,
    }

    async def first_life() -> tuple[list[int], list[int]]:
        runner = MiniTriggerer()
        runner.add(1, CarerixEventTrigger(**kwargs))
        await wait_until(lambda: store.get_cursor("re:origin") > 0, "consumer")
        first = [put(store, payload()) for _ in range(2)]
        await wait_until(lambda: len(runner.sequences(1)) == 2, "first events")
        runner.persist_all()
        second = [put(store, payload()) for _ in range(2)]
        await wait_until(lambda: store.get_cursor("re") == first[-1], "first commit")
        await wait_until(lambda: len(runner.sequences(1)) == 4, "second events")
        # Crash before the second pair is confirmed persisted.
        await runner.stop()
        assert store.get_cursor("re") == first[-1]
        return first, second

    _first, second = asyncio.run(first_life())

    async def second_life() -> list[int]:
        runner = MiniTriggerer()
        runner.add(7, CarerixEventTrigger(**kwargs))
        await wait_until(lambda: len(runner.sequences(7)) == 2, "redelivered events")
        third = put(store, payload())
        await wait_until(lambda: len(runner.sequences(7)) == 3, "new event")
        got = runner.sequences(7)
        assert got[-1] == third
        runner.persist_all()
        put(store, payload("crjob:created"))
        await wait_until(lambda: store.get_cursor("re") == third, "commit after restart")
        await runner.stop()
        return got[:2]

    # Only what was not confirmed comes again; what was confirmed is not fired twice.
    assert asyncio.run(second_life()) == second


@needs_shared
def test_thousand_watchers_share_one_query_per_interval(store: EventStore, store_url: str) -> None:
    from airflow_provider_carerix.triggers import events as mod

    created: list[mod.CarerixStoreProducer] = []
    original = mod.CarerixEventTrigger.create_shared_stream_producer.__func__

    def spy(cls: type, kwargs: dict[str, Any]) -> mod.CarerixStoreProducer:
        producer = original(cls, kwargs)
        created.append(producer)
        return producer

    def started() -> int:
        """Watchers whose consumer exists in the store (its origin marker is written last)."""
        with store.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(cursors.c.name.like("w%:origin"))
            return int(conn.execute(query).scalar_one())

    async def scenario() -> None:
        runner = MiniTriggerer()
        for i in range(1000):
            runner.add(
                i,
                CarerixEventTrigger(
                    event_types=[f"crjob{i}:updated"],
                    consumer=f"w{i}",
                    store_url=store_url,
                    poll_interval=0.2,
                ),
            )
        # Each watcher writes its cursors on start: minutes on a loaded machine, so wait for the count to stop
        # moving, not for a fixed time.
        await wait_until(lambda: started() == 1000, "1000 consumers", progress=started)
        await asyncio.sleep(0.5)
        before = created[0].queries
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(2.0)
        elapsed = loop.time() - start
        queries = created[0].queries - before
        assert len(created) == 1
        # One query per poll interval for all 1000 (plus at most one for scheduling jitter).
        assert queries <= elapsed / 0.2 + 1
        hit = put(store, payload("crjob500:updated"))
        await wait_until(lambda: runner.sequences(500) == [hit], "the one matching watcher fires")
        assert sum(len(runner.sequences(i)) for i in range(1000)) == 1
        await runner.stop()

    pytest.MonkeyPatch().setattr(
        mod.CarerixEventTrigger, "create_shared_stream_producer", classmethod(spy), raising=True
    )
    try:
        asyncio.run(scenario())
    finally:
        mod.CarerixEventTrigger.create_shared_stream_producer = classmethod(original)  # type: ignore[method-assign]


# -- the sensor's trigger -----------------------------------------------------------------------------------


def test_sensor_trigger_finds_first_match_since(store: EventStore, store_url: str) -> None:
    put(store, payload("crmatch:updated", {"statusinfo": "1234"}))  # before `since`: ignored
    since = datetime.now(timezone.utc)
    put(store, payload("crmatch:updated", {"statusinfo": "1"}))
    wanted = payload("crmatch:updated", {"statusinfo": "1234"})
    seq = put(store, wanted)
    trigger = CarerixEventSensorTrigger(
        event_types=["crmatch:updated"],
        condition="data.statusinfo eq '1234'",
        since=since.isoformat(),
        store_url=store_url,
        poll_interval=0.05,
    )

    async def scenario() -> list[TriggerEvent]:
        return [e async for e in trigger.run()]

    events = asyncio.run(scenario())
    assert len(events) == 1
    assert events[0].payload["sequence"] == seq
    assert events[0].payload["event_id"] == wanted["id"]
    assert "event" not in events[0].payload  # the payload stays in the store


def test_sensor_trigger_times_out_at_deadline(store: EventStore, store_url: str) -> None:
    deadline = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    trigger = CarerixEventSensorTrigger(
        event_types=["crmatch:updated"],
        deadline=deadline.isoformat(),
        store_url=store_url,
        poll_interval=0.05,
    )

    async def scenario() -> list[TriggerEvent]:
        return [e async for e in trigger.run()]

    events = asyncio.run(scenario())
    assert [e.payload["status"] for e in events] == ["timeout"]


def test_sensor_trigger_waits_out_an_unreachable_store_until_its_deadline() -> None:
    deadline = datetime.now(timezone.utc) + timedelta(seconds=1)
    trigger = CarerixEventSensorTrigger(
        event_types=["*"],
        deadline=deadline.isoformat(),
        store_url="postgresql+psycopg://nobody@127.0.0.1:1/x",
        poll_interval=0.01,
    )

    async def scenario() -> list[TriggerEvent]:
        return [e async for e in trigger.run()]

    events = asyncio.run(scenario())
    assert [e.payload["status"] for e in events] == ["timeout"]


# -- the two delivery mistakes that must never pass ---------------------------------------------------------


def test_watcher_never_refires_the_event_at_its_cursor(store: EventStore, store_url: str) -> None:
    """A restarted watcher whose stream is redelivered from before its cursor fires only what is after it."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import StoreBatch

    trigger = CarerixEventTrigger(event_types=["cremployee:updated"], consumer="rf", store_url=store_url)
    hook = CarerixEventStoreHook(store_url=store_url)

    async def fired(batch: StoreBatch) -> list[int]:
        return [e.payload["sequence"] async for e in trigger._handle(batch, hook)]

    async def scenario() -> None:
        await trigger._start(hook)
        a, b = put(store, payload()), put(store, payload())
        store.advance_cursor("rf", a)  # `a` was fired and persisted before the restart
        restarted = CarerixEventTrigger(
            event_types=["cremployee:updated"], consumer="rf", store_url=store_url
        )
        await restarted._start(hook)
        assert restarted._position == a
        rows = tuple(store.events_after(a - 1))
        # Redelivered batch that starts before the cursor (the cursor's own event included).
        got = [e.payload["sequence"] async for e in restarted._handle(StoreBatch(a - 1, b, rows), hook)]
        assert got == [b]
        # A head batch beyond the cursor: the watcher catches up from the store, again without `a`.
        again = CarerixEventTrigger(event_types=["cremployee:updated"], consumer="rf", store_url=store_url)
        await again._start(hook)
        c = put(store, payload())
        got = [e.payload["sequence"] async for e in again._handle(StoreBatch(c, c), hook)]
        assert got == [b, c]

    try:
        asyncio.run(scenario())
    finally:
        hook.close()


def test_a_catch_up_read_that_meets_an_outage_is_retried_and_logged_by_watcher(
    store: EventStore, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage in the middle of catching up: the watcher says which one it is and what it was doing (the
    operator's only clue among a thousand watchers), waits, then fires what it missed, nothing skipped."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.store import StoreUnavailable
    from airflow_provider_carerix.triggers.shared_stream import StoreBatch

    trigger = CarerixEventTrigger(event_types=["cremployee:updated"], consumer="cu", store_url=store_url)
    hook = CarerixEventStoreHook(store_url=store_url)
    real = hook.matching_after
    outages = [StoreUnavailable("event store unavailable: OperationalError")]

    def matching_after(*args: Any, **kwargs: Any) -> Any:
        if outages:
            raise outages.pop()
        return real(*args, **kwargs)

    hook.matching_after = matching_after  # type: ignore[method-assign]

    async def scenario() -> tuple[list[int], list[int]]:
        await trigger._start(hook)
        missed = [put(store, payload()), put(store, payload())]
        head = StoreBatch(missed[-1], missed[-1])  # the stream is already past both: a catch-up read
        return [e.payload["sequence"] async for e in trigger._handle(head, hook)], missed

    try:
        with caplog.at_level("WARNING", logger="airflow_provider_carerix.triggers.shared_stream"):
            fired, missed = asyncio.run(scenario())
    finally:
        hook.close()
    assert fired == missed and not outages
    assert [r.getMessage() for r in caplog.records] == [
        "Carerix event store unavailable while catching up Carerix watcher 'cu', retrying: "
        "event store unavailable: OperationalError"
    ]


def test_a_batch_the_watcher_fired_from_always_carries_its_cursor_idle_ones_now_and_then(
    store: EventStore, store_url: str
) -> None:
    """What the producer may commit for a watcher: its position after every batch it fired from (or a
    restart re-fires those events), and for a watcher that fired nothing, its position once a refresh interval
    (so an idle watcher does not write every poll, nor keep the log from being purged forever)."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.events import IDLE_CURSOR_REFRESH
    from airflow_provider_carerix.triggers.shared_stream import StoreBatch

    trigger = CarerixEventTrigger(event_types=["cremployee:updated"], consumer="dc", store_url=store_url)
    hook = CarerixEventStoreHook(store_url=store_url)

    async def handle(
        after: int, upto: int, *sequences: int, done: dict[str, int] | None = None
    ) -> StoreBatch:
        rows = tuple(e for e in store.events_after(after) if e.sequence in sequences)
        batch = StoreBatch(after, upto, rows, dict(done or {}))
        [_ async for _ in trigger._handle(batch, hook)]
        return batch

    async def scenario() -> None:
        start = put(store, payload("crjob:created"))
        await trigger._start(hook)
        assert (await handle(start, start)).done == {"dc": start}  # the first batch records where it starts
        a, b = put(store, payload()), put(store, payload())
        assert (await handle(start, a, a)).done == {"dc": a}
        assert (await handle(a, b, b, done={"other": 1})).done == {"other": 1, "dc": b}  # right after: still
        other = put(store, payload("crjob:created"))
        assert (await handle(b, other, other)).done == {}  # nothing fired, recorded a moment ago
        assert (await handle(other, other)).done == {}
        trigger._last_done_at -= IDLE_CURSOR_REFRESH  # a refresh interval later
        assert (await handle(other, other)).done == {"dc": other}
        assert (await handle(other, other)).done == {}
        # Fired while catching up (the stream is already past the event): the cursor is carried at once too.
        missed = put(store, payload())
        assert (await handle(missed, missed)).done == {"dc": missed}

    try:
        asyncio.run(scenario())
    finally:
        hook.close()


def test_poller_commits_cursors_forward_and_writes_only_those_that_moved(store_url: str) -> None:
    """A watcher's first event in an empty log is sequence 1: that commit must land (or it fires again after a
    restart); a cursor that did not move costs no write (a thousand idle watchers would write every poll)."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    hook = CarerixEventStoreHook(store_url=store_url)
    poller = StorePoller(hook, poll_interval=0.05)

    async def scenario() -> list[tuple[str, int]]:
        real = await hook.astore()
        writes: list[tuple[str, int]] = []

        def advance_cursor(name: str, sequence: int) -> int:
            writes.append((name, sequence))
            return EventStore.advance_cursor(real, name, sequence)

        real.advance_cursor = advance_cursor  # type: ignore[method-assign]  # counts, then writes for real
        await poller.commit({"a": 1, "b": 0})
        await poller.commit({"a": 1, "b": 0})  # nothing moved: no write
        await poller.commit({"a": 0, "b": 2})  # `a` behind what was committed: not written back
        assert (real.get_cursor("a"), real.get_cursor("b")) == (1, 2)
        return writes

    try:
        assert asyncio.run(scenario()) == [("a", 1), ("b", 0), ("b", 2)]
    finally:
        asyncio.run(poller.aclose())


def test_poller_backs_off_doubling_from_its_interval_while_the_store_is_down(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage is retried with backoff (no tight loop against a database that is starting up), logged once
    with the reason, and costs no query count."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers import shared_stream
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    hook = CarerixEventStoreHook(store_url="postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    poller = StorePoller(hook, poll_interval=0.3)
    real_sleep = asyncio.sleep  # the test's own waits are real
    waits = recorded_waits(monkeypatch)
    monkeypatch.setattr(shared_stream, "RETRY_MAX", 2.0)

    async def scenario() -> None:
        stream = poller.open_stream()
        task = asyncio.ensure_future(stream.__anext__())
        while len(waits) < 6 and not task.done():
            await real_sleep(0.01)
        await cancel(task)
        await stream.aclose()

    try:
        with caplog.at_level("WARNING", logger="airflow_provider_carerix.triggers.shared_stream"):
            asyncio.run(scenario())
    finally:
        asyncio.run(poller.aclose())
    assert waits[:6] == [0.3, 0.6, 1.2, 2.0, 2.0, 2.0]
    assert poller.queries == 0
    assert [r.getMessage() for r in caplog.records if r.name.endswith("shared_stream")] == [
        "Cannot LISTEN on the Carerix event store (OperationalError); polling only",
        "Carerix event store unavailable, retrying with backoff: event store unavailable: cannot connect "
        "(OperationalError)",
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("password", [None, "a b:c@d/e%f"])
def test_on_postgresql_a_stored_event_wakes_the_poller_at_once(
    postgres_database: str, password: str | None
) -> None:
    """LISTEN/NOTIFY: with a poll interval of ten minutes, an event stored now is read now (the interval is only
    the safety net behind the notification). Also with a password that a URL must encode (spaces, ``:@/%``):
    the listener's own connection once got it unencoded and fell back to polling."""
    from sqlalchemy.engine import make_url

    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    if password is not None:  # the test cluster trusts local connections: any password is accepted
        postgres_database = (
            make_url(postgres_database).set(password=password).render_as_string(hide_password=False)
        )
    store = EventStore(postgres_database)
    store.ping()
    poller = StorePoller(
        CarerixEventStoreHook(store_url=postgres_database), poll_interval=600, head_interval=None
    )

    async def scenario() -> int:
        stream = poller.open_stream()
        await stream.__anext__()  # the head: the listener is up
        following = asyncio.ensure_future(stream.__anext__())
        await wait_until(lambda: poller.queries == 2, "the first (empty) poll")  # now asleep for 600 s
        sequence = await asyncio.to_thread(put, store, payload())
        batch, _ = await asyncio.wait_for(following, timeout=60)  # far below the 600 s interval
        await stream.aclose()
        assert [e.sequence for e in batch.events] == [sequence]
        return poller.queries

    try:
        assert asyncio.run(scenario()) == 3  # the head, the empty poll, the query the notification asked for
    finally:
        asyncio.run(poller.aclose())
        store.close()


def test_poller_reads_a_backlog_page_after_page_without_waiting(
    store: EventStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog longer than a page (after an outage, a burst) is read page after page at once, not one page
    per poll interval; the stream goes on after it."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers import shared_stream
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    monkeypatch.setattr(shared_stream, "PAGE_SIZE", 2)
    poller = StorePoller(CarerixEventStoreHook(store_url=store_url), poll_interval=600, head_interval=None)

    async def scenario() -> list[list[int]]:
        stream = poller.open_stream()
        await stream.__anext__()  # the head
        backlog = [put(store, payload()) for _ in range(5)]
        poller.wake()
        pages = []
        while sum(len(p) for p in pages) < len(backlog):
            batch, _ = await asyncio.wait_for(stream.__anext__(), timeout=60)  # far below 600 s
            pages.append([e.sequence for e in batch.events])
        assert [s for page in pages for s in page] == backlog
        await stream.aclose()
        return pages

    try:
        assert [len(page) for page in asyncio.run(scenario())] == [2, 2, 1]
    finally:
        asyncio.run(poller.aclose())


def test_poller_heads_say_where_the_log_ends_and_only_when_idle_long_enough(
    store: EventStore, store_url: str
) -> None:
    """A head batch (no events) tells watchers where the log ends, so one behind catches up; it comes at the
    start and then once per ``head_interval`` of idleness, not every poll."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    last = put(store, payload())
    poller = StorePoller(CarerixEventStoreHook(store_url=store_url), poll_interval=0.01, head_interval=600)

    async def scenario() -> None:
        stream = poller.open_stream()
        head, same = await stream.__anext__()
        assert head is same and (head.after, head.upto, head.events) == (last, last, ())
        following = asyncio.ensure_future(stream.__anext__())
        await wait_until(lambda: poller.queries >= 20, "idle polls")
        assert not following.done()  # idle polls, no head: the interval has not passed
        await cancel(following)
        await stream.aclose()

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(poller.aclose())


def test_poller_counts_one_query_per_poll(store: EventStore, store_url: str) -> None:
    """``queries`` is what the shared-stream test and the benchmarks read: one per query, the start included."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    put(store, payload())
    poller = StorePoller(CarerixEventStoreHook(store_url=store_url), poll_interval=0.01, head_interval=0.0)

    async def scenario() -> list[int]:
        stream = poller.open_stream()
        counts = []
        for _ in range(4):
            head, _ = await stream.__anext__()
            assert (head.after, head.upto, head.events) == (1, 1, ())
            counts.append(poller.queries)
        await stream.aclose()
        return counts

    try:
        # The head at the start (1 query), then one head per empty poll (1 more each).
        assert asyncio.run(scenario()) == [1, 2, 3, 4]
    finally:
        asyncio.run(poller.aclose())


def test_an_outage_while_committing_cursors_is_waited_out_not_a_failed_watcher(
    store_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes down right after the watchers fired a batch, as its cursors are written: the write is
    retried until the store is back (giving up would re-fire the batch after a restart; raising ended the
    standalone watcher, seen under load in the PostgreSQL outage test)."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.store import StoreUnavailable
    from airflow_provider_carerix.triggers.shared_stream import StorePoller

    hook = CarerixEventStoreHook(store_url=store_url)
    poller = StorePoller(hook, poll_interval=0.05)
    outages = [StoreUnavailable("event store unavailable: OperationalError")] * 4
    waits = recorded_waits(monkeypatch)

    async def scenario() -> None:
        real = await hook.astore()

        def advance_cursor(name: str, sequence: int) -> int:
            if outages:
                raise outages.pop()
            return EventStore.advance_cursor(real, name, sequence)

        real.advance_cursor = advance_cursor  # type: ignore[method-assign]
        await poller.commit({"a": 3, "b": 5})
        assert (real.get_cursor("a"), real.get_cursor("b")) == (3, 5)
        await poller.commit({"a": 3, "b": 5})  # committed: nothing left to write, so no outage met
        assert not outages

    try:
        with caplog.at_level("INFO", logger="airflow_provider_carerix.triggers.shared_stream"):
            asyncio.run(scenario())
    finally:
        asyncio.run(poller.aclose())
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("shared_stream")]
    assert messages[0] == (
        "Carerix event store unavailable while committing the cursors of 2 Carerix watcher(s), retrying: "
        "event store unavailable: OperationalError"
    )
    assert len(messages) == 2
    recovered = re.fullmatch(r"Carerix event store available again after (\d+\.\d) s", messages[1])
    assert recovered and float(recovered[1]) < 60  # the outage's length, not a clock reading
    assert waits == [0.25, 0.5, 1.0, 2.0]  # backoff: doubling from a quarter of a second


@needs_shared
def test_cursor_never_passes_a_batch_whose_persistence_failed(
    store: EventStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event 1's asset event is never confirmed persisted (Airflow fails it at the ack timeout) while event 2's
    is: the watcher's cursor must stay before event 1, or event 1 would never fire again.

    Airflow's ack-timeout clock is the manager's own injectable one, moved by the test once event 2 is settled:
    with a real 1 s timeout, a loaded machine could time event 1 out before event 2 even fired.
    """
    from airflow_provider_carerix.triggers.shared_stream import CarerixStoreProducer, StoreBatch

    finished: list[StoreBatch] = []  # batches of every advance() that returned or raised
    original_advance = CarerixStoreProducer.advance

    async def recording_advance(self: Any, batch: Any) -> None:
        try:
            await original_advance(self, batch)
        finally:
            finished.extend(item.broker_payload for item in batch)

    monkeypatch.setattr(CarerixStoreProducer, "advance", recording_advance)
    clock = [0.0]

    async def scenario() -> None:
        runner = MiniTriggerer(ack_timeout=1.0, clock=lambda: clock[0])
        trigger = CarerixEventTrigger(
            event_types=["cremployee:updated"], consumer="pf", store_url=store_url, poll_interval=0.05
        )
        runner.add(1, trigger)
        await wait_until(lambda: store.get_cursor("pf:origin") > 0, "consumer")
        start = store.get_cursor("pf")
        lost = put(store, payload())
        await wait_until(lambda: runner.sequences(1) == [lost], "first event fired")
        later = put(store, payload())
        await wait_until(lambda: runner.sequences(1) == [lost, later], "second event fired")
        runner.manager.confirm_persisted([seq for _, p, seq in runner.events if p["sequence"] == later])
        # Moves the watcher past `later`, so `later` is resolved clean before anything times out.
        moved = put(store, payload("crjob:created"))
        await wait_until(lambda: (trigger._position or 0) >= moved, "the watcher past the second event")
        clock[0] += 2.0  # past the ack timeout of `lost` (and of whatever else is still open)
        await wait_until(lambda: runner.tasks[1].done(), "the watcher failed by the ack timeout")
        assert "did not finish processing" in str(runner.tasks[1].exception())
        # Every batch up to `later` went through advance(): a wrong commit would have landed by now.
        await wait_until(lambda: any(b.upto >= later for b in finished), "advance() of the settled batches")
        assert store.get_cursor("pf") < lost, "the cursor moved past a batch Airflow never persisted"
        assert store.get_cursor("pf") == start
        await asyncio.gather(*runner.tasks.values(), return_exceptions=True)
        await runner.manager.stop_all()

    asyncio.run(scenario())


@needs_shared
def test_advance_refuses_to_commit_past_a_failed_item(store: EventStore, store_url: str) -> None:
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.triggers.shared_stream import CarerixStoreProducer, StoreBatch

    producer = CarerixStoreProducer(CarerixEventStoreHook(store_url=store_url), poll_interval=0.05)
    failed = StoreBatch(after=0, upto=5, done={})
    clean = StoreBatch(after=5, upto=9, done={"adv": 9})

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="failed to persist"):
            await producer.advance(
                [
                    AdvanceItem(failed, AdvanceOutcome(acked=0, failed=1)),
                    AdvanceItem(clean, AdvanceOutcome(1, 0)),
                ]
            )
        await producer.aclose()

    asyncio.run(scenario())
    assert store.get_cursor("adv") == 0
