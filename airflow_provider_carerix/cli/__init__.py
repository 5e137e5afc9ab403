"""``carerix-webhooks``: check (and, with the sync commands, apply) webhook definitions from a terminal or CI.

One function per command, registered on ``app``; other modules add theirs the same way. Nothing here
imports Airflow at module level, so ``validate`` starts fast and works without an Airflow installation
configured.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated

import typer

from airflow_provider_carerix.cli.recover import register as register_recover_commands
from airflow_provider_carerix.cli.sync import UNKNOWN_HINT, UnknownOpt
from airflow_provider_carerix.cli.sync import register as register_sync_commands
from airflow_provider_carerix.console import EXIT_PROBLEMS, Typer, version_option
from airflow_provider_carerix.definitions.spec import check_spec

app = Typer(
    name="carerix-webhooks",
    help="Validate, plan and apply Carerix webhook definitions (spec files or Carerix webhook bodies).",
)


@app.callback()
def _root(version: Annotated[bool, version_option("carerix-webhooks")] = False) -> None:
    """Validate, plan and apply Carerix webhook definitions."""
    # A callback keeps typer in multi-command mode even while only one command is registered.


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@app.command(short_help="Check spec files and webhook bodies, offline.")
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Spec files (YAML or JSON), or Carerix webhook bodies (JSON).",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    allow_unknown_event_types: UnknownOpt = False,
) -> None:
    """Check files without contacting Carerix: print every problem as file:line:col: path: message.

    Exits 1 when anything is wrong, else prints a one-line summary and exits 0. A file that does not exist
    or cannot be read is a usage error (exit 2), as for plan and apply.
    """
    problem_count = webhook_count = bad_files = 0
    for path in files:
        result = check_spec(
            path,
            allow_unknown_event_types=allow_unknown_event_types,
            filename=str(path),
            unknown_event_types_hint=UNKNOWN_HINT,
        )
        webhook_count += result.webhook_count
        if result.problems:
            bad_files += 1
        for problem in result.problems:
            problem_count += 1
            typer.echo(str(problem))
            if problem.detail:
                typer.echo(textwrap.indent(problem.detail, "  "))
    if problem_count:
        typer.echo(f"{_plural(problem_count, 'problem')} in {bad_files} of {_plural(len(files), 'file')}")
        raise typer.Exit(EXIT_PROBLEMS)
    typer.echo(f"{_plural(len(files), 'file')}, {_plural(webhook_count, 'webhook')}: valid")


register_sync_commands(app)  # plan, apply
register_recover_commands(app)  # recover


def main() -> None:
    app()
