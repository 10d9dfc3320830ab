"""The one-screen view of the chain (`rod topics --json`), for the CLI, the console and /metrics.

HTTP feed consumers are part of it: per consumer its last fetch, the subscription's last
acknowledgement and how many deliveries (and for how long) wait for one.

`gather(settings, bootstrap)` answers from broker metadata (topic partitions and end offsets,
consumer groups, their members and committed offsets) and the services' own tables, read
only: the registrar's chain head, relay progress and log (tree size, the newest checkpoint),
the distributor's ledger, the dead letters. It never reads a topic whole: at most the single
record at the distributor's cursor of a partition, to date the oldest event it has not read
yet. With `sample=True` it also records the groups' readings in operations_group_samples, the
window their status is judged over (services.operations.status), so a one-shot `rod topics`
can judge as well.

`Monitor` is `rod up`'s sampler: it gathers every ROD_MONITOR_INTERVAL_SECONDS and keeps the
last overview in memory for /metrics.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError
from sqlalchemy import delete, func, insert, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from services.distributor import ledger as ledger_tables
from services.distributor.decide import PAUSED
from services.distributor.ledger import IS_HELD, Ledger, backfill_reader
from services.distributor.subscriptions import Subscription
from services.distributor.subscriptions import load as load_subscriptions
from services.kernel import kafka
from services.kernel.clock import utc as _utc
from services.kernel.codec import Codec
from services.kernel.database import make_engine
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.operations import status as judging
from services.operations.store import OperationsStore, group_samples
from services.registrar.store import chain_head, events, log_tree, relay_offsets, relay_progress
from services.registrar.transparency import progress as log_progress

log = get_logger("operations.overview")

RESULTS = "rod.results.v1"
RELAY_GROUP = "(relay)"  # the relay's published position, judged like a group's commits
KEEP_WINDOWS = 3  # samples older than this many windows are pruned


class Unreachable(RuntimeError):
    """The broker or a service's database cannot be reached; the message names which (no detail
    that could carry personal data)."""


def window_seconds() -> float:
    """The window a group's status is judged over (ROD_LAG_WINDOW_SECONDS, default 60)."""
    return float(os.environ.get("ROD_LAG_WINDOW_SECONDS") or judging.DEFAULT_WINDOW)


def interval_seconds() -> float:
    """How often `rod up`'s monitor gathers (ROD_MONITOR_INTERVAL_SECONDS, default 5)."""
    return float(os.environ.get("ROD_MONITOR_INTERVAL_SECONDS") or 5.0)


