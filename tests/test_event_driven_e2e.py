"""End to end with real Airflow: Carerix delivery -> receiver -> store -> watcher -> asset event -> DAG run.

Then the triggerer is restarted while events keep arriving: every event must produce an asset event (two
only when Airflow persisted it in the stopped triggerer's last round without confirming it) and be processed
exactly once by ``carerix_event_driven``.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.version_compat import HAS_SHARED_STREAMS
from tests.fixtures.airflow_stack import AirflowStack, wait_for
from tests.fixtures.receiver import SECRET_HEADER, start_receiver
from tests.guide import GUIDE_EVENT

pytestmark = pytest.mark.airflow_e2e

DAG_ID = "carerix_event_driven"
TASK_ID = "process_employee_updates"
ASSET = "carerix_cremployee_updated"
CONSUMER = "carerix_cremployee_updated"
SECRET = "e2e-" + uuid.uuid4().hex

GUIDE_PAYLOAD: dict[str, Any] = GUIDE_EVENT


class Carerix:
    """Delivers events to the receiver: through the emulator when it exists, else as Carerix would POST."""

    def __init__(self, receiver_url: str) -> None:
        self.receiver_url = receiver_url
        self.emulator: Any = None
        try:
            from airflow_provider_carerix.emulator import CarerixEmulator
        except ImportError:
            return
        self.emulator = CarerixEmulator().start()
        application_id = self.emulator.add_application("airflow-e2e")
        self.emulator.add_webhook(
            application_id,
            {
                "url": f"{receiver_url}/events",
                "_kind": "Webhook",
                "filters": [{"eventType": "cremployee:updated"}],
                "customHeaders": [{"name": SECRET_HEADER, "value": SECRET}],
            },
        )

    def deliver(self, body: dict[str, Any]) -> dict[str, Any]:
        """Deliver ``body`` (id, type, tenant, data, time); returns the payload exactly as it was POSTed."""
        if self.emulator is not None:
            deliveries = self.emulator.deliver(
                body["type"],
                body["data"],
                tenant=body["tenant"],
                event_id=body["id"],
                event_time=body["time"],
            )
            assert len(deliveries) == 1 and 200 <= deliveries[0].status < 300, deliveries
            return dict(deliveries[0].event)
        response = httpx.post(
            f"{self.receiver_url}/events",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
            timeout=30,
        )
        assert 200 <= response.status_code < 300, response.text
        return body

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()


def processed(stack: AirflowStack) -> list[dict[str, Any]]:
    """Every event the DAG's task processed, over all successful runs (from their XComs)."""
    states = {r["run_id"]: r["state"] for r in stack.dag_runs(DAG_ID)}
    events: list[dict[str, Any]] = []
    for run_id, value in stack.xcoms(DAG_ID, TASK_ID).items():
        if states.get(run_id) == "success":
            events.extend({"event_id": event_id} for event_id in value or [])
    return events


