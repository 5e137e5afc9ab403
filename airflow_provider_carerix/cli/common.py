"""What the ``carerix-webhooks`` commands share: the Airflow connection, Airflow's logging, the event store.

Airflow (and the hook, which imports it) is imported inside the functions, so ``carerix-webhooks validate``
starts without loading Airflow.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from airflow_provider_carerix.console import EXIT_USAGE

ConnIdOpt = Annotated[
    str,
    typer.Option(
        "--conn-id", help="Airflow connection id, resolved as Airflow does (AIRFLOW_CONN_<ID> env vars too)."
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Event store URL (default: the connection carerix_event_store, then [carerix] event_store_url, "
        "then $AIRFLOW_HOME/carerix_events.db, as every component).",
    ),
]
StoreConnOpt = Annotated[
    str | None,
    typer.Option(
        "--store-conn-id",
        help="Airflow connection of the event store (default [carerix] event_store_conn_id, i.e. "
        "carerix_event_store); '' to ignore connections.",
    ),
]


def own_logging() -> None:
    """Send Airflow's logs to stderr, so stdout holds only the plan and the JSON summary (pipeable), and let
    lookups read Airflow's metadata database where Airflow is configured (as ``airflow connections get``).

    Logging only when this command is the first to import Airflow in the process (the console script):
    inside a process that already uses Airflow (a test runner, a notebook) its logging is not ours to change.
    """
    from airflow_provider_carerix import settings

    if "airflow" not in sys.modules:
        import airflow  # noqa: F401  (configures logging to stdout on import)
        from airflow.sdk.log import configure_logging

        configure_logging(output=sys.stderr)
    settings.use_airflow_metadata_db()


def carerix_hook(conn_id: str) -> Any:
    from airflow_provider_carerix.hooks.carerix import CarerixHook  # imports Airflow: see module docstring

    return CarerixHook(carerix_conn_id=conn_id)


def connection_error(conn_id: str, exc: Exception) -> Exception:
    """Airflow's "isn't defined" with where this process looked (environment, backends, metadata database)."""
    if type(exc).__name__ not in ("AirflowNotFoundException", "ConnectionNotFound"):
        return exc
    from airflow_provider_carerix.settings import where_airflow_looks

    return LookupError(
        f"the Airflow connection {conn_id!r} is not defined: looked in {where_airflow_looks('connection', conn_id)}"
    )


def open_store_location(store: str | None, store_conn_id: str | None) -> Any:
    """The event store as every component finds it; a configuration problem exits 2 saying which."""
    from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID, locate_store
    from airflow_provider_carerix.settings import ConfigurationError

    own_logging()
    try:
        location = locate_store(
            store, store_conn_id=DEFAULT_CONN_ID if store_conn_id is None else store_conn_id
        )
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"Event store: {location.describe()}", err=True)
    return location
