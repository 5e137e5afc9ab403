"""Mutation score per module from mutmut's results in ``mutants/`` (run by ``make mutation``).

    python scripts/mutation_report.py                  # every mutated module
    python scripts/mutation_report.py conditions spec  # these only
    python scripts/mutation_report.py --survivors      # and the names of the mutants that survived
    .venv/bin/mutmut run $(python scripts/mutation_report.py --unsettled sync)  # re-run only those not killed

A timeout counts as killed (the mutant made the tests hang, which they report); "no tests" counts as
survived (no fast test reaches the mutated function). Inspect a survivor with ``.venv/bin/mutmut show NAME``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

PACKAGE = "airflow_provider_carerix"
MUTANTS = Path("mutants")
# Parts of a module reported on their own as well (function names as mutmut mangles them).
GROUPS = {
    "hooks.carerix": {
        "token cache + retry policy": (
            "get_access_token",
            "_invalidate_token",
            "_fetch_token",
            "_token_key",
            "_should_retry",
            "_not_sent",
            "_retry_after",
            "_wait",
            "_send_once",
            "_send",
            "_call",
        )
    },
    "receiver.validation": {
        "limits": ("check_declared_length", "read_body", "check_content_encoding", "is_json_media_type")
    },
    "triggers.events": {
        "cursor logic": (
            "CarerixEventTrigger._handle",
            "CarerixEventTrigger._start",
            "CarerixEventTrigger.run",
        )
    },
    "triggers.shared_stream": {
        "cursor logic": ("StorePoller.open_stream", "StorePoller.commit", "retry_while_unavailable")
    },
    # The store's public methods are decorated (retried on a dropped connection), which mutmut 3 does not
    # mutate: these are the undecorated functions they are made of; `make planted-bugs` covers the rest.
    "store.grouping": {"write helpers": ("_plan_group", "_known_sequences")},
    "store.core": {"cursor and read helpers": ("EventStore._advance_stmt",)},
    "store.schema": {"type filter": ("type_filter",)},
    "store.base": {"unique-key race": ("_unique_violation",)},
    "store.postgres": {
        "PostgreSQL writes": ("PostgresWrites._pg_read_bound", "PostgresWrites._insert_many_pg")
    },
    "store.records": {"rows": ("_stored_event",)},
    "store.leases": {"lease helpers": ("Leases._lock_consumer",)},
    "store.sqlite": {"file identity": ("SQLiteFile._check_file_identity",)},
    "store.filters": {"matching": ("EventFilter.matches", "EventFilter.query_kwargs")},
}


def _function(mutant: str) -> str:
    """``pkg.mod.xǁClassǁmethod__mutmut_3`` -> ``method``; ``pkg.mod.x_func__mutmut_3`` -> ``func``."""
    mangled = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    return mangled.rsplit("ǁ", 1)[-1] if "ǁ" in mangled else mangled.removeprefix("x_")


def _in(mutant: str, functions: tuple[str, ...]) -> bool:
    """Whether a mutant is in one of ``functions`` (``name`` or ``Class.method``)."""
    mangled = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    qualified = ".".join(mangled.split("ǁ")[1:]) if "ǁ" in mangled else _function(mutant)
    return _function(mutant) in functions or qualified in functions


def _line(name: str, statuses: Counter[str]) -> str:
    killed = statuses["killed"] + statuses["timeout"]
    total = sum(statuses.values()) - statuses["not checked"]
    score = f"{100 * killed / total:5.1f}%" if total else "    -"
    rest = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()) if s not in ("killed", "timeout") and n)
    return f"{name:<48} {killed:>4}/{total:<4} {score}" + (f"  ({rest})" if rest else "")


def _read_results(meta: Path) -> dict[str, int | None]:
    """A module's results; a running mutmut rewrites the file, so a half-written one is read again."""
    for _ in range(20):
        try:
            return json.loads(meta.read_text())["exit_code_by_key"]
        except json.JSONDecodeError:
            time.sleep(0.1)
    return json.loads(meta.read_text())["exit_code_by_key"]


def _statuses(modules: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``(module, {mutant: status})`` for each mutated module (all, or those named)."""
    found = []
    for meta in sorted(MUTANTS.glob(f"{PACKAGE}/**/*.py.meta")):
        module = meta.relative_to(MUTANTS / PACKAGE).as_posix().removesuffix(".py.meta").replace("/", ".")
        if modules and module not in modules:
            continue
        results = _read_results(meta)
        found.append((module, {name: status_by_exit_code[code] for name, code in results.items()}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "modules", nargs="*", help="dotted module names under the package, e.g. hooks.carerix"
    )
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants too")
    parser.add_argument(
        "--unsettled",
        action="store_true",
        help="print only the names of the mutants not killed yet (survived, no tests, not checked)",
    )
    parser.add_argument("--group", help="with --unsettled: only this part of the module (see GROUPS)")
    args = parser.parse_args()

    if args.unsettled:
        for module, status in _statuses(args.modules):
            functions = GROUPS.get(module, {}).get(args.group) if args.group else None
            for name, s in sorted(status.items()):
                if s in ("survived", "no tests", "not checked") and (
                    functions is None or _in(name, functions)
                ):
                    print(name)
        return

    print(f"{'module':<48} killed/total  score")
    for module, status in _statuses(args.modules):
        print(_line(module, Counter(status.values())))
        for group, functions in GROUPS.get(module, {}).items():
            part = Counter(s for name, s in status.items() if _in(name, functions))
            print(_line(f"  {group}", part))
        if args.survivors:
            for name, s in sorted(status.items()):
                if s in ("survived", "no tests"):
                    print(f"    {s:<9} {name}")


if __name__ == "__main__":
    main()
