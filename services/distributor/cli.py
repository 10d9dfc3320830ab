"""`rod` commands of the distributor: distribute, subscription list|pause|resume|replay, feed tail,
consumer add|ack (the HTTP feed)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import date, datetime
from typing import Any

import click
from kafka import TopicPartition

from services.distributor.feed import ConsumerError, CursorError, FeedStore, decode_cursor
from services.distributor.ledger import Ledger
from services.distributor.loop import Distributor
from services.distributor.subscriptions import Subscription, SubscriptionError, load
from services.kernel import kafka
from services.kernel import logging as rod_logging
from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.codec import Codec, DecodeError
from services.kernel.consume import stop_on_signals
from services.kernel.identifiers import mask_person_number
from services.kernel.settings import Settings
from services.operations.cli import as_option, record_cli_action

PERSON_FIELDS = ("person_number", "bsn")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _bootstrap(settings: Settings) -> str:
    try:
        return resolve_bootstrap(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def _subscriptions() -> dict[str, Subscription]:
    try:
        return {s.name: s for s in load(codec=Codec())}
    except (SubscriptionError, OSError) as exc:
        raise click.ClickException(f"subscriptions: {exc}") from None


def _ledger(settings: Settings, subs: dict[str, Subscription]) -> Ledger:
    ledger = Ledger(settings.database_urls["distributor"])
    ledger.sync_subscriptions([(s.name, s.start) for s in subs.values()])
    return ledger


@click.command("distribute")
@click.option(
    "--solo",
    is_flag=True,
    help="Read every partition without joining the consumer group (one process; restarts faster).",
)
@click.option(
    "--until-idle",
    type=float,
    default=None,
    help="Exit once nothing arrived for this many seconds (default: run until stopped).",
)
@click.pass_context
def distribute(ctx: click.Context, solo: bool, until_idle: float | None) -> None:
    """Run the distributor in the foreground: rod.results.v1 to every subscription's feed."""
    rod_logging.configure(level=logging.INFO)  # a server: its log tells what it does
    settings = _settings(ctx)
    distributor = Distributor(
        settings, _bootstrap(settings), subscriptions=list(_subscriptions().values()), group=not solo
    )
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        distributor.run(stop, idle_exit=until_idle)
    finally:
        distributor.close()


@click.group()
def subscription() -> None:
    """The distributor's subscriptions (deploy/subscriptions.toml): state and operations."""


@subscription.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per subscription.")
@click.pass_context
def subscription_list(ctx: click.Context, as_json: bool) -> None:
    """Every subscription: running or paused, its feed, hold window and counts."""
    subs = _subscriptions()
    ledger = _ledger(_settings(ctx), subs)
    with ledger.reading() as conn:
        states = ledger.states(conn)
    counts = ledger.counts()
    rows = []
    for name, sub in subs.items():
        state = states[name]
        entry = {
            "delivered": 0,
            "withdrawn": 0,
            "held": 0,
            "skipped": 0,
            "cancelled": 0,
            "last_delivered_at": None,
            **counts.get(name, {}),
        }
        rows.append(
            {
                "name": name,
                "state": "paused" if state.paused else "running",
                "mode": state.mode,
                "topic": sub.topic,
                "hold": str(sub.hold) if sub.hold else None,
                "start": sub.start,
                **entry,
                "last_delivered_at": entry["last_delivered_at"].isoformat()
                if entry["last_delivered_at"]
                else None,
            }
        )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    click.echo(
        f"{'NAME':<14} {'STATE':<8} {'MODE':<12} {'DELIVERED':>9} {'WITHDRAWN':>9} {'HELD':>6} "
        f"{'SKIPPED':>8}  LAST DELIVERED"
    )
    for row in rows:
        click.echo(
            f"{row['name']:<14} {row['state']:<8} {row['mode']:<12} {row['delivered']:>9} "
            f"{row['withdrawn']:>9} {row['held']:>6} {row['skipped']:>8}  {row['last_delivered_at'] or '-'}"
        )


def _change(
    ctx: click.Context, name: str, action: str, reason: str | None, as_name: str | None, **values: Any
) -> Ledger:
    """Change a subscription and record the operator's action on rod.operations.v1."""
    subs = _subscriptions()
    if name not in subs:
        raise click.ClickException(f"no subscription {name!r}; known: {', '.join(subs)}")
    ledger = _ledger(_settings(ctx), subs)
    ledger.set_subscription(name, **values)
    record_cli_action(_settings(ctx), as_name, f"subscription-{action}", name, reason)
    return ledger


@subscription.command("pause")
@click.argument("name")
@click.option("--reason", default=None, help="Why (kept with the action).")
@as_option
@click.pass_context
def subscription_pause(ctx: click.Context, name: str, reason: str | None, as_name: str | None) -> None:
    """Stop a feed without losing its place: decisions go on, deliveries are held until resumed."""
    _change(ctx, name, "pause", reason, as_name, paused=True)
    click.echo(f"subscription {name} paused")


@subscription.command("resume")
@click.argument("name")
@click.option("--reason", default=None, help="Why (kept with the action).")
@as_option
@click.pass_context
def subscription_resume(ctx: click.Context, name: str, reason: str | None, as_name: str | None) -> None:
    """Resume a paused feed: what was held meanwhile is delivered (a deletion meanwhile: never)."""
    _change(ctx, name, "resume", reason, as_name, paused=False)
    click.echo(f"subscription {name} resumed")


