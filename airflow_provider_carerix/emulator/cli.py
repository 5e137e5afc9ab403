"""``carerix-emulator serve``: the emulator as a console script, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Annotated

import typer

from airflow_provider_carerix.console import Typer, version_option
from airflow_provider_carerix.emulator.server import CarerixEmulator
from airflow_provider_carerix.emulator.state import APPLICATION_KINDS, CONTROL_PREFIX, DEFAULT_RETRY_SCHEDULE

cli = Typer(name="carerix-emulator", help="A local Carerix for offline work.")


def _schedule(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected seconds separated by commas, e.g. 30,120,600; got {text!r}",
            param_hint="--retry-schedule",
        ) from None


@cli.callback()
def _root(version: Annotated[bool, version_option("carerix-emulator")] = False) -> None:
    """A local Carerix for offline work."""
    # A callback keeps typer in multi-command mode while ``serve`` is the only command.


@cli.command(short_help="Run the emulator until interrupted.")
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0 picks a free port (printed on start).")] = 8089,
    realm: Annotated[str, typer.Option()] = "demo",
    client_id: Annotated[str, typer.Option()] = "demo-client",
    token_lifetime: Annotated[float, typer.Option()] = 300,
    list_shape: Annotated[str, typer.Option(help="array or items.")] = "array",
    slim: Annotated[
        bool, typer.Option("--slim", help="Ignore ?fields= on lists (entries hold only ids).")
    ] = False,
    application_kind: Annotated[
        str, typer.Option(help="_kind answered for applications: Application or WebhookApplication.")
    ] = "Application",
    retry_schedule: Annotated[
        str, typer.Option(help="Seconds before each retry of a failed delivery, comma-separated.")
    ] = ",".join(f"{s:g}" for s in DEFAULT_RETRY_SCHEDULE),
) -> None:
    """Run the emulator until interrupted (client secret from env CARERIX_EMULATOR_CLIENT_SECRET)."""
    if list_shape not in ("array", "items"):
        raise typer.BadParameter("must be array or items", param_hint="--list-shape")
    if application_kind not in APPLICATION_KINDS:
        raise typer.BadParameter(
            f"must be one of {', '.join(APPLICATION_KINDS)}", param_hint="--application-kind"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    secret = os.environ.get("CARERIX_EMULATOR_CLIENT_SECRET", "demo-secret")
    emulator = CarerixEmulator(
        host,
        port,
        realm=realm,
        clients={client_id: secret},
        token_lifetime=token_lifetime,
        list_shape=list_shape,
        slim=slim,
        application_kind=application_kind,
        retry_schedule=_schedule(retry_schedule),
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    emulator.start()
    print(f"Carerix emulator on {emulator.url}  (API {emulator.api_url}, token URL {emulator.token_url})")
    print(f"client id {client_id}; realm {realm}; control {emulator.url}{CONTROL_PREFIX}/state")
    print(f"AIRFLOW_CONN_CARERIX_DEFAULT='{emulator.connection_json(client_id, '<secret>')}'", flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Console script ``carerix-emulator``."""
    cli(args=argv if argv is not None else sys.argv[1:], prog_name="carerix-emulator")
