"""`rod` commands for operators: operator add, and `rod topics` (the one-screen view)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.settings import Settings
from services.operations.actions import ActionLog
from services.operations.identity import OperatorError, add_operator, os_user, rotate_operator
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


def reason_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--reason TEXT` of a token's rotation (recorded with the action)."""
    return click.option("--reason", default="rotated", show_default=True,
                        help="Why, for the record on rod.operations.v1.")(command)


@operator.command("rotate-token")
@click.argument("name")
@reason_option
@as_option
@click.pass_context
def operator_rotate_token(ctx: click.Context, name: str, reason: str, as_name: str | None) -> None:
    """A new token for operator NAME (the last line); the old one and its console sessions end at once."""
    settings: Settings = ctx.obj["settings"]
    store = OperationsStore(settings.database_urls["operations"])
    try:
        token = rotate_operator(store, name, as_name or os_user(), reason)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    record_cli_action(settings, as_name, "token-rotate", f"operator:{name}", reason)
    click.echo(f"operator {name}: new token below (shown once); the old one and its sessions ended")
    click.echo(token)


class Unreachable(click.ClickException):
    """The broker or a database cannot be reached: exit 2 with a message, no traceback."""

    exit_code = 2


def _overview(settings: Settings) -> dict[str, Any]:
    from services.operations import overview

    try:
        return overview.gather(settings, resolve_bootstrap(settings))
    except (BrokerUnavailable, overview.Unreachable) as exc:
        raise Unreachable(str(exc)) from None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def log_line(log: dict[str, Any] | None) -> str:
    """The log's line: the newest checkpoint's size and age, the tree and how far it is behind."""
    if log is None:
        return "LOG  no log tables in the registrar's store yet (start `rod up` once)"
    if log["checkpoint_tree_size"] is None:
        checkpoint = "no checkpoint signed yet"
    else:
        checkpoint = (f"checkpoint {log['checkpoint_tree_size']:,} events, "
                      f"signed {_age(log['checkpoint_age_seconds'])} ago")
    return (f"LOG  {checkpoint}  tree {log['tree_size']:,} ({log['tree_behind']:,} behind)  "
            f"unsigned events {log['unsigned_events']:,}  unpublished {log['unpublished_checkpoints']:,}  "
            f"{log['status']}")


def render(view: dict[str, Any], attention: list[str]) -> str:
    """The one screen: topics, relay, log, groups, subscriptions, dead letters, what needs attention."""
    approx = any(t["approximate"] for t in view["topics"])
    lines = [f"TOPICS{'  (~ approximate: this broker reports end offsets short)' if approx else ''}",
             f"  {'NAME':<44} {'PARTS':>5} {'MESSAGES':>10}"]
    for t in view["topics"]:
        count = "missing" if t.get("missing") else ("~" if t["approximate"] else "") + str(t["messages"])
        lines.append(f"  {t['name']:<44} {t['partitions']:>5} {count:>10}")
    relay = view["relay"]
    lines += ["", f"RELAY  stored {relay['stored_position']}  published {relay['published_position']}  "
                  f"lag {relay['lag']}  {relay['status']}", log_line(view.get("log")), "",
              f"GROUPS (status over {view['window_seconds']:g} s)",
              f"  {'GROUP':<24} {'TOPIC':<36} {'STATUS':<8} {'LAG':>8} {'MEMBERS':>7}"]
    for g in view["groups"]:
        lines.append(f"  {g['group']:<24} {g['topic']:<36} {g['status']:<8} {g['lag']:>8} {g['members']:>7}")
    if not view["groups"]:
        lines.append("  (no consumer group has committed on these topics)")
    lines += ["", "SUBSCRIPTIONS",
              f"  {'NAME':<14} {'STATE':<8} {'DELIVERED':>9} {'WITHDRAWN':>9} {'HELD':>6} {'SKIPPED':>8} "
              f"{'PENDING':>8} {'AGE':>6}  LAST DELIVERED"]
    for s in view["subscriptions"]:
        lines.append(f"  {s['name']:<14} {s['state']:<8} {s['delivered']:>9} {s['withdrawn']:>9} "
                     f"{s['held']:>6} {s['skipped']:>8} {s['pending']:>8} "
                     f"{_age(s['pending_age_seconds']):>6}  {s['last_delivered_at'] or '-'}")
    if view.get("consumers"):
        lines += ["", "HTTP FEED CONSUMERS",
                  f"  {'NAME':<20} {'SUBSCRIPTION':<14} {'UNACKED':>8} {'WAITING':>8} {'ACKED AGO':>9}"
                  "  LAST FETCH"]
        for c in view["consumers"]:
            lines.append(f"  {c['name']:<20} {c['subscription']:<14} {c['unacknowledged']:>8} "
                         f"{_age(c['oldest_unacknowledged_age_seconds']):>8} "
                         f"{_age(c['acknowledgement_age_seconds']):>9}  {c['last_fetch_at'] or '-'}")
    letters = view["deadletters"]
    lines += ["", f"DEAD LETTERS  open {letters['open']}  total {letters['total']}", ""]
    lines += [f"ATTENTION: {a}" for a in attention] or ["all OK"]
    return "\n".join(lines)


@click.command("topics")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (one per refresh with --watch).")
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, metavar="SECONDS",
              help="Redraw every SECONDS until Ctrl-C.")
@click.pass_context
def topics(ctx: click.Context, as_json: bool, watch: float | None) -> None:
    """The chain at a glance: topics, relay, log checkpoints, consumer groups, subscriptions, dead letters.

    Exit 0 when all is OK and no dead letter is open, 1 when something needs attention,
    2 when the broker or a database cannot be reached.
    """
    from services.operations.overview import needs_attention

    settings: Settings = ctx.obj["settings"]
    code = 0
    try:
        while True:
            view = _overview(settings)
            attention = needs_attention(view)
            code = 1 if attention else 0
            if as_json:
                click.echo(json.dumps(view))
            else:
                if watch:
                    click.clear()
                click.echo(render(view, attention))
            if not watch:
                break
            time.sleep(watch)
    except KeyboardInterrupt:
        pass
    sys.exit(code)


COMMANDS = [operator, topics]