@subscription.command("replay")
@click.argument("name")
@click.option("--reason", default=None, help="Why (kept with the action).")
@click.option("--no-wait", is_flag=True, help="Only ask for it; the running distributor does the replay.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Give up waiting after this.")
@as_option
@click.pass_context
def subscription_replay(
    ctx: click.Context, name: str, reason: str | None, no_wait: bool, timeout: float, as_name: str | None
) -> None:
    """Send a feed again from the start of the log; its decisions stay as they are, other feeds untouched."""
    settings = _settings(ctx)
    subs = _subscriptions()
    ledger = _ledger(settings, subs)
    if name in subs:
        with ledger.reading() as conn:
            state = ledger.states(conn)[name]
        if state.paused:
            raise click.ClickException(f"subscription {name} is paused: resume it first")
    bootstrap = _bootstrap(settings)
    _change(
        ctx, name, "replay", reason, as_name, mode="backfilling", backfill_owner=None, backfill_heartbeat=None
    )
    if no_wait:
        click.echo(f"subscription {name}: replay requested")
        return
    deadline = time.monotonic() + timeout
    distributor = Distributor(settings, bootstrap, subscriptions=list(subs.values()))
    try:
        sent = distributor.backfill(name, timeout)
    finally:
        distributor.close()
    if sent is not None:
        click.echo(f"subscription {name}: replayed, {sent} messages sent")
        return
    # a running distributor took it first: wait for it to finish
    while time.monotonic() < deadline:
        with ledger.reading() as conn:
            if ledger.states(conn)[name].mode == "live":
                click.echo(f"subscription {name}: replayed by the running distributor")
                return
        time.sleep(0.5)
    click.echo(f"subscription {name}: replay still under way after {timeout:g} s (another process has it)",
               err=True)
    sys.exit(1)


@click.group()
def feed() -> None:
    """Read a subscription's feed as its downstream organisation does."""


def _printable(record: dict[str, Any], show_person_numbers: bool) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, datetime | date):
            value = value.isoformat()
        if key in PERSON_FIELDS and isinstance(value, str) and not show_person_numbers:
            value = mask_person_number(value)
        out[key] = value
    return out


@feed.command("tail")
@click.argument("name")
@click.option("--max", "max_messages", type=int, default=None, help="Stop after this many distinct messages.")
@click.option(
    "--idle",
    type=float,
    default=2.0,
    show_default=True,
    help="Stop when nothing new arrived for this many seconds.",
)
@click.option("--show-person-numbers", is_flag=True, help="Print person numbers in full (masked by default).")
@click.pass_context
def feed_tail(
    ctx: click.Context, name: str, max_messages: int | None, idle: float, show_person_numbers: bool
) -> None:
    """Print a feed from its start, decoded and de-duplicated by delivery_id, one JSON object a line."""
    settings = _settings(ctx)
    subs = _subscriptions()
    if name not in subs:
        raise click.ClickException(f"no subscription {name!r}; known: {', '.join(subs)}")
    topic = settings.topic(subs[name].topic)
    codec = Codec()
    consumer = kafka.consumer(_bootstrap(settings), group_id=None)
    seen: set[str] = set()
    try:
        found = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        if not partitions:
            raise click.ClickException(f"feed topic {topic} does not exist (yet)")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            batch = consumer.poll(timeout_ms=200)
            if batch:
                quiet_since = time.monotonic()
            for records in batch.values():
                for record in records:
                    try:
                        _name, message = codec.decode(record.value)
                    except DecodeError as exc:
                        click.echo(
                            f"# partition {record.partition} offset {record.offset}: {exc.code}", err=True
                        )
                        continue
                    if message["delivery_id"] in seen:
                        continue
                    seen.add(message["delivery_id"])
                    click.echo(json.dumps(_printable(message, show_person_numbers)))
                    if max_messages is not None and len(seen) >= max_messages:
                        return
    finally:
        consumer.close()


@click.group()
def consumer() -> None:
    """Consumers of the HTTP feed: each has a token for one subscription's feed."""


@consumer.command("add")
@click.argument("name")
@click.option("--subscription", "subscription_name", required=True, help="The feed it may read.")
@as_option
@click.pass_context
def consumer_add(ctx: click.Context, name: str, subscription_name: str, as_name: str | None) -> None:
    """Add a consumer; prints its token as the last line (shown once, only a hash is kept)."""
    settings = _settings(ctx)
    subs = _subscriptions()
    try:
        token = FeedStore(_ledger(settings, subs)).add_consumer(name, subscription_name, set(subs))
    except ConsumerError as exc:
        raise click.ClickException(str(exc)) from None
    record_cli_action(settings, as_name, "consumer-add", name, f"consumer of {subscription_name}")
    click.echo(f"consumer {name} of {subscription_name} added; the token below is shown once")
    click.echo(token)


@consumer.command("ack")
@click.argument("name")
@click.option("--cursor", required=True, help="A cursor of the consumer's feed (GET .../messages).")
@click.pass_context
def consumer_ack(ctx: click.Context, name: str, cursor: str) -> None:
    """Acknowledge for consumer NAME everything on its feed up to and including CURSOR."""
    settings = _settings(ctx)
    subs = _subscriptions()
    feeds = FeedStore(_ledger(settings, subs))
    found = feeds.consumer(name)
    if found is None:
        raise click.ClickException(f"no consumer {name} (rod consumer add)")
    try:
        count = feeds.acknowledge(found, decode_cursor(found.subscription, cursor))
    except CursorError as exc:
        raise click.ClickException(f"{exc} ({found.subscription})") from None
    click.echo(f"{count} newly acknowledged on {found.subscription}")


COMMANDS = [distribute, subscription, feed, consumer]
