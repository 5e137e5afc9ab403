"""Benchmark of the declarative sync: 200 webhooks from nothing, then the daily no-change run.

Run: ``.venv/bin/python benchmarks/sync.py [--webhooks 200] [--slim]``. Starts the Carerix emulator on loopback, points
``AIRFLOW_CONN_CARERIX_DEFAULT`` at it and runs the sync engine (the operator's and the CLI's code path) with a
new hook per run, as two task runs would. It prints the API calls the emulator saw and the wall time, and
checks the promise of the no-change run: no writes, reads <= 1 + one list per application. Exit 1 if broken.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

EVENT_TYPES = [
    "crjob:updated",
    "cremployee:updated",
    "crmatch:updated",
    "crmatch:created",
    "crpublication:created",
    "crplacement:updated",
    "crcompany:created",
    "crcontact:updated",
]


def generate_spec(count: int) -> dict[str, Any]:
    webhooks = []
    for i in range(count):
        webhook: dict[str, Any] = {
            "url": f"https://receiver.example.com/carerix/{i % 20}",
            "filters": [
                {"eventType": EVENT_TYPES[i % len(EVENT_TYPES)], "condition": f"data.tostatusnode eq '{i}'"}
            ],
        }
        if i % 2 == 0:
            webhook["customHeaders"] = [{"name": "X-Carerix-Secret", "value": f"benchmark-secret-{i:04d}"}]
        webhooks.append(webhook)
    return {"application": "benchmark-sync", "webhooks": webhooks}


def measure(emulator: Any, spec: Any, label: str) -> dict[str, Any]:
    from airflow_provider_carerix.hooks.carerix import CarerixHook, clear_token_cache
    from airflow_provider_carerix.provisioning.sync import sync

    clear_token_cache()  # each run is a new task process in Airflow: no token carried over
    emulator.reset_log()
    tokens_before = _token_count(emulator)
    started = time.perf_counter()
    result = sync(spec, CarerixHook(), prune=True, say=lambda _: None)
    seconds = time.perf_counter() - started
    summary = result.summary()
    figures = {
        "label": label,
        "reads": emulator.count(method="GET"),
        "writes": emulator.write_count(),
        "tokens": _token_count(emulator) - tokens_before,
        "seconds": seconds,
        "created": len(summary["created"]),
        "unchanged": len(summary["unchanged"]),
    }
    print(
        f"{label:<16} reads={figures['reads']:<4} writes={figures['writes']:<4} token requests={figures['tokens']:<2}"
        f" wall={seconds:.2f}s  (created {figures['created']}, unchanged {figures['unchanged']})"
    )
    return figures


def _token_count(emulator: Any) -> int:
    tokens = emulator.token_requests
    return tokens if isinstance(tokens, int) else len(tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=200)
    parser.add_argument(
        "--slim",
        action="store_true",
        help="emulate list answers without fields (the hook then fetches each webhook): shows that cost",
    )
    args = parser.parse_args(argv)

    from airflow_provider_carerix.definitions.spec import load_spec
    from airflow_provider_carerix.emulator import CarerixEmulator

    spec = load_spec(generate_spec(args.webhooks))
    with CarerixEmulator(slim=args.slim) as emulator:
        os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"] = emulator.connection_json()
        applications = len(spec.applications)
        print(
            f"sync of {args.webhooks} webhooks in {applications} application(s) against the emulator"
            + (" (slim lists)" if args.slim else "")
        )
        measure(emulator, spec, "first run")
        again = measure(emulator, spec, "no-change run")
        read_budget = 1 + applications
        ok = again["writes"] == 0 and again["reads"] <= read_budget
        verdict = "OK" if ok else "FAILED"
        if args.slim:
            # Lists without fields make the hook fetch every webhook: the budget cannot hold, by design.
            verdict = "n/a with slim lists (one GET per webhook)"
            ok = again["writes"] == 0
        print(
            f"no-change run: writes={again['writes']} (must be 0), reads={again['reads']} "
            f"(must be <= 1 + {applications} = {read_budget}): {verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