class _Admin(KafkaAdminClient):
    """The local broker answers DescribeGroups with authorized-operation bits kafka-python 3.0
    cannot map (ValueError: 15 is not a valid ACLOperation), and kafka-python always asks for
    them; nothing here needs them, so they are dropped before that mapping."""

    def _process_acl_operations(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.pop("authorized_operations", None)
        return obj


# engines and stores are made once per URL: the monitor gathers every few seconds
_engines: dict[str, Engine] = {}
_ledgers: dict[str, Ledger] = {}
_stores: dict[str, OperationsStore] = {}
_lock = threading.Lock()


def _engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def _exists(url: str) -> bool:
    """False for a SQLite file that is not there (connecting would create it: this is read only)."""
    if not url.startswith("sqlite"):
        return True
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return path in ("", ":memory:") or Path(path).exists()


@contextmanager
def _database(service: str) -> Iterator[None]:
    """Turns a database fault into Unreachable naming the service's database."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise Unreachable(f"the {service} database cannot be reached ({type(exc).__name__})") from None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# the broker


@dataclass
class _Broker:
    approximate: bool = False
    partitions: dict[str, list[int]] = field(default_factory=dict)  # cluster topic -> partitions
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)  # group -> offsets
    members: dict[str, int] = field(default_factory=dict)


def _read_broker(settings: Settings, bootstrap: str) -> _Broker:
    wanted = {settings.topic(name) for name in kafka.TOPICS}
    seen = _Broker()
    try:
        client = _Admin(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    except (KafkaError, OSError):
        raise Unreachable(f"the broker at {bootstrap} does not answer") from None
    try:
        # Tansu reports a high watermark short by up to one batch per partition (architecture.md)
        seen.approximate = str(client.describe_cluster().get("cluster_id") or "").startswith("tansu")
        present = sorted(wanted & set(client.list_topics()))
        for described in client.describe_topics(present) if present else []:
            seen.partitions[described["name"]] = sorted(p["partition_index"] for p in described["partitions"])
        specs = {TopicPartition(t, p): OffsetSpec.LATEST for t, ps in seen.partitions.items() for p in ps}
        if specs:
            for tp, found in client.list_partition_offsets(specs).items():
                seen.ends[(tp.topic, tp.partition)] = max(found.offset, 0)
        groups = sorted({g["group_id"] for g in client.list_groups()})
        offsets = client.list_group_offsets({g: None for g in groups}) if groups else {}
        for group, committed in offsets.items():
            ours = {
                (tp.topic, tp.partition): max(o.offset, 0)
                for tp, o in committed.items()
                if tp.topic in wanted
            }
            if ours:
                seen.committed[group] = ours
        if seen.committed:
            for group, described in client.describe_groups(sorted(seen.committed)).items():
                seen.members[group] = len(described.get("members") or [])
    except (KafkaError, OSError):
        raise Unreachable(f"the broker at {bootstrap} does not answer") from None
    finally:
        client.close()
    return seen


# the registrar's tables


@dataclass
class _Registrar:
    stored: int = 0
    published: int = 0
    relay_ends: dict[int, int] = field(default_factory=dict)  # partition -> end the relay wrote
    next_recorded_at: datetime | None = None  # of the first stored event not yet published
    log: log_progress.LogProgress | None = None  # None: a store from before the log's tables


def _read_registrar(settings: Settings) -> tuple[_Registrar, Engine]:
    url = settings.database_urls["registrar"]
    if not _exists(url):
        raise Unreachable("the registrar database does not exist (has `rod up` run on this data dir?)")
    engine = _engine(url)
    out = _Registrar()
    with _database("registrar"), engine.connect() as conn:
        if not inspect(conn).has_table(chain_head.name):
            raise Unreachable("the registrar database holds no event store (has `rod up` run here?)")
        out.stored = conn.execute(select(chain_head.c.position)).scalar_one_or_none() or 0
        out.published = conn.execute(select(relay_progress.c.published_position)).scalar_one_or_none() or 0
        out.relay_ends = {r.partition: r.last_offset + 1 for r in conn.execute(select(relay_offsets))}
        if out.stored > out.published:
            query = select(events.c.recorded_at).where(events.c.position == out.published + 1)
            out.next_recorded_at = _utc(conn.execute(query).scalar_one_or_none())
        if inspect(conn).has_table(log_tree.name):
            out.log = log_progress.read(conn)
    return out, engine


def _stored_since(engine: Engine, moment: datetime) -> int:
    """Stored events recorded at or after `moment` (what a `start = "now"` subscription decides)."""
    with _database("registrar"), engine.connect() as conn:
        return conn.execute(select(func.count()).where(events.c.recorded_at >= moment)).scalar_one()


# the distributor's ledger


def _ledger(settings: Settings) -> Ledger | None:
    """The ledger, or None while the distributor has not made its tables (nothing decided yet)."""
    url = settings.database_urls["distributor"]
    if not _exists(url):
        return None
    with _lock:
        ledger = _ledgers.get(url)
    if ledger is None:
        with _database("distributor"):
            if not inspect(_engine(url)).has_table(ledger_tables.subscriptions.name):
                return None
            ledger = Ledger(url)  # its tables are there: creating them again writes nothing
        with _lock:
            ledger = _ledgers.setdefault(url, ledger)
    return ledger


@dataclass
class _Paused:
    count: int = 0
    oldest: datetime | None = None  # recorded_at of the oldest event held because of the pause


def _paused_holds(ledger: Ledger, conn: Connection, subs: dict[str, Subscription]) -> dict[str, _Paused]:
    """Per subscription: rows held because it is paused, and when the oldest event was recorded.

    decide.py sets due_at = recorded_at + hold for a DELIVERY and recorded_at for a WITHDRAWAL.
    """
    query = (
        select(ledger_tables.decisions.c.subscription, ledger_tables.decisions.c.kind, func.count(),
               func.min(ledger_tables.decisions.c.due_at))
        .where(IS_HELD, ledger_tables.decisions.c.reason == PAUSED)
        # naming the subscriptions lets SQLite seek (subscription, 'held') in the counts index: without
        # them it scanned that whole index (0.44 s at 3M decisions) for the GROUP BY's order
        .where(ledger_tables.decisions.c.subscription.in_(sorted(subs)))
        .group_by(ledger_tables.decisions.c.subscription, ledger_tables.decisions.c.kind)
    )
    out: dict[str, _Paused] = {}
    for name, kind, count, due in conn.execute(query):
        entry = out.setdefault(name, _Paused())
        entry.count += count
        due = _utc(due)
        if due is None:
            continue
        hold = subs[name].hold if name in subs and kind == "DELIVERY" else timedelta(0)
        recorded = due - hold
        if entry.oldest is None or recorded < entry.oldest:
            entry.oldest = recorded
    return out


def _cursors(ledger: Ledger, conn: Connection) -> dict[str, dict[int, int]]:
    found: dict[str, dict[int, int]] = {}
    query = select(ledger_tables.cursors.c.reader, ledger_tables.cursors.c.partition,
                   ledger_tables.cursors.c.next_offset)
    for reader, partition, offset in conn.execute(query):
        found.setdefault(reader, {})[partition] = offset
    return found


def _written_ends(ledger: Ledger, conn: Connection) -> dict[tuple[str, int], int]:
    """Per base topic and partition: the end of what the distributor knows it wrote."""
    table = ledger_tables.topic_offsets
    return {
        (r.topic, r.partition): r.last_offset + 1
        for r in conn.execute(select(table.c.topic, table.c.partition, table.c.last_offset))
    }


class _Unread:
    """recorded_at of the record at a reader's cursor, read once per (partition, offset)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.codec = Codec()
        self.known: dict[tuple[int, int], datetime | None] = {}

    def oldest(self, at: dict[int, int]) -> datetime | None:
        wanted = {p: o for p, o in at.items() if (p, o) not in self.known}
        if wanted:
            try:
                consumer = kafka.probe(self.bootstrap)
                try:
                    found = kafka.read_each(consumer, self.topic, wanted, timeout=2.0)
                finally:
                    consumer.close()
            except (KafkaError, OSError):
                raise Unreachable(f"the broker at {self.bootstrap} does not answer") from None
            for p, o in wanted.items():
                self.known[(p, o)] = self._recorded_at(found.get(p))
        moments = [m for p, o in at.items() if (m := self.known[(p, o)]) is not None]
        return min(moments, default=None)

    def _recorded_at(self, record: Any) -> datetime | None:
        if record is None:
            return None
        try:
            _name, event = self.codec.decode(record.value)
        except Exception:  # noqa: BLE001 - not an event (a dead letter's business): no date from it
            return None
        return _utc(event.get("recorded_at"))


def _subscriptions(
    settings: Settings, bootstrap: str, registrar: _Registrar, registrar_engine: Engine,
    broker: _Broker, moment: datetime,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], int]]:
    """Each configured subscription with its state, counts and pending (exact, from the stores)."""
    configured = {s.name: s for s in load_subscriptions()}
    ledger = _ledger(settings)
    states: dict[str, Any] = {}
    counts: dict[str, dict[str, Any]] = {}
    paused: dict[str, _Paused] = {}
    cursors: dict[str, dict[int, int]] = {}
    written: dict[tuple[str, int], int] = {}
    if ledger is not None:
        with _database("distributor"):
            with ledger.reading() as conn:
                states = ledger.states(conn)
                paused = _paused_holds(ledger, conn, configured)
                cursors = _cursors(ledger, conn)
                written = _written_ends(ledger, conn)
            counts = ledger.counts()
    results_topic = settings.topic(RESULTS)
    ends = {p: max(broker.ends.get((results_topic, p), 0), registrar.relay_ends.get(p, 0))
            for p in broker.partitions.get(results_topic, [])}
    unread = _Unread(bootstrap, results_topic)
    out = []
    for name, sub in configured.items():
        state = states.get(name)
        entry = {"delivered": 0, "withdrawn": 0, "held": 0, "skipped": 0, "cancelled": 0,
                 "last_delivered_at": None, **counts.get(name, {})}
        held_paused = paused.get(name, _Paused())
        decided = sum(entry[k] for k in ("delivered", "withdrawn", "held", "skipped", "cancelled"))
        if state is None:  # not known to the ledger yet: it decides from its start once it is
            applicable = registrar.stored if sub.start == "beginning" else 0
        elif sub.start == "now":
            applicable = _stored_since(registrar_engine, state.started_at)
        else:
            applicable = registrar.stored
        undecided = max(applicable - decided, 0)
        pending = undecided + held_paused.count
        oldest = held_paused.oldest
        if undecided:
            reader = backfill_reader(name) if state is not None and state.mode == "backfilling" else "main"
            at = cursors.get(reader, {})
            behind = {p: at.get(p, 0) for p, end in ends.items() if at.get(p, 0) < end}
            candidates = [unread.oldest(behind) if behind else None, registrar.next_recorded_at]
            if state is not None and sub.start == "now":  # it decides nothing recorded before it began
                candidates = [max(c, state.started_at) if c else None for c in candidates]
            for found in candidates:
                if found is not None and (oldest is None or found < oldest):
                    oldest = found
        age = max((moment - oldest).total_seconds(), 0.0) if pending and oldest else None
        out.append({
            "name": name,
            "state": "paused" if state is not None and state.paused else "running",
            "delivered": entry["delivered"],
            "withdrawn": entry["withdrawn"],
            "held": max(entry["held"] - held_paused.count, 0),  # the hold window's, not the pause's
            "skipped": entry["skipped"],
            "last_delivered_at": _iso(_utc(entry["last_delivered_at"])),
            "pending": pending,
            "pending_age_seconds": round(age, 3) if age is not None else None,
        })
    return out, {(settings.topic(base), p): end for (base, p), end in written.items()}


