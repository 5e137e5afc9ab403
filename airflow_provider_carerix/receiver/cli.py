"""``carerix-receiver``: run the standalone receiver (``serve``) and apply retention (``purge``)."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from airflow_provider_carerix import metrics, settings
from airflow_provider_carerix.console import EXIT_PROBLEMS, EXIT_USAGE, Typer, version_option
from airflow_provider_carerix.delivery.signing import SigningKeyCache
from airflow_provider_carerix.durations import parse_duration
from airflow_provider_carerix.receiver.config import receiver_settings
from airflow_provider_carerix.receiver.server import ServerLimits
from airflow_provider_carerix.receiver.validation import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MIN_BODY_RATE,
    printable,
)
from airflow_provider_carerix.settings import ConfigurationError, StoreLocation
from airflow_provider_carerix.store import EventStore, StoreUnavailable

__all__ = ["cli", "main"]

log = logging.getLogger(__name__)

cli = Typer(name="carerix-receiver", help="Carerix webhook receiver.")


@cli.callback()
def _root(version: Annotated[bool, version_option("carerix-receiver")] = False) -> None:
    """Carerix webhook receiver."""


StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="Event store URL. Default: the Airflow connection carerix_event_store, then [carerix] "
        "event_store_url, then $AIRFLOW_HOME/carerix_events.db (the order every component uses)."
    ),
]
StoreConnOpt = Annotated[
    str | None,
    typer.Option(
        help="Airflow connection of the event store (default: [carerix] event_store_conn_id, i.e. "
        "carerix_event_store); '' to ignore connections."
    ),
]


def locate(store: str | None, store_conn_id: str | None) -> StoreLocation:
    """The store, found as every component finds it; a configuration problem exits 2 with the reason.

    Where Airflow is configured on this machine, its metadata database is asked for the connection too (as
    ``airflow connections get`` does), so a receiver beside Airflow follows the same connection.
    """
    from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID, locate_store

    settings.use_airflow_metadata_db()
    try:
        return locate_store(store, store_conn_id=DEFAULT_CONN_ID if store_conn_id is None else store_conn_id)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


@cli.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep loopback behind a TLS proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8090,
    store: StoreOpt = None,
    store_conn_id: StoreConnOpt = None,
    secret_header: Annotated[
        str | None,
        typer.Option(help="Header carrying the secret (default: [carerix] receiver_secret_header)."),
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(help="File with one valid secret per line.", exists=True, dir_okay=False, readable=True),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Accept events without a secret (local experiments only).")
    ] = False,
    public_key_file: Annotated[
        Path | None,
        typer.Option(
            help="RSA public key (PEM) for Cx-Signature (default: [carerix] receiver_public_key_file).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    verify_signatures: Annotated[
        bool,
        typer.Option(
            "--verify-signatures/--no-verify-signatures",
            help="Check Cx-Signature against the keys provisioning recorded in the store per application.",
        ),
    ] = True,
    require_signatures: Annotated[
        bool,
        typer.Option(
            help="Authenticate by recorded signing keys alone: no secret needed, unknown applications refused."
        ),
    ] = False,
    allow_unsigned_applications: Annotated[
        bool | None,
        typer.Option(
            "--allow-unsigned-applications/--refuse-unsigned-applications",
            help="Once signing keys are recorded, still admit (by the secret alone) deliveries that name no "
            "application with a recorded key (default: [carerix] receiver_allow_unsigned_applications, off: "
            "such deliveries get 401).",
            show_default=False,
        ),
    ] = None,
    key_rotation_window: Annotated[
        str, typer.Option(help="How long a replaced signing key stays valid (24h, 7d).")
    ] = "24h",
    max_body: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Largest accepted body in bytes (default: [carerix] receiver_max_body, {DEFAULT_MAX_BODY}).",
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Seconds a body has to arrive in full once its request head is in (default: [carerix] "
            f"receiver_body_timeout, {DEFAULT_BODY_TIMEOUT:g}).",
        ),
    ] = None,
    min_body_rate: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Bytes per second a body must keep up with after its first second, 0: no minimum (default: "
            f"[carerix] receiver_min_body_rate, {DEFAULT_MIN_BODY_RATE}).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn access log).")] = False,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(
            min=1024,
            help="Largest request head (request line + headers) in bytes (default: [carerix] "
            f"receiver_max_header_bytes, {ServerLimits.max_header_bytes}).",
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a connection has to send a complete request head.")
    ] = ServerLimits.header_timeout,
    idle_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds an idle keep-alive connection is kept open.")
    ] = ServerLimits.idle_timeout,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at most (further ones get 503 and are closed).")
    ] = ServerLimits.max_connections,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            help="Address (or CIDR) of a proxy whose X-Forwarded-For is believed; repeatable (default: "
            "[carerix] receiver_trusted_proxies, none).",
        ),
    ] = None,
) -> None:
    """Run the receiver. Secrets: [carerix] receiver_secret (AIRFLOW__CARERIX__RECEIVER_SECRET, comma-separated)
    and/or --secret-file. Every setting: docs/configuration.md."""
    import uvicorn

    from airflow_provider_carerix.receiver.app import create_app
    from airflow_provider_carerix.receiver.heartbeat import ReceiverHeartbeat
    from airflow_provider_carerix.receiver.server import build_config

    logging.basicConfig(level=log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    try:
        config = receiver_settings(secret_file).override(
            secret_header=secret_header,
            public_key_file=public_key_file,
            allow_unsigned_applications=allow_unsigned_applications,
            max_body=max_body,
            body_timeout=body_timeout,
            min_body_rate=min_body_rate,
            max_header_bytes=max_header_bytes,
            trusted_proxies=trusted_proxy,
        )
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    secrets = config.secrets
    try:
        rotation_window = parse_duration(key_rotation_window)
    except ValueError as exc:
        typer.echo(f"error: --key-rotation-window: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if not secrets and not insecure and not require_signatures:
        typer.echo(
            "error: no receiver secret: set [carerix] receiver_secret (AIRFLOW__CARERIX__RECEIVER_SECRET) or "
            "pass --secret-file "
            "(or --require-signatures, or --insecure for local experiments only)",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)
    if not secrets and not require_signatures:
        log.warning(
            "Running with --insecure and no secret: anyone who can reach %s:%d can post events", host, port
        )
    try:
        app_kwargs = config.app_kwargs()
    except (
        OSError
    ) as exc:  # the configured file ([carerix] receiver_public_key_file); click checks the option's
        typer.echo(
            f"error: cannot read the public key file {config.public_key_file}: {exc.strerror or exc}",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE) from None
    location = locate(store, store_conn_id)
    event_store = EventStore(location.url)
    app = create_app(
        event_store,
        insecure=insecure,
        verify_signatures=verify_signatures,
        require_signatures=require_signatures,
        signing_keys=SigningKeyCache(event_store, rotation_window=rotation_window),
        **app_kwargs,
    )
    log.info("Carerix receiver on http://%s:%d/events, event store %s", host, port, location.describe())
    # Airflow's Stats, set up here from [metrics] as Airflow's own components set theirs up.
    log.info("Carerix receiver metrics: %s", metrics.describe())
    heartbeat = ReceiverHeartbeat(event_store, kind="standalone").start()
    # Startup objects never die: keep them out of the collector so full collections stay short (p99).
    gc.collect()
    gc.freeze()
    limits = ServerLimits(
        max_header_bytes=config.max_header_bytes,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        trusted_proxies=tuple(p for value in config.trusted_proxies for p in value.split(",") if p.strip()),
    )
    # log_config=None: uvicorn's records (its access log too) go through the one-line formatter above.
    config = build_config(
        app,
        host=host,
        port=port,
        limits=limits,
        log_level=log_level.lower(),
        access_log=access_log,
        log_config=None,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        heartbeat.stop()


@cli.command(short_help="Delete old events and give the space back.")
def purge(
    older_than: Annotated[
        str, typer.Option(help="Delete events received longer ago (30d, 12h, 2w).")
    ] = "30d",
    store: StoreOpt = None,
    store_conn_id: StoreConnOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows per delete transaction (receivers commit in between).")
    ] = 2000,
    vacuum: Annotated[
        bool,
        typer.Option(
            help="SQLite: one full VACUUM (locks the file while it runs); needed once for stores created "
            "before incremental space reclaim."
        ),
    ] = False,
) -> None:
    """Apply retention: delete old events (the newest one is always kept) and give the space back.

    Deliveries timed before the cutoff whose id is no longer stored are refused from then on (a replay of a
    purged event must not come back as a new one).
    """
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        typer.echo(f"error: --older-than: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    with EventStore(locate(store, store_conn_id).url) as event_store:
        try:
            deleted = event_store.purge(age, batch_size=batch_size, vacuum=vacuum)
        except StoreUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_PROBLEMS) from None
    typer.echo(f"deleted {deleted} events received more than {older_than} ago")


class OneLineFormatter(logging.Formatter):
    """One record, one line: line breaks and other control characters in a message are escaped.

    Whatever reaches a message (a path in uvicorn's access log, a value a client chose), a client can never
    start a line of its own in the receiver's log, e.g. a forged ``CRITICAL``. A traceback still gets its
    lines: it is appended after the message, by the code, not by a client.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def main(argv: list[str] | None = None) -> None:
    cli(args=argv if argv is not None else sys.argv[1:], prog_name="carerix-receiver")
