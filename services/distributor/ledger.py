"""The distributor's delivery ledger: its own tables (distributor_*), SQLite or PostgreSQL.

One row per (subscription, event): UNIQUE(subscription, event_id) and every insert is
insert-if-absent, so a repeat of an event can never add or change a decision. A row's
`state` only moves forward: held → pending → published, held → cancelled; skipped rows
never change. `payload` keeps the exact feed message bytes, so a lost feed is republished
from here with the same delivery_ids and no new decisions.

`distributor_cursors` holds, per reader and partition of rod.results.v1, the next offset to
decide and a digest of the record before it. It is advanced by compare-and-set in the same
transaction as the decisions, so two processes that briefly hold the same partition (a
rebalance) cannot both record a batch; the digest tells whether the topic is still the one
the cursor points into (a broker that lost its data gets the events again at other offsets).

The HTTP feed (`feed.py`) is served from here too: when a row is first confirmed on its feed
it gets the next `feed_seq` of its subscription, taken from `distributor_feed_heads` under
that row's lock, so positions commit in order with no gap a reader could pass before it
fills; a re-send or a republish never gives a row a second position. An acknowledgement
moves the head's `acked_seq` forward and stamps the rows it covers; their ACKNOWLEDGED
receipts go out from the distributor's loop (`ack_published` false until they did).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from services.distributor.decide import HELD, PENDING, PUBLISHED
from services.kernel.clock import now_millis as now
from services.kernel.clock import utc
from services.kernel.database import ROW_ID, create_tables, make_engine, writing
from services.kernel.deadletters import DeadLetterBook, add_missing_columns, deadletter_table
from services.kernel.tokens import mark_tables

metadata = MetaData()

subscriptions = Table(
    "distributor_subscriptions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("mode", String(12), nullable=False),  # live | backfilling (new or replayed)
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("backfill_owner", String(40)),
    Column("backfill_heartbeat", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

decisions = Table(
    "distributor_decisions",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("subscription", String(64), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("result_id", String(36), nullable=False),
    Column("institution", String(4), nullable=False),
    Column("state", String(10), nullable=False),  # held | pending | published | cancelled | skipped
    Column("kind", String(10)),  # DELIVERY | WITHDRAWAL; null when skipped
    Column("reason", String(20)),
    Column("delivery_id", String(36)),
    Column("payload", LargeBinary),  # the feed message as sent (held: as it will be, re-stamped on release)
    Column("feed_json", LargeBinary),  # the same message as the HTTP feed serves it (JSON, no cursor)
    Column("partition", Integer, nullable=False),  # of the event on rod.results.v1
    Column("due_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("feed_seq", BigInteger),  # position on the HTTP feed, from the first confirmed send on
    Column("acknowledged_at", DateTime(timezone=True)),  # the consumer confirmed it (HTTP feed)
    Column("ack_published", Boolean),  # false: its ACKNOWLEDGED receipt is still to be sent
    UniqueConstraint("subscription", "event_id", name="uq_distributor_decisions_subscription_event"),
    # small partial indexes: only the rows still on their way (a query must name the same state)
    Index(
        "ix_distributor_decisions_pending",
        "partition",
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    ),
    Index(
        "ix_distributor_decisions_held",
        "due_at",
        sqlite_where=text("state = 'held'"),
        postgresql_where=text("state = 'held'"),
    ),
    # covers the counts per subscription that operators read (rod topics, the console): an
    # index-only scan instead of reading every row (2.6-3.9 s -> 0.46 s at 3M decisions)
    Index("ix_distributor_decisions_counts", "subscription", "state", "kind", "delivered_at"),
    Index("ix_distributor_decisions_feed", "subscription", "feed_seq", unique=True),
    Index(
        "ix_distributor_decisions_ack_waiting",
        "id",
        sqlite_where=text("ack_published = false"),
        postgresql_where=text("ack_published = false"),
    ),
)

feed_heads = Table(
    "distributor_feed_heads",
    metadata,
    Column("subscription", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),  # the newest feed position handed out
    Column("acked_seq", BigInteger, nullable=False),  # acknowledged up to and including
    Column("acked_at", DateTime(timezone=True)),
    Column("acked_by", String(80)),  # the consumer that acknowledged last
)

consumers = Table(
    "distributor_consumers",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("subscription", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_fetch_at", DateTime(timezone=True)),
)
token_marks = mark_tables(metadata, "distributor")  # revocations and last uses of consumer tokens

cursors = Table(
    "distributor_cursors",
    metadata,
    Column("reader", String(80), primary_key=True),  # main | backfill:<subscription>
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("last_digest", String(32)),  # of the record at next_offset - 1
)

topic_offsets = Table(
    "distributor_topic_offsets",
    metadata,
    Column("topic", String(120), primary_key=True),  # base name, without ROD_TOPIC_PREFIX
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("last_offset", BigInteger, nullable=False),
)

republish = Table(
    "distributor_republish",
    metadata,
    Column("topic", String(120), primary_key=True),  # a republish from the ledger is under way
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

# the same columns as every service's dead letters (services/kernel/deadletters.py)
deadletters = deadletter_table(metadata, "distributor_deadletters")


@dataclass(frozen=True)
class SubscriptionState:
    name: str
    paused: bool
    mode: str
    started_at: datetime


@dataclass
class Row:
    """A ledger row as the publisher needs it."""

    id: int
    subscription: str
    event_id: str
    result_id: str
    institution: str
    state: str
    kind: str | None
    reason: str | None
    delivery_id: str | None
    payload: bytes | None
    partition: int
    due_at: datetime | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None = None
    ack_published: bool | None = None


ROW_COLUMNS = [decisions.c[name] for name in Row.__dataclass_fields__]
# written out, not bound: only then may SQLite (and a generic PostgreSQL plan) use the partial indexes
IS_PENDING = decisions.c.state == literal_column("'pending'")
IS_HELD = decisions.c.state == literal_column("'held'")
ACK_WAITING = decisions.c.ack_published == literal_column("false")
_INSERT_COLUMNS = (
    "subscription",
    "event_id",
    "result_id",
    "institution",
    "state",
    "kind",
    "reason",
    "delivery_id",
    "payload",
    "feed_json",
    "partition",
    "due_at",
    "delivered_at",
    "decided_at",
)
_STAMPS = {"due_at", "delivered_at", "decided_at"}


def _row(raw: Any) -> Row:
    row = Row(*raw)
    row.payload = bytes(row.payload) if row.payload is not None else None
    row.due_at, row.delivered_at = utc(row.due_at), utc(row.delivered_at)
    row.acknowledged_at = utc(row.acknowledged_at)
    return row


class Ledger:
    """The ledger's tables and the few statements the distributor runs on them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        create_tables(metadata, self.engine)
        add_missing_columns(self.engine, deadletters)  # a ledger made before letters could be closed
        if add_missing_columns(self.engine, decisions):  # a ledger made before the HTTP feed
            for index in decisions.indexes:
                index.create(self.engine, checkfirst=True)
        self.dialect = self.engine.dialect.name
        self.deadletters = DeadLetterBook(self.engine, deadletters, "distributor")

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One write transaction (serialised on SQLite); commits on clean exit."""
        with writing(self.engine) as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def insert_if_absent(self, table: Table) -> Any:
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    # subscriptions

    def sync_subscriptions(self, names_and_starts: Sequence[tuple[str, str]]) -> None:
        """Add configured subscriptions the ledger does not know yet.

        A new `start = "now"` subscription is live at once; a new `start = "beginning"` one
        backfills from the start of the log, unless nothing was ever decided (a new system).
        """
        with self.writing() as conn:
            known = set(conn.execute(select(subscriptions.c.name)).scalars())
            fresh = conn.execute(select(decisions.c.id).limit(1)).first() is None
            moment = now()
            for name, _start in names_and_starts:
                conn.execute(
                    self.insert_if_absent(feed_heads).values(subscription=name, last_seq=0, acked_seq=0)
                )
            for name, start in names_and_starts:
                if name in known:
                    continue
                mode = "live" if start == "now" or fresh else "backfilling"
                conn.execute(
                    self.insert_if_absent(subscriptions).values(
                        name=name, paused=False, mode=mode, started_at=moment, updated_at=moment
                    )
                )
                if mode == "backfilling":
                    conn.execute(cursors.delete().where(cursors.c.reader == backfill_reader(name)))

    def states(self, conn: Connection, lock: bool = False) -> dict[str, SubscriptionState]:
        """Every subscription's state; `lock` holds them (shared) until the transaction ends."""
        query = select(
            subscriptions.c.name, subscriptions.c.paused, subscriptions.c.mode, subscriptions.c.started_at
        )
        if lock and self.dialect == "postgresql":
            query = query.with_for_update(read=True)
        return {
            r.name: SubscriptionState(r.name, r.paused, r.mode, utc(r.started_at))
            for r in conn.execute(query)
        }

    def set_subscription(self, name: str, **values: Any) -> None:
        """Change a subscription (pause, resume, replay); the operator's action is recorded by the caller."""
        with self.writing() as conn:
            conn.execute(
                update(subscriptions).where(subscriptions.c.name == name).values(updated_at=now(), **values)
            )
            if values.get("mode") == "backfilling":
                conn.execute(cursors.delete().where(cursors.c.reader == backfill_reader(name)))

    def claim_backfill(self, name: str, owner: str, stale_after: float = 30.0) -> bool:
        """Take (or keep) the backfill of `name`; another owner's claim expires when it stops beating."""
        moment = now()
        with self.writing() as conn:
            claimed = conn.execute(
                update(subscriptions)
                .where(
                    subscriptions.c.name == name,
                    subscriptions.c.mode == "backfilling",
                    or_(
                        subscriptions.c.backfill_owner.is_(None),
                        subscriptions.c.backfill_owner == owner,
                        subscriptions.c.backfill_heartbeat < moment - timedelta(seconds=stale_after),
                    ),
                )
                .values(backfill_owner=owner, backfill_heartbeat=moment)
            ).rowcount
        return claimed == 1

    def finish_backfill(self, name: str, owner: str, reader_cursors: dict[int, int]) -> bool:
        """Make `name` live once its backfill has reached the main reader on every partition."""
        with self.writing() as conn:
            query = select(subscriptions.c.backfill_owner).where(subscriptions.c.name == name)
            if self.dialect == "postgresql":
                query = query.with_for_update()  # waits for main batches that read it as backfilling
            if conn.execute(query).scalar_one_or_none() != owner:
                return False
            main = {
                r.partition: r.next_offset
                for r in conn.execute(
                    select(cursors.c.partition, cursors.c.next_offset).where(cursors.c.reader == "main")
                )
            }
            if any(reader_cursors.get(p, 0) < offset for p, offset in main.items()):
                return False
            conn.execute(
                update(subscriptions)
                .where(subscriptions.c.name == name)
                .values(mode="live", backfill_owner=None, backfill_heartbeat=None, updated_at=now())
            )
            return True

    # cursors

    def cursors(self, reader: str, partitions: Iterable[int]) -> dict[int, tuple[int, str | None]]:
        """(next offset, digest of the record before it) per partition; created at 0 when new."""
        wanted = list(partitions)
        with self.writing() as conn:
            for p in wanted:
                conn.execute(self.insert_if_absent(cursors).values(reader=reader, partition=p, next_offset=0))
            rows = conn.execute(
                select(cursors.c.partition, cursors.c.next_offset, cursors.c.last_digest).where(
                    cursors.c.reader == reader, cursors.c.partition.in_(wanted)
                )
            )
            return {r.partition: (r.next_offset, r.last_digest) for r in rows}

    def advance(
        self,
        conn: Connection,
        reader: str,
        partition: int,
        expected: int,
        next_offset: int,
        digest: str | None,
    ) -> bool:
        """Compare-and-set the cursor; False when another process moved it first."""
        return (
            conn.execute(
                update(cursors)
                .where(
                    cursors.c.reader == reader,
                    cursors.c.partition == partition,
                    cursors.c.next_offset == expected,
                )
                .values(next_offset=next_offset, last_digest=digest)
            ).rowcount
            == 1
        )

    # decisions

    def existing(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Row]:
        """Stored decisions for these (subscription, event_id) pairs."""
        by_sub: dict[str, list[str]] = {}
        for sub, event_id in keys:
            by_sub.setdefault(sub, []).append(event_id)
        found: dict[tuple[str, str], Row] = {}
        for sub, ids in by_sub.items():
            for start in range(0, len(ids), 900):
                rows = conn.execute(
                    select(*ROW_COLUMNS).where(
                        decisions.c.subscription == sub, decisions.c.event_id.in_(ids[start : start + 900])
                    )
                )
                for raw in rows:
                    row = _row(raw)
                    found[(row.subscription, row.event_id)] = row
        return found

    def insert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert decisions; one that is already there stays as it is (insert-if-absent)."""
        if not rows:
            return
        if self.dialect != "sqlite":
            conn.execute(self.insert_if_absent(decisions), rows)
            return
        # the hot path on SQLite: the driver's executemany with the timestamps formatted once
        # each, as SQLAlchemy stores them, instead of a bind processor per value
        stamps: dict[datetime, str] = {}

        def stamp(moment: datetime | None) -> str | None:
            if moment is None:
                return None
            text = stamps.get(moment)
            if text is None:
                text = stamps[moment] = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            return text

        columns = _INSERT_COLUMNS
        conn.exec_driver_sql(
            f"INSERT INTO distributor_decisions ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT DO NOTHING",
            [tuple(stamp(r[c]) if c in _STAMPS else r[c] for c in columns) for r in rows],
        )

    def cancel_held(self, conn: Connection, subscription: str, event_id: str) -> bool:
        """held → cancelled; False when it is no longer held (released meanwhile)."""
        return (
            conn.execute(
                update(decisions)
                .where(
                    decisions.c.subscription == subscription,
                    decisions.c.event_id == event_id,
                    decisions.c.state == HELD,
                )
                .values(state="cancelled")
            ).rowcount
            == 1
        )

    def mark_published(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> None:
        """pending → published for these (subscription, event_id) pairs, once they are on the feed;
        each gets the next positions of its subscription's HTTP feed, in decision order."""
        by_sub: dict[str, list[str]] = {}
        for sub, event_id in keys:
            by_sub.setdefault(sub, []).append(event_id)
        for sub, ids in sorted(by_sub.items()):  # heads locked in one order: no deadlocks
            fresh: list[int] = []
            for start in range(0, len(ids), 900):
                fresh += conn.execute(
                    select(decisions.c.id).where(
                        decisions.c.subscription == sub,
                        decisions.c.event_id.in_(ids[start : start + 900]),
                        IS_PENDING,
                    )
                ).scalars()
            if not fresh:
                continue
            fresh.sort()
            first = self._take_positions(conn, sub, len(fresh))
            conn.execute(
                update(decisions)
                .where(decisions.c.id == bindparam("row_id"), IS_PENDING)
                .values(state=PUBLISHED, feed_seq=bindparam("seq")),
                [{"row_id": row_id, "seq": first + i} for i, row_id in enumerate(fresh)],
            )

    def _take_positions(self, conn: Connection, subscription: str, count: int) -> int:
        """Reserve `count` feed positions; the head's row lock holds later takers until we commit."""
        conn.execute(
            self.insert_if_absent(feed_heads).values(subscription=subscription, last_seq=0, acked_seq=0)
        )
        last = conn.execute(
            update(feed_heads)
            .where(feed_heads.c.subscription == subscription)
            .values(last_seq=feed_heads.c.last_seq + count)
            .returning(feed_heads.c.last_seq)
        ).scalar_one()
        return int(last) - count + 1

    def rows(self, conn: Connection, *where: Any, order: bool = True) -> list[Row]:
        query = select(*ROW_COLUMNS).where(*where)
        return [_row(r) for r in conn.execute(query.order_by(decisions.c.id) if order else query)]

    def pending(self, partitions: Iterable[int] | None = None) -> list[Row]:
        """Decided rows not yet confirmed on their feed (a crash or an outage left them)."""
        where = [IS_PENDING]
        if partitions is not None:
            where.append(decisions.c.partition.in_(list(partitions)))
        with self.reading() as conn:  # sorted here: ORDER BY id in SQL would pick a scan of the table
            return sorted(self.rows(conn, *where, order=False), key=lambda r: r.id)

    def due(self, moment: datetime, partitions: Iterable[int], running: Iterable[str]) -> list[Row]:
        """Held rows of running subscriptions whose time has come (by partition of origin)."""
        wanted = set(running)
        with self.reading() as conn:  # the subscription is filtered here: in SQL it would steer the plan
            rows = self.rows(
                conn,
                IS_HELD,
                decisions.c.due_at <= moment,
                decisions.c.partition.in_(list(partitions)),
                order=False,
            )
        return sorted((r for r in rows if r.subscription in wanted), key=lambda r: r.id)

    def release(
        self, conn: Connection, row: Row, payload: bytes, feed_json: bytes, delivered_at: datetime
    ) -> bool:
        """held → pending with the message stamped; False when a deletion cancelled it first."""
        return (
            conn.execute(
                update(decisions)
                .where(decisions.c.id == row.id, decisions.c.state == HELD)
                .values(state=PENDING, payload=payload, feed_json=feed_json, delivered_at=delivered_at)
            ).rowcount
            == 1
        )

    def delivered(self, subscription: str | None = None, page: int = 5000) -> Iterator[list[Row]]:
        """Every row that is or may be on a feed, in decision order, a page at a time (republish)."""
        where = [decisions.c.state.in_((PENDING, PUBLISHED)), decisions.c.kind.is_not(None)]
        if subscription:
            where.append(decisions.c.subscription == subscription)
        after = 0
        while True:
            with self.reading() as conn:
                query = select(*ROW_COLUMNS).where(*where, decisions.c.id > after)
                rows = [_row(r) for r in conn.execute(query.order_by(decisions.c.id).limit(page))]
            if not rows:
                return
            yield rows
            after = rows[-1].id

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per subscription: delivered, withdrawn, held, skipped, cancelled, last_delivered_at."""
        out: dict[str, dict[str, Any]] = {}
        query = select(
            decisions.c.subscription,
            decisions.c.state,
            decisions.c.kind,
            func.count(),
            func.max(decisions.c.delivered_at),
        ).group_by(decisions.c.subscription, decisions.c.state, decisions.c.kind)
        with self.reading() as conn:
            for sub, state, kind, count, last in conn.execute(query):
                entry = out.setdefault(
                    sub,
                    {
                        "delivered": 0,
                        "withdrawn": 0,
                        "held": 0,
                        "skipped": 0,
                        "cancelled": 0,
                        "last_delivered_at": None,
                    },
                )
                if state in (PENDING, PUBLISHED):
                    entry["delivered" if kind == "DELIVERY" else "withdrawn"] += count
                    last = utc(last)
                    if last and (entry["last_delivered_at"] is None or last > entry["last_delivered_at"]):
                        entry["last_delivered_at"] = last
                elif state in entry or state == "skipped":
                    entry["held" if state == HELD else state] += count
        return out

    # acknowledgements (HTTP feed)

    def acknowledged_waiting(self, limit: int = 5000) -> list[Row]:
        """Acknowledged rows whose ACKNOWLEDGED receipt has not been sent yet, oldest first."""
        with self.reading() as conn:
            query = select(*ROW_COLUMNS).where(ACK_WAITING).order_by(decisions.c.id).limit(limit)
            return [_row(r) for r in conn.execute(query)]

    def mark_acks_published(self, conn: Connection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 900):
            conn.execute(update(decisions).where(decisions.c.id.in_(ids[start : start + 900]))
                         .values(ack_published=True))

    # offsets of what the distributor wrote

    def record_offsets(self, conn: Connection, highest: dict[tuple[str, int], int]) -> None:
        """Remember the highest offset written per topic partition (sorted: no deadlocks)."""
        for (topic, partition), offset in sorted(highest.items()):
            done = conn.execute(
                update(topic_offsets)
                .where(topic_offsets.c.topic == topic, topic_offsets.c.partition == partition)
                .values(
                    last_offset=case(
                        (topic_offsets.c.last_offset < offset, offset), else_=topic_offsets.c.last_offset
                    )
                )
            ).rowcount
            if not done:
                conn.execute(
                    self.insert_if_absent(topic_offsets).values(
                        topic=topic, partition=partition, last_offset=offset
                    )
                )

    def recorded_offsets(self, topic: str) -> dict[int, int]:
        with self.reading() as conn:
            return {
                r.partition: r.last_offset
                for r in conn.execute(
                    select(topic_offsets.c.partition, topic_offsets.c.last_offset).where(
                        topic_offsets.c.topic == topic
                    )
                )
            }

    def begin_republish(self, topic: str) -> None:
        """Mark `topic` as being rebuilt from the ledger and forget what it held."""
        with self.writing() as conn:
            conn.execute(self.insert_if_absent(republish).values(topic=topic, requested_at=now()))
            conn.execute(topic_offsets.delete().where(topic_offsets.c.topic == topic))

    def end_republish(self, topic: str) -> None:
        with self.writing() as conn:
            conn.execute(republish.delete().where(republish.c.topic == topic))

    def republishing(self) -> set[str]:
        with self.reading() as conn:
            return set(conn.execute(select(republish.c.topic)).scalars())

    # dead letters

    def unpublished_deadletters(self) -> list[Any]:
        return self.deadletters.unpublished()

    def mark_deadletters_published(self, conn: Connection, origins: Sequence[tuple[str, int, int]]) -> None:
        t = deadletters
        for topic, partition, offset in origins:
            conn.execute(
                update(t)
                .where(and_(t.c.topic == topic, t.c.partition == partition, t.c.offset == offset))
                .values(published=True)
            )

    def deadletter_list(self) -> list[Any]:
        return self.deadletters.list()


def backfill_reader(subscription: str) -> str:
    """The cursor name of a subscription's backfill (or replay) reader."""
    return f"backfill:{subscription}"