@pytest.mark.timeout(900)  # starts Airflow, restarts the triggerer
def test_event_driven_dag_end_to_end_with_triggerer_restart(airflow_stack: Any, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'carerix_events.db'}"
    store = EventStore(store_url)
    store.ping()
    receiver_url, stop_receiver = start_receiver(store_url, SECRET)
    carerix = Carerix(receiver_url)
    try:
        stack: AirflowStack = airflow_stack(env={"CARERIX_EVENT_STORE_URL": store_url})
        stack.wait_healthy()
        # The watcher creates its consumer at the end of the log when it starts: from then on, nothing is lost.
        wait_for(lambda: store.get_cursor(f"{CONSUMER}:origin") > 0, "the watcher to start", timeout=300)

        # 1. The guide's payload, as Carerix sends it, reaches the DAG's task unchanged.
        sent_payload = carerix.deliver(GUIDE_PAYLOAD)
        first = wait_for(
            lambda: [e for e in processed(stack) if e["event_id"] == GUIDE_PAYLOAD["id"]],
            "a successful run that processed the guide's event",
            timeout=180,
        )
        assert len(first) == 1
        stored = store.event_by_id(GUIDE_PAYLOAD["id"])
        assert (
            stored is not None and stored.payload == sent_payload
        )  # exactly as Carerix (the emulator) sent it
        asset_events = stack.asset_events(ASSET)
        assert [e["extra"]["payload"]["event_id"] for e in asset_events] == [GUIDE_PAYLOAD["id"]]
        # Airflow keeps a reference, not the payload (personal data stays in the store).
        assert set(asset_events[0]["extra"]["payload"]) == {
            "status",
            "event_id",
            "type",
            "entity_id",
            "sequence",
            "received_at",
        }

        # 2. Restart the triggerer while events keep arriving.
        sent: list[str] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(30):
                    body = dict(GUIDE_PAYLOAD, id=str(uuid.uuid4()), data={"entityId": str(100 + i)})
                    carerix.deliver(body)
                    sent.append(body["id"])
                    time.sleep(0.3)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: len(sent) >= 10, "the first events of the stream", timeout=60)
        stack.stop_component("triggerer")
        boundary = max(e["id"] for e in stack.asset_events(ASSET))  # everything the old triggerer persisted
        sent_before_stop = {GUIDE_PAYLOAD["id"], *sent}
        stack.restarts["triggerer"] = 1
        stack.start_component("triggerer")
        producer.join()
        assert not errors, errors
        expected = {GUIDE_PAYLOAD["id"], *sent}

        wait_for(
            lambda: expected <= {e["event_id"] for e in processed(stack)},
            "every event processed",
            timeout=240,
        )
        counts = collections.Counter(e["event_id"] for e in processed(stack))
        assert {k: v for k, v in counts.items() if v != 1} == {}, "processed more than once"
        assert set(counts) == expected

        def fired() -> set[str]:
            return {e["extra"].get("payload", {}).get("event_id") for e in stack.asset_events(ASSET)}

        if HAS_SHARED_STREAMS:
            # Asset events are persisted before the cursor moves; give the last ones a moment to settle.
            wait_for(lambda: expected <= fired(), "an asset event for every event", timeout=120)
        else:
            # Airflow 3.1-3.2: the watcher's cursor moves when the triggerer takes a batch, before Airflow persisted
            # its asset events, so a triggerer stopped in between loses those (claim() still took every event, as
            # checked above). Only events sent before the stop may lack one.
            wait_for(
                lambda: expected - sent_before_stop <= fired(), "an asset event for every later event", 120
            )
            print(f"asset events lost across the triggerer stop: {len(expected - fired())}")
        by_event: dict[str, list[int]] = collections.defaultdict(list)
        for e in stack.asset_events(ASSET):
            by_event[e["extra"].get("payload", {}).get("event_id")].append(e["id"])
        duplicates = {k: ids for k, ids in by_event.items() if len(ids) > 1}
        print(
            f"asset events: {sum(map(len, by_event.values()))} for {len(expected)} events; redelivered: {duplicates}"
        )
        # Airflow 3.3's triggerer exits without a last state sync: asset events persisted in its final round
        # are never confirmed, so the stream redelivers them after the restart (at least once). Nothing else
        # may fire twice: every duplicate is one asset event from before the stop and one from after it.
        for event_id, ids in duplicates.items():
            assert len(ids) == 2 and ids[0] <= boundary < ids[1], (event_id, ids, boundary)
        # ... and the DAG processes every event exactly once regardless (checked above).
        # The delivered cursor catches up once the last asset events are confirmed (one triggerer sync round).
        last = store.last_sequence()
        wait_for(lambda: store.get_cursor(CONSUMER) == last, "the delivered cursor at the end of the log", 60)
        assert store.get_cursor(f"{CONSUMER}:processed") == last
    finally:
        carerix.close()
        stop_receiver()
        store.close()
