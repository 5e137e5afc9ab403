"""``carerix-webhooks recover``: fetch events the receiver missed from Carerix's delivery log into the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from airflow_provider_carerix.cli.common import StoreConnOpt, StoreOpt
from airflow_provider_carerix.console import EXIT_PROBLEMS, EXIT_USAGE


def recover_command(
    since: Annotated[
        str | None,
        typer.Option(
            help="Jobs queued since: a duration back from now (2h, 7d) or an ISO 8601 time; all if unset."
        ),
    ] = None,
    only_failed: Annotated[
        bool, typer.Option("--only-failed", help="Only jobs whose every delivery attempt failed.")
    ] = False,
    store: StoreOpt = None,
    store_conn_id: StoreConnOpt = None,
    conn_id: Annotated[
        str, typer.Option("--conn-id", help="Airflow connection id (AIRFLOW_CONN_<ID> env vars too).")
    ] = "carerix_default",
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Delivery jobs per page.")] = 100,
) -> None:
    """Store every payload of Carerix's delivery log the event store lacks (safe to repeat: dedupe by event id).

    Prints the counts as JSON; exits 1 when Carerix or the store fails, or a payload is invalid.
    """
    from airflow_provider_carerix.cli.common import (
        carerix_hook,
        connection_error,
        open_store_location,
        own_logging,
    )
    from airflow_provider_carerix.durations import parse_since
    from airflow_provider_carerix.exceptions import CarerixError
    from airflow_provider_carerix.recovery import recover_events
    from airflow_provider_carerix.store import EventStore, StoreUnavailable

    try:
        since_at = parse_since(since)
    except ValueError as exc:
        typer.echo(f"error: --{exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    own_logging()
    location = open_store_location(store, store_conn_id)
    hook = carerix_hook(conn_id)
    try:
        hook.settings  # noqa: B018  (the connection, read before anything else)
    except Exception as exc:
        typer.echo(f"error: {connection_error(conn_id, exc)}", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None
    try:
        with EventStore(location.url) as event_store:
            result = recover_events(
                hook.iter_delivery_jobs(since=since_at, page_size=page_size),
                event_store,
                only_failed=only_failed,
                say=lambda m: typer.echo(m, err=True),
            )
    except (CarerixError, StoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        typer.echo("Events stored before the failure stay stored; run recover again to finish.", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None
    typer.echo(json.dumps(result.summary()))
    if result.invalid:
        raise typer.Exit(EXIT_PROBLEMS)


def register(app: typer.Typer) -> None:
    """Add ``recover`` to the ``carerix-webhooks`` app."""
    app.command("recover", short_help="Store events the receiver missed, from Carerix's delivery log.")(
        recover_command
    )
