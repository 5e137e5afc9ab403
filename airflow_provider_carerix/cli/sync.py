"""``carerix-webhooks plan`` and ``carerix-webhooks apply``: the sync operator's code path, from a terminal.

Templates. A spec file written for the DAG holds Jinja such as ``{{ var.value.carerix_receiver_secret }}``.
The CLI renders it with Airflow's own Variable and Connection accessors (``var.value.KEY``,
``var.value.get('KEY', 'default')``, ``var.json.KEY``, ``conn.CONN_ID.password``), which resolve the way
Airflow's own CLI resolves them: ``AIRFLOW_VAR_<KEY>`` / ``AIRFLOW_CONN_<ID>`` environment variables, any
backend configured in ``[secrets] backend``, and Airflow's metadata database when Airflow is configured on this
machine (``airflow connections add`` / ``airflow variables set``). A lookup that fails says where it looked.
Anything else a task context has (``ds``, ``params``, macros) is undefined here and is reported as an error
rather than rendered empty, so a spec cannot silently lose a header value.

Reachability. When the connection points at Carerix itself (not the emulator or another local address),
webhook URLs Carerix cannot deliver to (loopback, private or link-local addresses, ``localhost``, plain
``http://``) are refused before anything is read or written; ``--allow-unreachable-urls`` permits them for
setups where Carerix does reach such an address.

Airflow and the hook (which imports Airflow) are imported inside the functions that need them, so
``carerix-webhooks validate`` starts without loading Airflow.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from airflow_provider_carerix.cli.common import (
    ConnIdOpt,
    StoreConnOpt,
    StoreOpt,
    carerix_hook,
    connection_error,
    open_store_location,
    own_logging,
)
from airflow_provider_carerix.console import EXIT_PROBLEMS, EXIT_USAGE
from airflow_provider_carerix.definitions.spec import Spec, load_spec
from airflow_provider_carerix.definitions.validation import SpecValidationError, targets_public_carerix
from airflow_provider_carerix.exceptions import CarerixError
from airflow_provider_carerix.provisioning.sync import SyncResult, _planned_result, apply, plan

SpecArg = Annotated[
    Path,
    typer.Argument(
        help="YAML or JSON spec file.", metavar="SPEC", exists=True, dir_okay=False, readable=True
    ),
]
UnknownOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unknown-event-types", help="Accept entities missing from the provider's catalogue."
    ),
]
# What an unknown entity's problem suggests on the command line: the flag above, not the operator's parameter.
UNKNOWN_HINT = "pass --allow-unknown-event-types"
UnreachableOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unreachable-urls",
        help="Accept webhook URLs Carerix cannot reach from the internet (loopback, private, http://) "
        "although the connection points at Carerix itself.",
    ),
]
_MISSING_VARIABLE = re.compile(r"Variable (\S+) not found")


def render_spec_text(text: str) -> str:
    """Render a spec file's Jinja with Airflow's Variable/Connection accessors (see module docstring)."""
    if "{{" not in text and "{%" not in text:
        return text
    import jinja2
    import jinja2.sandbox
    from airflow.sdk.execution_time.context import ConnectionAccessor, VariableAccessor

    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    context: dict[str, Any] = {
        "var": {
            "value": VariableAccessor(deserialize_json=False),
            "json": VariableAccessor(deserialize_json=True),
        },
        "conn": ConnectionAccessor(),
    }
    return env.from_string(text).render(**context)


def _missing_variable(path: Path, template: str, exc: Exception) -> str | None:
    """A clear message when the template needs an Airflow Variable that is not set, else ``None``."""
    match = _MISSING_VARIABLE.search(str(exc))
    if match is None:
        return None
    name = match.group(1).strip("'\"")
    line = next((i for i, text in enumerate(template.splitlines(), 1) if name in text and "{{" in text), None)
    where = f"{path}:{line}" if line else str(path)
    from airflow_provider_carerix.settings import where_airflow_looks

    return (
        f"{where}: the spec needs the Airflow Variable {name!r}, which is not set (looked in "
        f"{where_airflow_looks('variable', name)}): set it (airflow variables set {name} ..., or "
        f"AIRFLOW_VAR_{name.upper()}); nothing was changed"
    )


def load_spec_file(
    path: Path, *, allow_unknown_event_types: bool = False, require_public_urls: bool = False
) -> Spec:
    """Read, render, validate; exits 1 printing every problem (file:line:column) when the spec is invalid.

    A spec that cannot be read exits 2, a usage error like a missing one (which click refuses before this).
    """
    own_logging()
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        text = render_spec_text(template)
    except Exception as exc:  # jinja2 errors, Variable/Connection not found
        message = _missing_variable(path, template, exc)
        typer.echo(f"error: {message or f'cannot render the templates in {path}: {exc}'}", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None
    try:
        return load_spec(
            text,
            allow_unknown_event_types=allow_unknown_event_types,
            filename=str(path),
            require_public_urls=require_public_urls,
            template=template if text != template else None,
            unknown_event_types_hint=UNKNOWN_HINT,
        )
    except SpecValidationError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        typer.echo(f"{path}: {len(exc.problems)} problem(s); nothing was changed", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None


def _stdin_is_tty() -> bool:
    """Whether a person can answer the confirmation (a pipe or CI cannot: apply then needs --yes)."""
    return sys.stdin.isatty()


def _connect_and_load(
    spec: Path, conn_id: str, *, allow_unknown_event_types: bool, allow_unreachable_urls: bool
) -> tuple[Spec, Any]:
    """The hook and the validated spec; whether URLs must be public depends on where the connection points.

    Resolving the connection reads Airflow's connection (environment or secrets backend), never Carerix.
    """
    own_logging()
    hook = carerix_hook(conn_id)
    try:
        public = targets_public_carerix(hook.settings.api_url)
    except (
        Exception
    ) as exc:  # connection not defined (Airflow's not-found error) or incomplete (CarerixError)
        raise _fail(connection_error(conn_id, exc)) from None
    loaded = load_spec_file(
        spec,
        allow_unknown_event_types=allow_unknown_event_types,
        require_public_urls=public and not allow_unreachable_urls,
    )
    return loaded, hook


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_PROBLEMS)


def plan_command(
    spec: SpecArg,
    prune: Annotated[
        bool, typer.Option("--prune/--no-prune", help="Plan deletion of webhooks not in the spec.")
    ] = True,
    conn_id: ConnIdOpt = "carerix_default",
    allow_unknown_event_types: UnknownOpt = False,
    allow_unreachable_urls: UnreachableOpt = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary after the plan.")
    ] = False,
) -> None:
    """Show what `apply` would change in Carerix. Reads only; a spec with problems reads nothing."""
    loaded, hook = _connect_and_load(
        spec,
        conn_id,
        allow_unknown_event_types=allow_unknown_event_types,
        allow_unreachable_urls=allow_unreachable_urls,
    )
    try:
        the_plan = plan(loaded, hook, prune=prune)
    except CarerixError as exc:
        raise _fail(exc) from None
    typer.echo(the_plan.render())
    if json_output:
        result = SyncResult(the_plan, [_planned_result(a) for a in the_plan.applications], dry_run=True)
        typer.echo(result.to_json())


def apply_command(
    spec: SpecArg,
    prune: Annotated[
        bool, typer.Option("--prune/--no-prune", help="Delete webhooks not in the spec.")
    ] = True,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    conn_id: ConnIdOpt = "carerix_default",
    allow_unknown_event_types: UnknownOpt = False,
    allow_unreachable_urls: UnreachableOpt = False,
    record_keys: Annotated[
        bool,
        typer.Option(
            "--record-keys/--no-record-keys",
            help="Record each application's signing key in the event store, for receivers to verify with.",
        ),
    ] = True,
    store: StoreOpt = None,
    store_conn_id: StoreConnOpt = None,
) -> None:
    """Converge Carerix onto the spec (the sync operator's code path); asks first unless --yes.

    Declining exits 1 (nothing was changed); without --yes and without a terminal to ask on, exits 2.
    """
    loaded, hook = _connect_and_load(
        spec,
        conn_id,
        allow_unknown_event_types=allow_unknown_event_types,
        allow_unreachable_urls=allow_unreachable_urls,
    )
    try:
        the_plan = plan(loaded, hook, prune=prune)
    except CarerixError as exc:
        raise _fail(exc) from None
    typer.echo(the_plan.render())
    if not the_plan.has_changes:
        if record_keys:
            unchanged = apply(the_plan, hook)  # nothing to write: no call to Carerix, only a result to record
            _record_keys(
                hook,
                [a.application_id for a in unchanged.applications],
                store,
                store_conn_id,
                unchanged.snapshot(),
            )
        return
    if not yes:
        if not _stdin_is_tty():
            typer.echo(
                "error: refusing to apply without --yes: stdin is not a terminal to confirm on", err=True
            )
            raise typer.Exit(EXIT_USAGE)
        if not typer.confirm("Apply these changes to Carerix?", default=False):
            typer.echo("Nothing was changed.", err=True)
            raise typer.Exit(EXIT_PROBLEMS)
    try:
        result = apply(the_plan, hook, say=typer.echo)
    except CarerixError as exc:
        typer.echo(
            "The run stopped halfway; running apply again finishes it (see the lines above).", err=True
        )
        raise _fail(exc) from None
    if record_keys:
        _record_keys(
            hook, [a.application_id for a in result.applications], store, store_conn_id, result.snapshot()
        )
    typer.echo(result.to_json())


def _record_keys(
    hook: Any,
    application_ids: list[str | None],
    store_url: str | None,
    store_conn_id: str | None,
    webhooks: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Signing keys (and the webhooks as the run left them, ``SyncResult.snapshot()``) to the event store
    (messages on stderr: stdout holds the plan and the JSON summary)."""
    from airflow_provider_carerix.exceptions import CarerixError
    from airflow_provider_carerix.provisioning.signing_keys import record_signing_keys
    from airflow_provider_carerix.store import EventStore, StoreUnavailable

    try:
        with EventStore(open_store_location(store_url, store_conn_id).url) as event_store:
            record_signing_keys(hook, application_ids, event_store, say=lambda m: typer.echo(m, err=True))
            for application_id, rows in (webhooks or {}).items():
                event_store.record_webhooks(application_id, rows)
    except (CarerixError, StoreUnavailable) as exc:
        typer.echo("The webhooks are in place, but their signing keys could not be recorded.", err=True)
        raise _fail(exc) from None


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``apply`` to the ``carerix-webhooks`` app (owned by :mod:`airflow_provider_carerix.cli`)."""
    app.command("plan", short_help="Show what apply would change in Carerix (reads only).")(plan_command)
    app.command("apply", short_help="Converge Carerix onto the spec.")(apply_command)
