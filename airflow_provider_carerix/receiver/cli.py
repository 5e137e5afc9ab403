"""``carerix-receiver``: run the standalone receiver (``serve``) and apply retention (``purge``)."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from airflow_provider_carerix.receiver.auth import (
    DEFAULT_SECRET_HEADER,
    ENV_SECRET,
    ENV_SECRET_HEADER,
    load_secrets,
)
from airflow_provider_carerix.receiver.server import ServerLimits
from airflow_provider_carerix.receiver.validation import DEFAULT_MAX_BODY
from airflow_provider_carerix.signing import SigningKeyCache
from airflow_provider_carerix.store import EventStore, StoreUnavailable, parse_duration, resolve_store_url

__all__ = ["cli", "main"]

log = logging.getLogger(__name__)

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Carerix webhook receiver.")


@cli.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep loopback behind a TLS proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8090,
    store: Annotated[
        str | None, typer.Option(help="Event store URL (default: resolved as everywhere).")
    ] = None,
    secret_header: Annotated[str, typer.Option(envvar=ENV_SECRET_HEADER)] = DEFAULT_SECRET_HEADER,
    secret_file: Annotated[Path | None, typer.Option(help="File with one valid secret per line.")] = None,
    insecure: Annotated[
        bool, typer.Option(help="Accept events without a secret (local experiments only).")
    ] = False,
    public_key_file: Annotated[
        Path | None, typer.Option(help="RSA public key (PEM) for Cx-Signature.")
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
    key_rotation_window: Annotated[
        str, typer.Option(help="How long a replaced signing key stays valid (24h, 7d).")
    ] = "24h",
    max_body: Annotated[int, typer.Option(help="Largest accepted body in bytes.")] = DEFAULT_MAX_BODY,
    log_level: Annotated[str, typer.Option()] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn access log).")] = False,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request head (request line + headers) in bytes.")
    ] = ServerLimits.max_header_bytes,
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
            envvar="CARERIX_RECEIVER_TRUSTED_PROXIES",
            help="Address (or CIDR) of a proxy whose X-Forwarded-For is believed; repeatable. None by default.",
        ),
    ] = None,
) -> None:
    """Run the receiver. Secrets come from env CARERIX_RECEIVER_SECRET (comma-separated) or --secret-file."""
    import uvicorn

    from airflow_provider_carerix.receiver.app import create_app
    from airflow_provider_carerix.receiver.server import build_config

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secrets = load_secrets(secret_file)
    try:
        rotation_window = parse_duration(key_rotation_window)
    except ValueError as exc:
        typer.echo(f"error: --key-rotation-window: {exc}", err=True)
        raise typer.Exit(2) from None
    if not secrets and not insecure and not require_signatures:
        typer.echo(
            f"error: no receiver secret: set {ENV_SECRET} or pass --secret-file "
            "(or --require-signatures, or --insecure for local experiments only)",
            err=True,
        )
        raise typer.Exit(2)
    if not secrets and not require_signatures:
        log.warning(
            "Running with --insecure and no secret: anyone who can reach %s:%d can post events", host, port
        )
    public_key = public_key_file.read_bytes() if public_key_file else None
    event_store = EventStore(resolve_store_url(store))
    app = create_app(
        event_store,
        secrets=secrets,
        secret_header=secret_header,
        max_body=max_body,
        public_key=public_key,
        insecure=insecure,
        verify_signatures=verify_signatures,
        require_signatures=require_signatures,
        signing_keys=SigningKeyCache(event_store, rotation_window=rotation_window),
    )
    log.info("Carerix receiver on http://%s:%d/events, store %r", host, port, app.state.store)
    # Startup objects never die: keep them out of the collector so full collections stay short (p99).
    gc.collect()
    gc.freeze()
    limits = ServerLimits(
        max_header_bytes=max_header_bytes,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        trusted_proxies=tuple(p for value in trusted_proxy or () for p in value.split(",") if p.strip()),
    )
    config = build_config(
        app, host=host, port=port, limits=limits, log_level=log_level.lower(), access_log=access_log
    )
    uvicorn.Server(config).run()


@cli.command()
def purge(
    older_than: Annotated[
        str, typer.Option(help="Delete events received longer ago (30d, 12h, 2w).")
    ] = "30d",
    store: Annotated[
        str | None, typer.Option(help="Event store URL (default: resolved as everywhere).")
    ] = None,
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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with EventStore(store) as event_store:
        try:
            deleted = event_store.purge(age, batch_size=batch_size, vacuum=vacuum)
        except StoreUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"deleted {deleted} events received more than {older_than} ago")


def main(argv: list[str] | None = None) -> None:
    cli(args=argv if argv is not None else sys.argv[1:], prog_name="carerix-receiver")
