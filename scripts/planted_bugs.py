"""Plant known bugs one at a time in a copy of the project and check that the named tests catch each one.

mutmut (``make mutation``) cannot reach everything that carries a guarantee: it skips decorated functions
(the event store's public methods all retry on a dropped connection), module-level constants and code under
an ``if`` at module level (the Airflow 3.3 producer). These bugs are the ones that matter there, plus the
ones an outside audit planted. Each is a one-line change to the real source, and each must make its tests
fail. Run from the project root: ``make planted-bugs`` (or ``.venv/bin/python scripts/planted_bugs.py``,
``-k store`` for the plants whose name contains a word (repeatable), ``--list`` to see them).

The copy is a temporary directory (the work tree is never touched), imported first because pytest runs
from it. A plant whose source line is no longer found fails loudly: the code moved, update the plant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "airflow_provider_carerix"


@dataclass(frozen=True)
class Plant:
    name: str
    path: str  # under the package
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files; "-k EXPR" selects within the files


LEASE_TEST = "tests/test_store.py::test_a_lease_has_one_holder_until_it_expires_and_only_its_holder_commits"
# One task instance per event (issue 31): the store and hook tests, without the two dag.test() ones.
PER_EVENT = ("tests/test_event_per_task.py", "-k", "not example_dag and not failed_instance_is_retried")

PLANTS = (
    Plant(
        "conditions: gt evaluated as >=",
        "definitions/conditions.py",
        'if op == "gt":\n            return bool(a > b)',
        'if op == "gt":\n            return bool(a >= b)',
        ("tests/test_conditions.py", "-k", "ordering_operators_at_their_boundary"),
    ),
    Plant(
        "conditions: le evaluated as <",
        "definitions/conditions.py",
        'if op == "le":\n            return bool(a <= b)',
        'if op == "le":\n            return bool(a < b)',
        ("tests/test_conditions.py", "-k", "ordering_operators_at_their_boundary"),
    ),
    Plant(
        "hook: TOKEN_REFRESH_MARGIN = 0",
        "hooks/carerix.py",
        "TOKEN_REFRESH_MARGIN = 30.0",
        "TOKEN_REFRESH_MARGIN = 0.0",
        ("tests/test_hook.py::test_token_is_renewed_a_margin_before_it_expires",),
    ),
    Plant(
        "hook: refresh margin without the tenth-of-lifetime cap",
        "hooks/carerix.py",
        "margin = min(TOKEN_REFRESH_MARGIN, expires_in / 10)",
        "margin = TOKEN_REFRESH_MARGIN",
        ("tests/test_hook.py::test_token_is_renewed_a_margin_before_it_expires",),
    ),
    Plant(
        "hook: token kept until <= its refresh point",
        "hooks/carerix.py",
        "if cached is not None and time.monotonic() < cached.refresh_at:\n                return",
        "if cached is not None and time.monotonic() <= cached.refresh_at:\n                return",
        ("tests/test_hook.py::test_token_is_renewed_a_margin_before_it_expires",),
    ),
    Plant(
        "hook: backoff 2 ** attempt instead of 2 ** (attempt - 1)",
        "hooks/carerix.py",
        "2 ** (retry_state.attempt_number - 1)",
        "2 ** retry_state.attempt_number",
        (
            "tests/test_hook.py::test_backoff_doubles_from_the_first_wait_with_at_most_a_tenth_of_jitter_and_is_capped",
        ),
    ),
    Plant(
        "hook: a negative Retry-After not clamped to 0",
        "hooks/carerix.py",
        "return max(0.0, float(value))",
        "return float(value)",
        ("tests/test_hook.py", "-k", "retry_after_as_seconds_or_http_date"),
    ),
    Plant(
        "hook: > 400 instead of >= 400 for an API error",
        "hooks/carerix.py",
        "if response.status_code >= 400:",
        "if response.status_code > 400:",
        ("tests/test_hook.py::test_a_400_is_an_api_error_at_once",),
    ),
    Plant(
        "hook: the call repeated after a 401 sent as not idempotent",
        "hooks/carerix.py",
        "self._invalidate_token(sent)\n            response = self._send(method, url, idempotent=idempotent, **kwargs)",
        "self._invalidate_token(sent)\n            response = self._send(method, url, idempotent=False, **kwargs)",
        ("tests/test_hook.py::test_the_call_repeated_after_a_401_keeps_the_retry_policy",),
    ),
    Plant(
        "receiver: declared body size > turned into >=",
        "receiver/validation.py",
        "if int(value) > limit:",
        "if int(value) >= limit:",
        ("tests/test_receiver_limits.py",),
    ),
    Plant(
        "receiver: streamed body size > turned into >=",
        "receiver/validation.py",
        "if size > limit:",
        "if size >= limit:",
        ("tests/test_receiver_limits.py",),
    ),
    Plant(
        "receiver: signature padding put back as +len % 4",
        "delivery/signing.py",
        'value + "=" * (-len(value) % 4)',
        'value + "=" * (len(value) % 4)',
        (
            "tests/test_receiver.py::test_receiver_auth_reads_either_base64_alphabet_with_or_without_padding_and_nothing_else",
        ),
    ),
    Plant(
        "receiver: the URL-safe alphabet only when both - and _ appear",
        "delivery/signing.py",
        'if "-" in value or "_" in value',
        'if "-" in value and "_" in value',
        (
            "tests/test_receiver.py::test_receiver_auth_reads_either_base64_alphabet_with_or_without_padding_and_nothing_else",
        ),
    ),
    Plant(
        "receiver: signatures decoded without validate=True (stray characters ignored)",
        "delivery/signing.py",
        "validate=True,",
        "validate=False,",
        (
            "tests/test_receiver.py::test_receiver_auth_reads_either_base64_alphabet_with_or_without_padding_and_nothing_else",
        ),
    ),
    Plant(
        "trigger: a watcher re-firing the event at its own cursor after a restart",
        "triggers/events.py",
        "if stored.sequence <= self._position:",
        "if stored.sequence < self._position:",
        ("tests/test_triggers.py::test_watcher_never_refires_the_event_at_its_cursor",),
    ),
    Plant(
        "trigger: a batch the watcher fired from recorded only once per refresh interval",
        "triggers/events.py",
        "if fired or now - self._last_done_at >= IDLE_CURSOR_REFRESH:",
        "if fired and now - self._last_done_at >= IDLE_CURSOR_REFRESH:",
        (
            "tests/test_triggers.py::test_a_batch_the_watcher_fired_from_always_carries_its_cursor_idle_ones_now_and_then",
        ),
    ),
    Plant(
        "poller: commit filter >= (a cursor that did not move written again)",
        "triggers/shared_stream.py",
        "if v > self._committed.get(c, -1)}",
        "if v >= self._committed.get(c, -1)}",
        ("tests/test_triggers.py::test_poller_commits_cursors_forward_and_writes_only_those_that_moved",),
    ),
    Plant(
        "poller: the first outage delay None (a running watcher crashes at its first outage)",
        "triggers/shared_stream.py",
        "delay = min(self.poll_interval, 1.0)\n        last_yield = loop.time()",
        "delay = None\n        last_yield = loop.time()",
        (
            "tests/test_triggers.py::test_outage_after_the_watcher_started_is_waited_out_and_nothing_is_skipped",
        ),
    ),
    Plant(
        "poller: an outage while committing cursors ends the watcher (no retry)",
        "triggers/shared_stream.py",
        'await retry_while_unavailable(f"committing the cursors of {len(todo)} Carerix watcher(s)", write)',
        "await asyncio.to_thread(write)",
        (
            "tests/test_triggers.py::test_an_outage_while_committing_cursors_is_waited_out_not_a_failed_watcher",
        ),
    ),
    Plant(
        "producer: cursors committed past a batch whose persistence failed",
        "triggers/shared_stream.py",
        "if outcome.failed:\n",
        "if False:\n",
        ("tests/test_triggers.py", "-k", "persistence_failed or refuses_to_commit_past_a_failed_item"),
    ),
    Plant(
        "event filter: a condition that raises taken as a match",
        "store/filters.py",
        'log.exception("Carerix condition failed on event %s; skipped", stored.event_id)\n            return False',
        'log.exception("Carerix condition failed on event %s; skipped", stored.event_id)\n            return True',
        ("tests/test_triggers.py::test_a_condition_that_raises_skips_the_event_and_logs_its_id",),
    ),
    # The event store's public methods: decorated (retry on a dropped connection), so mutmut skips them.
    Plant(
        "store: a consumer's unexpired lease taken by another holder",
        "store/leases.py",
        "row.lease_until is not None and row.lease_until > now:",
        "row.lease_until is not None and row.lease_until < now:",
        (LEASE_TEST,),
    ),
    Plant(
        "store: a lost lease still commits its cursor on release",
        "store/leases.py",
        "if row is None or row.holder != holder:\n                return False",
        "if row is None:\n                return False",
        (LEASE_TEST, "tests/test_events.py::test_lost_lease_records_nothing"),
    ),
    Plant(
        "store: another holder renews a lease",
        "store/leases.py",
        ".where(consumers.c.name == name, consumers.c.holder == holder)",
        ".where(consumers.c.name == name)",
        (LEASE_TEST,),
    ),
    Plant(
        "store: another DAG takes a DAG's consumer",
        "store/leases.py",
        "if owner is not None and row.owner is not None and row.owner != owner:",
        "if False:",
        (LEASE_TEST,),
    ),
    Plant(
        "reservations: a cleared run reuses its list before the give-back of runs that are over",
        "hooks/reservations.py",
        """        store.give_back_dead(consumer, alive)
        if store.reserved_ids(consumer, run_id) is not None:""",
        """        if store.reserved_ids(consumer, run_id) is None:
            store.give_back_dead(consumer, alive)
        if store.reserved_ids(consumer, run_id) is not None:""",
        PER_EVENT,
    ),
    Plant(
        "reservations: reserve() takes events another run holds",
        "hooks/reservations.py",
        "(state is None or (state.reserved_by is None and not state.processed))",
        "(state is None or not state.processed)",
        PER_EVENT,
    ),
    Plant(
        "reservations: processed cursor moved onto the first unprocessed event",
        "store/reservations.py",
        "else min(int(upto), int(first_open) - 1)",
        "else min(int(upto), int(first_open))",
        PER_EVENT,
    ),
    Plant(
        "reservations: no answer from Airflow counts as a run that is over",
        "store/reservations.py",
        "or (alive is not None and alive(run.run_id, run.dag_id) is False)",
        "or (alive is None or alive(run.run_id, run.dag_id) is False)",
        PER_EVENT,
    ),
    Plant(
        "reservations: a run's events given back while its lease runs",
        "store/reservations.py",
        "            if run.expired\n            and (",
        "            if (",
        PER_EVENT,
    ),
    Plant(
        "reservations: held_runs reads a live lease as expired",
        "store/reservations.py",
        "or r.lease_until <= now",
        "or r.lease_until > now",
        PER_EVENT,
    ),
    Plant(
        "reservations: a try starts an event reserved for another run",
        "store/reservations.py",
        """            if row.reserved_by != run_id:
                return StartOutcome("elsewhere", row.reserved_by)""",
        """            if row.reserved_by is None:
                return StartOutcome("elsewhere", row.reserved_by)""",
        PER_EVENT,
    ),
    Plant(
        "reservations: a try starts an event another try holds a live lease on",
        "store/reservations.py",
        "if row.holder not in (None, holder) and row.lease_until is not None and row.lease_until > now:",
        "if row.holder not in (None, holder) and row.lease_until is not None and row.lease_until < now:",
        PER_EVENT,
    ),
    Plant(
        "reservations: a try that lost its event records it anyway",
        "store/reservations.py",
        "if row.holder != holder or row.reserved_by != run_id:",
        "if row.reserved_by != run_id:",
        PER_EVENT,
    ),
    Plant(
        "reservations: release gives back the event a stalled try still processes",
        "store/reservations.py",
        ".where(mine, free)",
        ".where(mine)",
        PER_EVENT,
    ),
    Plant(
        "reservations: claim() hands out events a run reserved",
        "hooks/event_store.py",
        "if state.processed or state.reserved_by is not None",
        "if state.processed",
        PER_EVENT,
    ),
    Plant(
        "store: events_after includes the cursor's own event (> into >=)",
        "store/core.py",
        "stmt = sa.select(events).where(events.c.sequence > int(sequence))",
        "stmt = sa.select(events).where(events.c.sequence >= int(sequence))",
        ("tests/test_store.py", "tests/test_triggers.py"),
    ),
    Plant(
        "store: purge deletes the newest event too",
        "store/retention.py",
        "events.c.time < cutoff, events.c.sequence < newest)",
        "events.c.time < cutoff, events.c.sequence <= newest)",
        ("tests/test_store.py::test_purge_keeps_newest",),
    ),
    Plant(
        "store: purge by receipt time only (an event timed after the horizon purged)",
        "store/retention.py",
        ".where(events.c.received_at < cutoff, events.c.time < cutoff, events.c.sequence < newest)",
        ".where(events.c.received_at < cutoff, events.c.sequence < newest)",
        ("tests/test_store.py", "tests/test_receiver.py", "-k", "purge"),
    ),
    Plant(
        "store: a cursor moved backwards",
        "store/core.py",
        "(stmt.excluded.sequence > cursors.c.sequence, stmt.excluded.sequence),",
        "(stmt.excluded.sequence < cursors.c.sequence, stmt.excluded.sequence),",
        ("tests/test_store.py::test_cursors_never_move_backwards",),
    ),
    Plant(
        "store: a unique-key race answered as the event's fault (4xx) instead of busy (503)",
        "store/base.py",
        'return code in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")',
        "return False",
        ("tests/test_store.py::test_a_unique_key_race_is_retryable_other_refusals_are_not",),
    ),
)


# The records behind events: batching, paging, deleted records, the data scope, retries, GraphQL errors, the
# events grouped per record, the coverage sweep, the emulator's faithfulness, the example DAG's upsert.
DATA_PLANTS = (
    Plant(
        "data: ids batched 50 to a request instead of 100",
        "definitions/entities.py",
        "DEFAULT_BATCH_SIZE = 100",
        "DEFAULT_BATCH_SIZE = 50",
        ("tests/test_hook_data.py", "-k", "a_hundred_to_a_request"),
    ),
    Plant(
        "data: a batch's page asked at the default size (20), not the batch's",
        "hooks/carerix_data.py",
        '"size": len(batch),',
        '"size": 20,',
        ("tests/test_hook_data.py", "-k", "a_hundred_to_a_request"),
    ),
    Plant(
        "data: the first page taken for the last",
        "hooks/carerix_data.py",
        'not page["items"]\n        or page.get("last") is True',
        'True\n        or page.get("last") is True',
        ("tests/test_hook_data.py", "-k", "page_smaller_than_the_batch or never_skips"),
    ),
    Plant(
        "data: ids chained with AND instead of OR",
        "definitions/entities.py",
        'return " OR ".join(f"{ent.key} = {n}" for n in numbers)',
        'return " AND ".join(f"{ent.key} = {n}" for n in numbers)',
        ("tests/test_hook_data.py", "-k", "a_hundred_to_a_request"),
    ),
    Plant(
        "data: an id that is not a number reaches the qualifier",
        "definitions/entities.py",
        "if not text.isascii() or not text.isdigit():",
        "if not text:",
        ("tests/test_hook_data.py", "-k", "fails_before_any_request"),
    ),
    Plant(
        "data: deleted records never asked for (norestrict always false)",
        "hooks/carerix_data.py",
        '"norestrict": deleted,\n            }\n            page = _page_items(requests.ask(query, variables, batch)',
        '"norestrict": False,\n            }\n            page = _page_items(requests.ask(query, variables, batch)',
        ("tests/test_hook_data.py", "-k", "deleted_records_only_when_asked"),
    ),
    Plant(
        "data: a 403 left as a plain auth error (no scope named)",
        "hooks/carerix_data.py",
        "if exc.status_code != 403:",
        "if exc.status_code != 999:",
        ("tests/test_hook_data.py", "-k", "names_the_scope_to_add"),
    ),
    Plant(
        "data: 429 not retried",
        "hooks/carerix.py",
        "if response.status_code == 429 or response.status_code >= 500:",
        "if response.status_code >= 500:",
        ("tests/test_hook_data.py", "-k", "retried_with_the_hooks_policy"),
    ),
    Plant(
        "data: GraphQL errors beside data ignored by graphql()",
        "hooks/carerix.py",
        "if errors or not isinstance(data, dict):",
        "if not isinstance(data, dict):",
        ("tests/test_hook_data.py", "-k", "partial_data_is_an_error"),
    ),
    Plant(
        "data: a null item without an error taken as complete",
        "hooks/carerix_data.py",
        'holes = [n for n, item in enumerate(page["items"]) if not isinstance(item, dict)]',
        "holes: list[int] = []",
        ("tests/test_hook_data.py", "-k", "null_item_without_an_error"),
    ),
    Plant(
        "data: records logged",
        "hooks/carerix_data.py",
        "        len(found),\n        len(wanted),",
        "        found,\n        len(wanted),",
        ("tests/test_hook_data.py", "-k", "never_reach_the_log"),
    ),
    Plant(
        "data: the repeated DST hour asked as written (an hour late)",
        "definitions/entities.py",
        "    if _repeated_hour(local):",
        "    if False:",
        ("tests/test_data_schema.py", "-k", "repeated_hour"),
    ),
    Plant(
        "changes: an event without changedFields ignored in the union",
        "definitions/changes.py",
        "            if fields is None:\n                return None",
        "            if fields is None:\n                continue",
        ("tests/test_data_events.py", "-k", "unknown_changed_fields"),
    ),
    Plant(
        "changes: events grouped in the order given, not by sequence",
        "definitions/changes.py",
        "for event in sorted(events, key=lambda e: e.sequence):",
        "for event in events:",
        ("tests/test_data_events.py", "-k", "burst_of_50"),
    ),
    Plant(
        "example DAG: INSERT instead of an upsert on the id",
        "../example_dags/carerix_candidates_to_sql.py",
        'UPSERT = "REPLACE INTO candidates',
        'UPSERT = "INSERT INTO candidates',
        ("tests/test_data_events.py", "-k", "example_dag"),
    ),
    Plant(
        "sweep: no tolerance for an event timed just before the change",
        "coverage.py",
        "if seen is not None and seen >= modified - tolerance:",
        "if seen is not None and seen >= modified:",
        ("tests/test_coverage_sweep.py", "-k", "become_events_once"),
    ),
    Plant(
        "sweep: ids not deterministic (a rerun stores again)",
        "coverage.py",
        "{entity_id}:{modified.strftime('%Y%m%dT%H%M%SZ')}\"",
        '{entity_id}:{id(modified)}"',
        ("tests/test_coverage_sweep.py", "-k", "become_events_once"),
    ),
    Plant(
        "sweep: changes whose webhook may be in flight swept",
        "coverage.py",
        "if until is not None and modified > until:",
        "if until is not None and modified > until + timedelta(days=1):",
        ("tests/test_coverage_sweep.py", "-k", "become_events_once"),
    ),
    Plant(
        "sweep: changes before the purge horizon not counted",
        "coverage.py",
        "if horizon is not None and modified < horizon:",
        "if horizon is not None and modified > horizon:",
        ("tests/test_coverage_sweep.py", "-k", "purge_horizon_are_swept"),
    ),
    Plant(
        "sweep: the operator's purge-horizon warning on the wrong side",
        "operators/sweep.py",
        "if horizon is not None and start < horizon:",
        "if horizon is not None and start > horizon:",
        ("tests/test_coverage_sweep.py", "-k", "warns_before_the_horizon"),
    ),
    Plant(
        "emulator: pages not capped",
        "emulator/records.py",
        "size = min(size, self.max_page_size)",
        "size = size",
        ("tests/test_emulator_records.py", "-k", "capped_silently"),
    ),
    Plant(
        "emulator: deleted records served without norestrict",
        "emulator/records.py",
        'and (deleted or not r.get("deleted"))',
        "and True",
        ("tests/test_emulator_records.py", "-k", "only_with_norestrict"),
    ),
    Plant(
        "emulator: records served on the Webhooks scope",
        "emulator/server.py",
        'MANAGE_SCOPE if f == "webhookDeliveryJobPage" else DATA_SCOPE',
        "MANAGE_SCOPE",
        ("tests/test_emulator_records.py", "-k", "scopes_each_root_field_needs"),
    ),
    Plant(
        "emulator: an unknown qualifier key accepted",
        "emulator/records.py",
        'raise QualifierError(f"unknown key path {path!r}: {current} has no {segment!r}")',
        "return",
        ("tests/test_emulator_records.py", "-k", "outside_the_language"),
    ),
)
# Knowing when the flow stops (issue 30): the freshness and webhook-health judgements, and the metric names.
MONITORING_PLANTS = (
    Plant(
        "monitoring: a failure rate at the threshold counted as over it",
        "provisioning/health.py",
        "rate > max_failure_rate:",
        "rate >= max_failure_rate:",
        ("tests/test_monitoring.py", "-k", "passes_once_fixed"),
    ),
    Plant(
        "monitoring: min_attempts ignored (one failed attempt judged by rate)",
        "provisioning/health.py",
        "health.attempts >= min_attempts and",
        "health.attempts >= 0 and",
        ("tests/test_monitoring.py", "-k", "passes_once_fixed"),
    ),
    Plant(
        "monitoring: a disabled webhook not a problem",
        "provisioning/health.py",
        'if health.status in ("disabled", "error"):',
        'if health.status in ("error",):',
        ("tests/test_monitoring.py", "-k", "names_a_failing_and_a_disabled"),
    ),
    Plant(
        "monitoring: a consumer's backlog never too old",
        "operators/monitoring.py",
        "if oldest is not None and age > max_age:",
        "if oldest is not None and age > max_age * 1000:",
        ("tests/test_monitoring.py", "-k", "consumer_behind"),
    ),
    Plant(
        "monitoring: silence never too long",
        "operators/monitoring.py",
        "if silent > max_silence:",
        "if silent > max_silence * 1000:",
        ("tests/test_monitoring.py", "-k", "silence_fails"),
    ),
    Plant(
        "metrics: plain StatsD drops the tag values instead of putting them in the name",
        "metrics.py",
        'return metric.name + "." + ".".join(_name_part(values[key]) for key in metric.tags), None',
        "return metric.name, None",
        ("tests/test_metrics.py", "-k", "receiver_process_sends"),
    ),
)
PLANTS = (*PLANTS, *DATA_PLANTS, *MONITORING_PLANTS)


def _copy_project(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _pytest(copy: Path, tests: tuple[str, ...], log: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *tests,
    ]
    with log.open("w") as out:
        return subprocess.run(command, cwd=copy, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-k",
        dest="words",
        action="append",
        help="only plants whose name contains this (case-insensitive); repeat for several",
    )
    parser.add_argument("--list", action="store_true", help="list the plants and stop")
    args = parser.parse_args(argv)
    words = [w.lower() for w in args.words or ()]
    plants = [p for p in PLANTS if not words or any(w in p.name.lower() for w in words)]
    if args.list or not plants:
        for plant in plants:
            print(f"{plant.name}  [{plant.path}]  {' '.join(plant.tests)}")
        return 0 if plants else 2

    with tempfile.TemporaryDirectory(prefix="planted-bugs-") as tmp:
        copy = Path(tmp)
        _copy_project(copy)
        imported = subprocess.run(
            [sys.executable, "-c", f"import {PKG}; print({PKG}.__file__)"],
            cwd=copy,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not Path(imported).is_relative_to(copy):
            print(f"the copy is not what Python imports ({imported}); cannot plant safely", file=sys.stderr)
            return 2
        # A clean run first: a test that already fails would make every plant look caught.
        clean = sorted({t for p in plants for t in p.tests if t.startswith("tests/")})
        log = copy / "planted-clean.log"
        if _pytest(copy, tuple(clean), log) != 0:
            print(log.read_text()[-3000:])
            print("the selected tests fail without any plant; fix that first", file=sys.stderr)
            return 2
        missed: list[str] = []
        for number, plant in enumerate(plants, 1):
            source = copy / PKG / plant.path
            original = source.read_text()
            if original.count(plant.old) != 1:
                print(
                    f"[{number}] {plant.name}: source line not found once in {plant.path}; update the plant"
                )
                missed.append(plant.name)
                continue
            source.write_text(original.replace(plant.old, plant.new))
            started = time.monotonic()
            try:
                rc = _pytest(copy, plant.tests, copy / f"planted-{number}.log")
            finally:
                source.write_text(original)
            took = time.monotonic() - started
            verdict = "caught" if rc == 1 else f"NOT CAUGHT (pytest exit {rc})"
            print(f"[{number}/{len(plants)}] {verdict:>10}  {plant.name}  ({took:.0f} s)", flush=True)
            if rc != 1:
                print((copy / f"planted-{number}.log").read_text()[-1500:])
                missed.append(plant.name)
        print(f"{len(plants) - len(missed)} of {len(plants)} planted bugs caught")
        return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
