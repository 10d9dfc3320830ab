"""The audit service's projection: its own tables (audit_*), built only from its topics.

From rod.results.v1 it keeps every registration and deletion (a person number only as its
last three digits: the reports never need more), from rod.deliveries.v1 every delivery
receipt and from rod.extracts.v1 every issued extract. Each row is keyed by what it is
(position and event_id, delivery_id, extract_id) and inserted only if absent, so reading
a message twice changes nothing: the broker may lose the consumer offsets and the reader
then reads everything again.

The events' hash chain is checked as they arrive (`chain_check.py`); how far it is verified,
and any break, is stored in the same transaction as the rows. Reports only ever read events
up to the verified position, and none is made while an alert is open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from services.audit import metrics
from services.audit.chain_check import Break, ChainCheck, Link
from services.kernel.database import create_tables, make_engine, writing
from services.kernel.deadletters import DeadLetter, DeadLetterBook, add_missing_columns, deadletter_table
from services.kernel.logging import get_logger

log = get_logger("audit.projection")

metadata = MetaData()

events = Table(
    "audit_events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False),
    Column("kind", String(1), nullable=False),  # R registered, D deleted
    Column("result_id", String(36), nullable=False),
    Column("version", Integer, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),  # ms since the epoch
    Column("institution", String(8), nullable=False),
    Column("sector", String(3)),
    Column("programme_code", String(40)),
    Column("programme_name", String(200)),
    Column("diploma_number", String(40)),
    Column("diploma_date", String(10)),
    Column("person_kind", String(16)),
    Column("person_last3", String(3)),
    Column("registered_event_id", String(36)),
    Column("reason", String(40)),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("hash_ok", Boolean, nullable=False),
    Index("audit_events_kind_time", "kind", "recorded_at"),
    # Lookups go by result id first: a UUIDv7, so this index grows at its end; event ids are
    # UUIDv5 (random), and an index led by them costs a random page per insert.
    Index("audit_events_result", "result_id", "event_id"),
)

# A receipt's delivery_id is the UUIDv5 of (subscription, event_id, kind): keyed by those (result id
# first, see above), a receipt read twice is the same row.
deliveries = Table(
    "audit_deliveries",
    metadata,
    Column("result_id", String(36), primary_key=True),
    Column("event_id", String(36), primary_key=True),
    Column("subscription", String(100), primary_key=True),
    Column("kind", String(12), primary_key=True),  # DELIVERY | WITHDRAWAL | ACKNOWLEDGED
    Column("delivery_id", String(200), nullable=False),
    Column("institution", String(8), nullable=False),
    Column("delivered_at", BigInteger, nullable=False),  # ACKNOWLEDGED: when the consumer confirmed it
)

extracts = Table(
    "audit_extracts",
    metadata,
    Column("extract_id", String(200), primary_key=True),
    Column("result_id", String(36), primary_key=True),  # one row per result an extract shows
    Column("event_id", String(36), nullable=False),
    Column("institution", String(8), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Index("audit_extracts_result", "result_id", "event_id"),
)

chain_state = Table(
    "audit_chain",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # one row: 1
    Column("verified_through", BigInteger, nullable=False),
    Column("head_hash", LargeBinary, nullable=False),
    Column("head_recorded_at", BigInteger),
)

alerts = Table(
    "audit_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("position", BigInteger, nullable=False),
    Column("code", String(40), nullable=False),
    Column("detail", String(300), nullable=False),
    Column("raised_at", BigInteger, nullable=False),
    UniqueConstraint("position", "code", name="audit_alerts_position_code"),
)

offsets = Table(
    "audit_offsets",
    metadata,
    Column("topic", String(200), primary_key=True),  # base name, without the prefix
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("last_digest", LargeBinary),  # SHA-256 of the value before next_offset
)

published_periods = Table(
    "audit_published_periods",
    metadata,
    Column("period", String(7), primary_key=True),  # the claim: one row per period, ever
    Column("status", String(12), nullable=False),  # publishing | published
    Column("owner", String(100), nullable=False),
    Column("claimed_at", BigInteger, nullable=False),
    Column("published_at", BigInteger),
    Column("reports", Integer),
)

reports = Table(
    "audit_reports",
    metadata,
    Column("report_id", String(36), primary_key=True),
    Column("period", String(7), nullable=False, index=True),
    Column("scope", String(8), nullable=False),  # instellingscode or "national"
    Column("provisional", Boolean, nullable=False),
    Column("deletions", Integer, nullable=False),
    Column("sha256_csv", String(64), nullable=False),
    Column("sha256_json", String(64), nullable=False),
    Column("sha256_html", String(64), nullable=False),
    Column("generated_at", BigInteger, nullable=False),
)

# what the reader could not decode or act on (kernel/deadletters.py: the same columns everywhere)
deadletters = deadletter_table(metadata, "audit_deadletters")


# Rows travel as tuples in these column orders, straight to the driver's executemany: SQLAlchemy's
# per-row parameter handling cost more than the inserts themselves (bench/report.py).
EVENT_COLUMNS = ("position", "event_id", "kind", "result_id", "version", "recorded_at", "institution",
                 "sector", "programme_code", "programme_name", "diploma_number", "diploma_date",
                 "person_kind", "person_last3", "registered_event_id", "reason", "prev_hash", "hash",
                 "hash_ok")
DELIVERY_COLUMNS = ("result_id", "event_id", "subscription", "kind", "delivery_id", "institution",
                    "delivered_at")
EXTRACT_COLUMNS = ("extract_id", "result_id", "event_id", "institution", "issued_at")
_POSITION, _RECORDED_AT, _PREV_HASH, _HASH, _HASH_OK = 0, 5, 16, 17, 18


@dataclass
class Batch:
    """What one poll brought, decoded: rows for each table and where the reader got to."""

    events: list[tuple[Any, ...]] = field(default_factory=list)  # EVENT_COLUMNS
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)  # DELIVERY_COLUMNS
    extracts: list[tuple[Any, ...]] = field(default_factory=list)  # EXTRACT_COLUMNS
    ends: dict[tuple[str, int], tuple[int, bytes]] = field(default_factory=dict)  # next offset, digest
    letters: list[DeadLetter] = field(default_factory=list)  # recorded with the offsets they move past

    def __len__(self) -> int:
        return len(self.events) + len(self.deliveries) + len(self.extracts)

    def extend(self, later: Batch) -> None:
        """Take a later batch in (one transaction for both)."""
        self.events += later.events
        self.deliveries += later.deliveries
        self.extracts += later.extracts
        self.ends.update(later.ends)
        self.letters += later.letters


@dataclass(frozen=True)
class ChainStatus:
    """How far the chain is verified and what stops it."""

    verified: int
    head_recorded_at: int | None
    waiting_for: int | None
    breaks: list[Break]


class Projection:
    """The audit tables over one database URL, and the chain check that guards them."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, cache_mib=64)  # the id indexes take random inserts
        create_tables(metadata, self.engine)
        add_missing_columns(self.engine, deadletters)
        self.deadletters = DeadLetterBook(self.engine, deadletters, "audit")
        self.check = self._load_check()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One write transaction (serialised on SQLite); commits on clean exit."""
        with writing(self.engine) as conn:
            yield conn

    def _insert_sql(self, table: Table, columns: tuple[str, ...]) -> str:
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        return (f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT DO NOTHING")

    def insert_if_absent(self, table: Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    # --- applying a batch ------------------------------------------------------------------

    def apply(self, batch: Batch, now_ms: int) -> list[Break]:
        """Store a batch, check the chain over it and move the offsets, in one transaction."""
        try:
            with self.writing() as conn:
                found = self._conflicts(conn, batch.events)
                for table, columns, rows in ((events, EVENT_COLUMNS, batch.events),
                                             (deliveries, DELIVERY_COLUMNS, batch.deliveries),
                                             (extracts, EXTRACT_COLUMNS, batch.extracts)):
                    if rows:
                        conn.exec_driver_sql(self._insert_sql(table, columns), rows)
                for row in batch.events:
                    conflict = self.check.offer(Link(row[_POSITION], row[_PREV_HASH], row[_HASH],
                                                     row[_HASH_OK], row[_RECORDED_AT]))
                    if conflict:
                        found.append(conflict)
                if found and self.check.broken is None:
                    self.check.broken = min(found, key=lambda b: b.position)  # stop verifying here
                found += self.check.advance()
                self._store_check(conn)
                for b in found:
                    conn.execute(self.insert_if_absent(alerts).values(
                        position=b.position, code=b.code, detail=b.detail, raised_at=now_ms))
                self.deadletters.record(conn, batch.letters)
                self._store_offsets(conn, batch.ends)
        except Exception:
            self.check = self._load_check()  # the transaction is gone: so is what it verified
            raise
        metrics.projected(batch)
        for b in found:
            log.error("audit_chain_broken", position=b.position, code=b.code, detail=b.detail)
        return found

    def _conflicts(self, conn: Connection, rows: list[dict[str, Any]]) -> list[Break]:
        """Events at positions already stored with other contents (a forged or altered copy)."""
        if not rows:
            return []
        mine = {r[_POSITION]: r[_HASH] for r in rows}
        stored = conn.execute(
            select(events.c.position, events.c.hash).where(events.c.position.in_(list(mine)))
        ).all()
        return [Break(p, "POSITION_CONFLICT", "two different events claim this position")
                for p, h in stored if bytes(h) != mine[p]]

    def _store_check(self, conn: Connection) -> None:
        values = {"verified_through": self.check.verified, "head_hash": self.check.head_hash,
                  "head_recorded_at": self.check.head_at}
        if conn.execute(chain_state.update().where(chain_state.c.id == 1).values(**values)).rowcount == 0:
            conn.execute(chain_state.insert().values(id=1, **values))

    def _store_offsets(self, conn: Connection, ends: dict[tuple[str, int], tuple[int, bytes]]) -> None:
        for (topic, partition), (next_offset, digest) in ends.items():
            values = {"next_offset": next_offset, "last_digest": digest}
            updated = conn.execute(offsets.update().where(
                offsets.c.topic == topic, offsets.c.partition == partition).values(**values))
            if updated.rowcount == 0:
                conn.execute(offsets.insert().values(topic=topic, partition=partition, **values))

    def _load_check(self) -> ChainCheck:
        with self.engine.connect() as conn:
            head = conn.execute(select(chain_state).where(chain_state.c.id == 1)).first()
            check = ChainCheck()
            if head is not None:
                check.verified, check.head_hash = head.verified_through, bytes(head.head_hash)
                check.head_at = head.head_recorded_at
            first = conn.execute(select(alerts).order_by(alerts.c.position, alerts.c.id).limit(1)).first()
            if first is not None:
                check.broken = Break(first.position, first.code, first.detail)
            for r in conn.execute(
                select(events.c.position, events.c.prev_hash, events.c.hash, events.c.hash_ok,
                       events.c.recorded_at).where(events.c.position > check.verified)
            ):
                check.pending[r.position] = Link(r.position, bytes(r.prev_hash), bytes(r.hash), r.hash_ok,
                                                 r.recorded_at)
        check.advance()  # rows stored ahead of a gap that a crash left unverified
        return check

    # --- reading -------------------------------------------------------------------------------

    def status(self) -> ChainStatus:
        """The chain as verified now, with every alert raised so far."""
        with self.engine.connect() as conn:
            raised = conn.execute(select(alerts).order_by(alerts.c.position, alerts.c.id)).all()
        return ChainStatus(self.check.verified, self.check.head_at, self.check.waiting_for,
                           [Break(a.position, a.code, a.detail) for a in raised])

    def stored_offsets(self) -> dict[tuple[str, int], tuple[int, bytes | None]]:
        """Per (topic base name, partition): the next offset to read and the digest before it."""
        with self.engine.connect() as conn:
            return {(r.topic, r.partition): (r.next_offset, r.last_digest and bytes(r.last_digest))
                    for r in conn.execute(select(offsets))}

    def first_recorded_at(self) -> int | None:
        """When the earliest verified event was recorded (ms), if any."""
        with self.engine.connect() as conn:
            return conn.execute(select(events.c.recorded_at).where(events.c.position == 1)).scalar()

    def counts(self) -> dict[str, int]:
        """Rows per table (operators and tests)."""
        with self.engine.connect() as conn:
            return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for t in (events, deliveries, extracts)}
