"""`rod deadletter list|replay|discard`: what the consuming services could not process.

The CLI acts with the authority of whoever can reach the databases (as psql does); every
replay and discard is recorded on rod.operations.v1 under the operating-system user or
`--as NAME`.
"""

from __future__ import annotations

import json

import click

from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.settings import Settings
from services.operations import deadletters as dl
from services.operations.cli import as_option
from services.operations.identity import os_user


@click.group()
def deadletter() -> None:
    """Dead letters: list them, replay them after a fix, or discard them on purpose."""


@deadletter.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def deadletter_list(ctx: click.Context, as_json: bool) -> None:
    """Every dead letter of every service, open and closed (nothing is removed)."""
    settings: Settings = ctx.obj["settings"]
    letters = dl.list_all(settings)
    if as_json:
        for letter in letters:
            click.echo(json.dumps(letter, sort_keys=True))
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'ID':<16} {'STATUS':<10} {'ATTEMPT':>7}  {'ORIGIN':<32} {'AT':<25} REASON")
    for x in letters:
        origin = f"{x['origin']['topic']}/{x['origin']['partition']}@{x['origin']['offset']}"
        reason = f"{x['reason']['code']}: {x['reason']['message']}"
        at = x["at"] or ""
        click.echo(f"{x['id']:<16} {x['status']:<10} {x['attempt']:>7}  {origin:<32} {at:<25} {reason}")
    counts = dl.counts(settings)
    click.echo(f"{counts['open']} open of {counts['total']}")


@deadletter.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_open", is_flag=True, help="Every open dead letter.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed and where; change nothing.")
@click.option("--reason", default="", help="Why (recorded with the action).")
@as_option
@click.pass_context
def deadletter_replay(
    ctx: click.Context, ids: tuple[str, ...], all_open: bool, dry_run: bool, reason: str, as_name: str | None
) -> None:
    """Run each letter's original message through its service again; exit 1 when any failed."""
    settings: Settings = ctx.obj["settings"]
    if bool(ids) == all_open:
        raise click.UsageError("name the dead letters to replay (SERVICE:NUMBER ...) or give --all")
    try:
        bootstrap = resolve_bootstrap(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    outcomes = dl.replay(
        settings, bootstrap, list(ids), all_open=all_open, operator=as_name or os_user(), via="cli",
        dry_run=dry_run, reason=reason,
    )
    if not outcomes:
        click.echo("no open dead letters")
    for x in outcomes:
        click.echo(f"{x['id']}: {x['outcome']}: {x['detail']}")
    if any(x["failed"] for x in outcomes):
        ctx.exit(1)


@deadletter.command("discard")
@click.argument("letter_id", metavar="ID")
@click.option("--reason", required=True, help="Why it is closed without a replay (recorded).")
@as_option
@click.pass_context
def deadletter_discard(ctx: click.Context, letter_id: str, reason: str, as_name: str | None) -> None:
    """Close one dead letter on purpose; it stays listed as discarded."""
    settings: Settings = ctx.obj["settings"]
    try:
        outcome = dl.discard(settings, letter_id, reason, as_name or os_user(), "cli")
    except dl.UnknownDeadLetter as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{outcome['id']}: {outcome['outcome']}: {outcome['detail']}")
    if outcome["failed"]:
        ctx.exit(1)


COMMANDS = [deadletter]