def _consumers(settings: Settings) -> list[dict[str, Any]]:
    """Each HTTP feed consumer: last fetch, last acknowledgement and what waits for one."""
    from services.distributor.feed import FeedStore

    ledger = _ledger(settings)
    if ledger is None:
        return []
    with _database("distributor"):
        found = FeedStore(ledger).status()
    for entry in found:
        for key in ("last_fetch_at", "last_acknowledged_at"):
            entry[key] = _iso(entry[key])
        for key in ("acknowledgement_age_seconds", "oldest_unacknowledged_age_seconds"):
            entry[key] = round(entry[key], 3) if entry[key] is not None else None
    return found


# the window of samples


def _history(
    store: OperationsStore, since: float
) -> dict[tuple[str, str, int], list[judging.Sample]]:
    found: dict[tuple[str, str, int], list[judging.Sample]] = {}
    t = group_samples.c
    with _database("operations"), store.reading() as conn:
        query = select(t.group_id, t.topic, t.partition, t.at, t.committed, t.lag).where(t.at >= since)
        for group, topic, partition, at, committed, lag in conn.execute(query):
            found.setdefault((group, topic, partition), []).append(judging.Sample(at, committed, lag))
    return found


def _record(
    store: OperationsStore, readings: dict[tuple[str, str, int], judging.Sample], prune_before: float
) -> None:
    rows = [
        {"group_id": g, "topic": t, "partition": p, "at": s.at, "committed": s.committed, "lag": s.lag}
        for (g, t, p), s in readings.items()
    ]
    with _database("operations"), store.writing() as conn:
        if rows:
            conn.execute(insert(group_samples), rows)
        conn.execute(delete(group_samples).where(group_samples.c.at < prune_before))


