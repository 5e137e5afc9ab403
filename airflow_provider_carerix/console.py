"""What the three console scripts share: ``--version``, plain help, and one exit-code convention.

``carerix-webhooks``, ``carerix-receiver`` and ``carerix-emulator`` build their apps with :class:`Typer`, so
each of them, and every command in them, behaves the same way:

* ``--version`` on the app prints ``<script> <version>``.
* ``--help`` is click's plain layout: an option name is never cut short whatever the terminal width (typer's
  rich panels cut ``--allow-unknown-event-types`` at 80 columns), and values show as ``SPEC``, ``FILE...``,
  ``--port PORT`` (typer's own labels are placeholders such as ``{spec}``, ``<list[Path]>`` or ``<bool>``).
* Exit codes (:data:`EXIT_CODES`, the epilog of every ``--help``): 0 done; 1 the command ran and found or
  met a problem (an invalid spec, Carerix, its Airflow connection or the store failing); 2 the command line
  or the configuration is wrong before anything ran (an unknown option, a bad value, a file that cannot be
  read, a receiver without a secret, a conflicting store), so nothing was done. Click already exits 2 on
  its own usage errors; the commands use :data:`EXIT_PROBLEMS` and :data:`EXIT_USAGE` for theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from airflow_provider_carerix import __version__

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

EXIT_CODES = (
    "Exit codes: 0 ok; 1 problems found (an invalid definition or payload; Carerix, its connection or the "
    "event store failing); 2 usage error (an unknown option, a bad value, a missing or unreadable file, a "
    "configuration that cannot work: nothing was done)."
)


# Parameters are told apart by ``param_type_name``: typer may run on click or on its own copy of click
# (``typer._click``), whose classes are not click's.


def _argument_usage(param: Any) -> str:
    """An argument as click writes it: ``SPEC``, ``FILE...``, ``[NAME]``."""
    name = param.metavar or (param.name or "").upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


def _name_values(params: list[Any]) -> None:
    """Give every argument, and every option that takes a value, its name as metavar (``--port PORT``)."""
    for param in params:
        if param.metavar is not None or getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        param.metavar = (param.name or "").upper()


class Command(TyperCommand):
    """A typer command whose help and usage name values the way click and argparse do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_argument_usage(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        arguments = [
            (_argument_usage(p), getattr(p, "help", None) or "")
            for p in params
            if p.param_type_name == "argument"
        ]
        options = [
            record
            for p in params
            if p.param_type_name == "option" and (record := p.get_help_record(ctx)) is not None
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


class Group(TyperGroup):
    """The app itself: its options (``--version``, ``--help``) are flags, named like a command's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)


class Typer(typer.Typer):
    """A ``typer.Typer`` with this project's conventions; ``command()`` defaults to :class:`Command`."""

    def __init__(self, *, name: str, help: str, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(
            name=name,
            help=help,
            cls=Group,
            epilog=EXIT_CODES,
            rich_markup_mode=None,  # click's layout: see the module docstring
            add_completion=False,
            pretty_exceptions_enable=False,
            **kwargs,
        )

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        kwargs.setdefault("epilog", EXIT_CODES)
        return super().command(name, cls=cls or Command, **kwargs)


def version_option(script: str) -> Any:
    """The ``--version`` option of an app's callback: prints ``<script> <version>`` and exits 0."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{script} {__version__}")
            raise typer.Exit(EXIT_OK)

    return typer.Option(
        "--version", help="Show the version and exit.", is_eager=True, callback=show, expose_value=False
    )
