"""`rod` commands for operators: operator add (and, with the operations package, the views)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.settings import Settings
from services.operations.actions import ActionLog
from services.operations.identity import OperatorError, add_operator, os_user
from services.operations.store import OperationsStore


def as_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--as NAME`: record an action under this operator name instead of the operating-system user."""
    return click.option(
        "--as", "as_name", default=None, metavar="NAME",
        help="Record the action under this operator name (default: your operating-system user).",
    )(command)


def action_log(settings: Settings) -> ActionLog:
    """The action log of this data dir; without a known broker, actions wait in the outbox."""
    try:
        bootstrap: str | None = resolve_bootstrap(settings)
    except BrokerUnavailable:
        bootstrap = None
    return ActionLog(OperationsStore(settings.database_urls["operations"]), settings, bootstrap)


def record_cli_action(
    settings: Settings, as_name: str | None, action: str, target: str, reason: str | None, outcome: str = "ok"
) -> None:
    """Record an action taken from the CLI on rod.operations.v1."""
    action_log(settings).record(as_name or os_user(), "cli", action, target, reason or "", outcome)


@click.group()
def operator() -> None:
    """Operators of the console: each has a token of their own."""


@operator.command("add")
@click.argument("name")
@as_option
@click.pass_context
def operator_add(ctx: click.Context, name: str, as_name: str | None) -> None:
    """Add an operator; prints the new token as the last line (shown once, only a hash is kept)."""
    settings: Settings = ctx.obj["settings"]
    creator = as_name or os_user()
    try:
        token = add_operator(OperationsStore(settings.database_urls["operations"]), name, creator)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    record_cli_action(settings, as_name, "operator-add", name, "new operator")
    click.echo(f"operator {name} added; the token below is shown once")
    click.echo(token)


COMMANDS = [operator]