def _operations(settings: Settings) -> OperationsStore:
    url = settings.database_urls["operations"]
    with _lock:
        store = _stores.get(url)
    if store is None:
        with _database("operations"):
            store = OperationsStore(url)
        with _lock:
            store = _stores.setdefault(url, store)
    return store


# the whole view


def gather(settings: Settings, bootstrap: str, *, sample: bool = True) -> dict[str, Any]:
    """The `rod topics --json` object: topics, relay, log, groups, subscriptions, deadletters.

    Raises Unreachable naming the broker or the database that did not answer.
    """
    from services.operations import deadletters  # a sibling module that reads every service's table

    started = time.time()
    moment = datetime.fromtimestamp(started, UTC)
    window = window_seconds()
    broker = _read_broker(settings, bootstrap)
    registrar, registrar_engine = _read_registrar(settings)
    subscriptions, written_ends = _subscriptions(
        settings, bootstrap, registrar, registrar_engine, broker, moment
    )
    consumers = _consumers(settings)
    try:
        letters = deadletters.counts(settings)
    except SQLAlchemyError as exc:
        raise Unreachable(f"a dead-letter database cannot be reached ({type(exc).__name__})") from None

    topics = [
        {
            "name": settings.topic(base),
            "partitions": len(broker.partitions.get(settings.topic(base), [])),
            "messages": sum(broker.ends.get((settings.topic(base), p), 0)
                            for p in broker.partitions.get(settings.topic(base), [])),
            "approximate": broker.approximate,
            **({} if settings.topic(base) in broker.partitions else {"missing": True}),
        }
        for base in kafka.TOPICS
    ]

    # a partition's end: what the broker reports, or further where the writer recorded more
    # (the local broker reports short; the relay and the distributor record what they wrote)
    results_topic = settings.topic(RESULTS)
    best_end = dict(broker.ends)
    recorded = {(results_topic, p): end for p, end in registrar.relay_ends.items()}
    recorded.update(written_ends)
    for key, end in recorded.items():
        if key[0] in broker.partitions:
            best_end[key] = max(best_end.get(key, 0), end)

    readings: dict[tuple[str, str, int], judging.Sample] = {}
    for group, committed in broker.committed.items():
        for (topic, partition), offset in committed.items():
            lag = max(best_end.get((topic, partition), 0) - offset, 0)
            readings[(group, topic, partition)] = judging.Sample(started, offset, lag)
    relay_key = (RELAY_GROUP, results_topic, -1)
    relay_lag = max(registrar.stored - registrar.published, 0)
    readings[relay_key] = judging.Sample(started, registrar.published, relay_lag)

    store = _operations(settings)
    history = _history(store, started - KEEP_WINDOWS * window)
    if sample:
        _record(store, readings, started - KEEP_WINDOWS * window)

    groups = []
    for group, committed in sorted(broker.committed.items()):
        members = broker.members.get(group, 0)
        # a member the local broker reports may be long dead (it never expires them): unknown
        judged_members = None if broker.approximate and members else members
        for topic in sorted({t for t, _p in committed}):
            parts = []
            for (t, partition) in sorted(k for k in committed if k[0] == topic):
                current = readings[(group, t, partition)]
                parts.append({
                    "partition": partition,
                    "committed": current.committed,
                    "lag": current.lag,
                    "status": judging.judge(history.get((group, t, partition), []), current, window,
                                            judged_members),
                })
            groups.append({
                "group": group,
                "topic": topic,
                "status": judging.worst([p["status"] for p in parts]),
                "lag": sum(p["lag"] for p in parts),
                "members": members,
                "partitions": parts,
            })

    relay_now = readings[relay_key]
    relay = {
        "stored_position": registrar.stored,
        "published_position": registrar.published,
        "lag": relay_now.lag,
        "status": judging.judge(history.get(relay_key, []), relay_now, window, None),
    }
    return {
        "topics": topics,
        "relay": relay,
        "log": registrar.log.view(moment) if registrar.log else None,
        "groups": groups,
        "subscriptions": subscriptions,
        "consumers": consumers,
        "deadletters": letters,
        "window_seconds": window,
        "gathered_at": moment.isoformat(),
    }


