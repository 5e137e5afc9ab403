"""What recovery and signature checks cost, each against a baseline measured in the same run.

(a) Recovery of N events from the emulator's delivery log (GraphQL pages of 100, the receiver's validation,
    ``insert_many`` per page) into an empty SQLite store, against the floor: the same payloads validated and
    inserted by ``insert_many`` in batches of 100 with no network. Then a second recovery run (every event
    already stored: lookups only).
(b) ``Cx-Signature`` verification (RSA-2048, PKCS#1 v1.5, SHA-256) of one delivery body, against parsing and
    validating the same body (``parse_event``), the work the receiver does on every delivery anyway.

    .venv/bin/python benchmarks/recovery.py [--events 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_provider_carerix.emulator import CarerixEmulator


def recovery(events: int) -> None:
    from airflow_provider_carerix.delivery.payload import parse_event
    from airflow_provider_carerix.hooks.carerix import CarerixHook
    from airflow_provider_carerix.recovery import recover_events
    from airflow_provider_carerix.store import EventStore, Provenance

    with CarerixEmulator(port=0, retry_schedule=()) as emulator, tempfile.TemporaryDirectory() as tmp:
        os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"] = emulator.connection_json()
        app_id = emulator.add_application("bench")
        emulator.add_webhook(app_id, {"url": "http://127.0.0.1:9/down", "filters": [{"eventType": "*"}]})
        emulator.delivery_timeout = 1
        for n in range(events):
            emulator.deliver("cremployee:updated", {"entityId": str(n), "changedFields": ["lastName"]})
        payloads = [job["payload"] for job in emulator.jobs()]

        floor_store = EventStore(f"sqlite:///{tmp}/floor.db")
        floor_store.ping()
        started = time.perf_counter()
        for i in range(0, len(payloads), 100):
            batch = [p.encode() for p in payloads[i : i + 100]]
            floor_store.insert_many([(b, parse_event(b), Provenance(recovered=True)) for b in batch])
        floor = time.perf_counter() - started

        store = EventStore(f"sqlite:///{tmp}/recovered.db")
        store.ping()
        hook = CarerixHook()
        hook.get_access_token()
        started = time.perf_counter()
        first = recover_events(hook.iter_delivery_jobs(page_size=100), store, say=lambda _: None)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = recover_events(hook.iter_delivery_jobs(page_size=100), store, say=lambda _: None)
        second_s = time.perf_counter() - started
        assert first.stored == events and second.stored == 0 and second.duplicates == events
        print(f"recovery of {events} events (SQLite, pages of 100)")
        print(f"  floor: validate + insert_many, no network   {floor:6.2f} s  {events / floor:7.0f} events/s")
        print(
            f"  recover (GraphQL paging + same work)       {first_s:6.2f} s  {events / first_s:7.0f} events/s"
            f"  ratio to floor {first_s / floor:.2f}"
        )
        print(
            f"  second run (all already stored)            {second_s:6.2f} s  {events / second_s:7.0f} jobs/s"
        )
        floor_store.close()
        store.close()


def signatures(repeat: int = 2000) -> None:
    from airflow_provider_carerix.delivery.payload import parse_event
    from airflow_provider_carerix.delivery.signing import load_public_key, verify_signature

    emulator = CarerixEmulator()
    app_id = emulator.add_application("bench")
    body = json.dumps(
        {
            "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "time": "2026-11-29T10:00:00Z",
            "type": "cremployee:updated",
            "applicationId": app_id,
            "webhookId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "tenant": "demo",
            "data": {"entityId": "42", "changedFields": ["lastName", "emailAddress"]},
        }
    ).encode()
    key = load_public_key(emulator.public_key(app_id))
    signature = emulator.sign(app_id, body)

    def per_call(fn: object) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(repeat):
                fn()  # type: ignore[operator]
            samples.append((time.perf_counter() - started) / repeat)
        return statistics.median(samples)

    parse = per_call(lambda: parse_event(body))
    verify = per_call(lambda: verify_signature([key], signature, body))
    print(f"Cx-Signature check of a {len(body)}-byte delivery (median of 5 x {repeat})")
    print(f"  parse_event (baseline, done anyway)  {parse * 1e6:7.1f} us")
    print(
        f"  verify_signature (RSA-2048)          {verify * 1e6:7.1f} us  ratio to parse {verify / parse:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="carerix-bench-"))
    recovery(args.events)
    signatures()


if __name__ == "__main__":
    main()
