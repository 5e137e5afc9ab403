"""Benchmark: the records behind 1,000 events over 100 candidates, batched vs one query per event.

Run: ``.venv/bin/python benchmarks/data.py [--events 1000] [--entities 100] [--latency-ms 0,20]``. Starts the
Carerix emulator on loopback (a connection asking for both scopes), makes ``--events`` claimed events naming
``--entities`` candidates at random (seeded), and fetches their records two ways in one run:

* **one query per event**: ``crEmployee(_id:)`` for each event, through the same hook (token cache, retry
  policy), which is what a task writes when it handles events one by one;
* **batched**: ``claim.entities()`` / ``entity_ids()`` and one ``CarerixHook.get_entities`` call (ids 100 to a
  request, an ``OR`` chain of ``employeeID`` in one page).

Each at every ``--latency-ms`` (an emulated round trip added to every GraphQL request: loopback hides what a
request to api.carerix.io costs). Prints requests and seconds of each and their ratios, checks both got the same
records, then measures the ``OR`` chain length: requests and seconds for 300 candidates at batch sizes 10 to
200, pages capped at 100 as Carerix does (a chain longer than a page needs more pages, so no fewer requests).
Exit 1 if the batched fetch is not complete.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import datetime, timezone
from typing import Any

FIELDS = ["firstName", "lastName", "emailAddress", "toStatusNode.value"]
ONE_QUERY = (
    "query One($id: ID!) { crEmployee(_id: $id) { _id employeeID creationDate modificationDate deleted "
    "firstName lastName emailAddress toStatusNode { value } } }"
)


def _events(count: int, entities: int, seed: int) -> list[Any]:
    from airflow_provider_carerix.hooks.event_store import ClaimedEvent

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    ids = rng.sample(range(1, 151), entities)
    events = []
    for n in range(count):
        entity_id = str(
            ids[n % entities] if n < entities else rng.choice(ids)
        )  # every candidate at least once
        payload = {
            "id": f"e{n}",
            "time": now.isoformat(),
            "type": "cremployee:updated",
            "data": {"entityId": entity_id},
        }
        events.append(ClaimedEvent(f"e{n}", "cremployee:updated", entity_id, n + 1, now, payload))
    return events


def _latency(emulator: Any, ms: float) -> None:
    emulator.clear_faults()
    if ms:
        emulator.inject_fault(status=None, delay=ms / 1000, times=10**9, path_contains="/graphql")


def _fresh_hook() -> Any:
    from airflow_provider_carerix.hooks.carerix import CarerixHook, clear_token_cache

    clear_token_cache()  # each mode is a task of its own: one token request each
    return CarerixHook()


def one_per_event(emulator: Any, events: list[Any]) -> tuple[dict[str, Any], int, float]:
    hook = _fresh_hook()
    emulator.reset_log()
    started = time.perf_counter()
    records: dict[str, Any] = {}
    for event in events:
        record = hook.graphql(ONE_QUERY, {"id": event.entity_id})["crEmployee"]
        if record is not None:
            records[event.entity_id] = record
    return records, emulator.count("POST", "/graphql"), time.perf_counter() - started


def batched(emulator: Any, events: list[Any], batch_size: int = 100) -> tuple[dict[str, Any], int, float]:
    from airflow_provider_carerix.hooks.event_store import Claim

    hook = _fresh_hook()
    emulator.reset_log()
    started = time.perf_counter()
    claim = Claim("benchmark", events)
    records = hook.get_entities("cremployee", claim.entity_ids("cremployee"), FIELDS, batch_size=batch_size)
    return records, emulator.count("POST", "/graphql"), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument(
        "--latency-ms", default="0,20", help="emulated round trips per request, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args(argv)
    if not 1 <= args.entities <= 150 or args.events < args.entities:
        parser.error("--entities must be 1-150 (the data set's candidates) and at most --events")

    import logging

    logging.disable(logging.INFO)  # the hook's per-call log lines would drown the figures
    from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE, CarerixEmulator

    events = _events(args.events, args.entities, args.seed)
    ok = True
    with CarerixEmulator(port=0, data_sizes={"cremployee": 300}) as emulator:
        os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"] = emulator.connection_json(
            scope=f"{MANAGE_SCOPE} {DATA_SCOPE}"
        )
        batched(emulator, events[:1])  # warm-up: imports and the first connection are not what is measured
        print(f"{args.events} events over {args.entities} candidates (cremployee:updated), one run:")
        print(f"{'latency':>9} {'mode':<20} {'requests':>9} {'seconds':>9} {'records':>8}")
        for ms in [float(x) for x in args.latency_ms.split(",") if x.strip()]:
            _latency(emulator, ms)
            base, base_requests, base_seconds = one_per_event(emulator, events)
            got, requests, seconds = batched(emulator, events)
            print(
                f"{ms:>7.0f}ms {'one query per event':<20} {base_requests:>9} {base_seconds:>9.2f} {len(base):>8}"
            )
            print(f"{ms:>7.0f}ms {'batched':<20} {requests:>9} {seconds:>9.2f} {len(got):>8}")
            print(
                f"{'':>9} ratio: {base_requests / requests:.0f}x fewer requests, "
                f"{base_seconds / seconds:.0f}x less time"
            )
            if got != base or len(got) != args.entities:
                print("  the batched fetch differs from the one-by-one fetch", file=sys.stderr)
                ok = False
        _latency(emulator, 0)
        print("\nOR chain length: 300 candidates (1 event each), pages capped at 100:")
        from airflow_provider_carerix.hooks.event_store import ClaimedEvent

        now = datetime.now(timezone.utc)
        many = [
            ClaimedEvent(f"c{n}", "cremployee:updated", str(n), n, now, {"data": {"entityId": str(n)}})
            for n in range(1, 301)
        ]
        print(f"{'batch':>7} {'requests':>9} {'seconds':>9}")
        for size in (10, 25, 50, 100, 200):
            got, requests, seconds = batched(emulator, many, batch_size=size)
            print(f"{size:>7} {requests:>9} {seconds:>9.3f}")
            ok &= len(got) == 300
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