def needs_attention(overview: dict[str, Any], pending_age_limit: float | None = None) -> list[str]:
    """What an operator should look at (empty: all is well); free of personal data."""
    limit = pending_age_limit if pending_age_limit is not None else float(
        os.environ.get("ROD_PENDING_AGE_ALERT_SECONDS") or 300.0
    )
    ack_limit = float(os.environ.get("ROD_ACK_AGE_ALERT_SECONDS") or 1800.0)
    found = []
    relay = overview["relay"]
    if relay.get("status", judging.OK) != judging.OK:
        found.append(f"relay {relay['status']}: {relay['lag']} stored events not published")
    found += log_attention(overview.get("log"))
    for g in overview["groups"]:
        if g["status"] != judging.OK:
            found.append(f"group {g['group']} on {g['topic']}: {g['status']}, lag {g['lag']}")
    for s in overview["subscriptions"]:
        if s["state"] == "paused":
            found.append(f"subscription {s['name']} paused, {s['pending']} pending")
        elif (s.get("pending_age_seconds") or 0) > limit:
            found.append(f"subscription {s['name']}: oldest pending event waited "
                         f"{s['pending_age_seconds']:.0f} s")
    for c in overview.get("consumers", []):
        if (c.get("oldest_unacknowledged_age_seconds") or 0) > ack_limit:
            found.append(f"consumer {c['name']} of {c['subscription']}: {c['unacknowledged']} deliveries "
                         f"unacknowledged, the oldest for {c['oldest_unacknowledged_age_seconds']:.0f} s")
    if overview["deadletters"].get("open"):
        found.append(f"{overview['deadletters']['open']} dead letters open")
    return found


def log_attention(log_view: dict[str, Any] | None) -> list[str]:
    """What needs attention in the overview's `log` object: checkpoints that stopped while events wait."""
    if not log_view or log_view.get("status") != log_progress.STALLED:
        return []
    signed = log_view.get("checkpoint_age_seconds")
    newest = f"the newest was signed {signed:.0f} s ago" if signed is not None else "none was signed yet"
    return [f"log: {log_view['unsigned_events']} stored events in no signed checkpoint, {newest} "
            f"(is the log component running?)"]


class Monitor:
    """`rod up`'s sampler: gathers every `interval` seconds; `latest` is the last overview."""

    def __init__(self, settings: Settings, bootstrap: str, interval: float | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.interval = interval if interval is not None else interval_seconds()
        self.latest: dict[str, Any] | None = None
        self.latest_at: float | None = None  # Unix time of `latest`

    def run(self, stop: threading.Event) -> None:
        """Gather until `stop` is set; a broker or database away is logged and tried again."""
        while not stop.is_set():
            try:
                self.latest = gather(self.settings, self.bootstrap)
                self.latest_at = time.time()
            except Unreachable as exc:
                log.warning("monitor_unreachable", what=str(exc))
            except Exception as exc:  # noqa: BLE001 - the monitor must not take `rod up` down
                log.error("monitor_failed", error=type(exc).__name__)
            stop.wait(self.interval)
