"""The registrar's event store and current state, one SQLAlchemy implementation for SQLite
and PostgreSQL (chosen by URL).

Appends are serialised: a writer holds the chain head (SQLite: BEGIN IMMEDIATE;
PostgreSQL: SELECT ... FOR UPDATE on the one head row) from its first read to its commit.
That keeps the hash chain linear and makes positions commit in order, so the relay can
never see position N+1 before N. Event rows are only ever INSERTed; nothing in this code
base UPDATEs or DELETEs them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.kernel import chain
from services.kernel.codec import Codec
from services.kernel.database import ROW_ID, create_tables, make_engine, writing
from services.kernel.deadletters import deadletter_table
from services.kernel.identifiers import event_id_for  # noqa: F401 - the registrar's ids, used from here
from services.kernel.logging import get_logger
from services.kernel.tokens import mark_tables

log = get_logger("registrar.store")

metadata = MetaData()

chain_head = Table(
    "registrar_chain_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

events = Table(
    "registrar_events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    # no index of its own: event_id is derived from (stream_id, version), which is unique
    Column("event_id", String(36), nullable=False),
    Column("stream_id", String(36), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("institution", String(4), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    UniqueConstraint("stream_id", "version", name="uq_registrar_events_stream_version"),
)

results = Table(
    "registrar_results",
    metadata,
    Column("result_id", String(36), primary_key=True),
    # keyed hash of (institution, person number, diploma number): finds a result by its
    # identity without storing the person number outside the event payload
    Column("identity_key", String(64), nullable=False, unique=True),
    Column("institution", String(4), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(10), nullable=False),  # registered | deleted
    Column("registered_event_id", String(36), nullable=False),
    Column("data_digest", String(64), nullable=False),
    Column("position", BigInteger, nullable=False),
)

# each result's diploma number (fixed for the result's life: it is part of its identity), so an
# institution finds its results by diploma number and pages through them newest first (the Loket)
diplomas = Table(
    "registrar_diplomas",
    metadata,
    Column("result_id", String(36), primary_key=True),
    Column("institution", String(4), nullable=False),
    Column("diploma_number", String(20), nullable=False),
    Index("ix_registrar_diplomas_newest", "institution", "result_id"),
    Index("ix_registrar_diplomas_number", "institution", "diploma_number", "result_id"),
)

institutions = Table(
    "registrar_institutions",
    metadata,
    Column("code", String(4), primary_key=True),
    Column("name", Text, nullable=False),
    Column("sectors", String(40), nullable=False),
    Column("funded", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tokens = Table(
    "registrar_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("institution", String(4), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
token_marks = mark_tables(metadata, "registrar")  # revocations and last uses of those tokens

meta = Table(
    "registrar_meta",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

# The log as an RFC 9162 Merkle tree (services/registrar/transparency/): the hash of every
# complete subtree, written once each by the tree builder after the events are stored; the
# tree's size moves in the same transaction as the nodes it adds, so a reader (and a builder
# killed at any point) sees the old tree or the new one, never a half-built one.
log_nodes = Table(
    "registrar_log_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

log_tree = Table(
    "registrar_log_tree",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
)

# every signed checkpoint, kept; published on rod.checkpoints.v1 after it is stored (an outbox)
log_checkpoints = Table(
    "registrar_log_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("partition", Integer),  # where it was published; NULL: not yet
    Column("offset", BigInteger),
    # the outbox's reads find the few unpublished rows without walking every checkpoint
    Index("ix_registrar_log_checkpoints_unpublished", "partition", "tree_size"),
)

DIPLOMAS_INDEXED = "diplomas_indexed"  # registrar_meta: how far the diploma rows were filled

relay_progress = Table(
    "registrar_relay",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("published_position", BigInteger, nullable=False),
)

relay_offsets = Table(
    "registrar_relay_offsets",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("last_offset", BigInteger, nullable=False),
)

# what the receipt reader (impact.py) could not decode (kernel/deadletters.py: the same columns everywhere)
deadletters = deadletter_table(metadata, "registrar_deadletters")

# each `rod verify` verdict, so operators (the console) see when the chain was last checked and how it went
verifications = Table(
    "registrar_verifications",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("checked", BigInteger, nullable=False),  # the last position verified
    Column("broken_position", BigInteger),
    Column("code", String(40)),
    Column("reason", Text),
)


def new_result_id() -> str:
    """A new result id: a UUIDv7 (RFC 9562), 48 bits of Unix milliseconds then 74 random bits.

    It reveals nothing but when the result was first registered (which its event says
    anyway), and new ids sort after old ones, so the indexes keyed by result id grow at
    their end instead of at random pages (measured: a third off the cost of an import's inserts).
    """
    millis = time.time_ns() // 1_000_000
    return _uuid_text(millis.to_bytes(6, "big") + os.urandom(10), 7)


def _uuid_text(digest: bytes, version: int) -> str:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | (version << 4)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class ResultState:
    """The registrar's current state of one result (a row of registrar_results)."""

    result_id: str
    identity_key: str
    institution: str
    version: int
    status: str
    registered_event_id: str
    data_digest: str
    position: int


@dataclass
class StoredEvent:
    position: int
    event_id: str
    stream_id: str
    version: int
    event_type: str
    payload: bytes
    hash: bytes


@dataclass
class Appender:
    """The open write transaction: holds the chain head, buffers events and state changes."""

    conn: Connection
    codec: Codec
    position: int
    head_hash: bytes
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    touched: dict[str, ResultState] = field(default_factory=dict)  # by result_id
    stored_ids: set[str] = field(default_factory=set)  # result_ids that already have a row
    new_diplomas: dict[str, dict[str, str]] = field(default_factory=dict)  # rows for `diplomas`

    def _load(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if row.result_id not in self.touched:
                self.stored_ids.add(row.result_id)
                self.touched[row.result_id] = ResultState(**row._mapping)

    def states_by_identity(self, keys: Iterable[str]) -> dict[str, ResultState]:
        """Current states for these identity keys, including changes made in this transaction."""
        wanted = set(keys)
        known = {s.identity_key for s in self.touched.values()}
        missing = list(wanted - known)
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            self._load(self.conn.execute(select(results).where(results.c.identity_key.in_(chunk))))
        return {s.identity_key: s for s in self.touched.values() if s.identity_key in wanted}

    def state_by_id(self, result_id: str) -> ResultState | None:
        if result_id not in self.touched:
            self._load(self.conn.execute(select(results).where(results.c.result_id == result_id)))
        return self.touched.get(result_id)

    def append(self, name: str, record: dict[str, Any], state: ResultState) -> StoredEvent:
        """Seal `record` as the next event and make `state` the result's current state."""
        self.position += 1
        record["position"] = self.position
        payload, digest = chain.seal(self.codec, name, record, self.head_hash)
        self.head_hash = digest
        self.event_rows.append(
            {
                "position": self.position,
                "event_id": record["event_id"],
                "stream_id": record["result_id"],
                "version": record["version"],
                "event_type": name,
                "institution": record["institution"],
                "recorded_at": record["recorded_at"],
                "payload": payload,
                "hash": digest,
            }
        )
        state.position = self.position
        if state.result_id not in self.stored_ids and "diploma_number" in record:
            self.new_diplomas.setdefault(state.result_id, {
                "result_id": state.result_id, "institution": record["institution"],
                "diploma_number": record["diploma_number"]})
        self.touched[state.result_id] = state
        return StoredEvent(
            self.position, record["event_id"], record["result_id"], record["version"], name,
            payload, digest,
        )

    def flush(self) -> None:
        """Write everything buffered; the caller's transaction commits it."""
        if not self.event_rows:
            return
        self.conn.execute(insert(events), self.event_rows)
        changed = [vars(s) for s in self.touched.values() if s.position > self.first_position()]
        inserts = [s for s in changed if s["result_id"] not in self.stored_ids]
        updates = [{**s, "b_result_id": s["result_id"]} for s in changed if s["result_id"] in self.stored_ids]
        if inserts:
            self.conn.execute(insert(results), inserts)
            self.conn.execute(insert(diplomas), [self.new_diplomas[s["result_id"]] for s in inserts])
        if updates:
            self.conn.execute(
                update(results)
                .where(results.c.result_id == bindparam("b_result_id"))
                .values(
                    version=bindparam("version"),
                    status=bindparam("status"),
                    registered_event_id=bindparam("registered_event_id"),
                    data_digest=bindparam("data_digest"),
                    position=bindparam("position"),
                ),
                updates,
            )
        self.conn.execute(
            update(chain_head)
            .where(chain_head.c.id == 1)
            .values(position=self.position, hash=self.head_hash)
        )

    def first_position(self) -> int:
        """The head position this transaction started from."""
        return self.event_rows[0]["position"] - 1 if self.event_rows else self.position


class EventStore:
    """Append-only event store plus the registrar's current-state tables."""

    def __init__(self, url: str, codec: Codec | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.codec = codec or Codec()
        create_tables(metadata, self.engine)
        self._seed_singletons()
        self._index_diplomas()

    def _index_diplomas(self) -> None:
        """Fill registrar_diplomas from the events, for a database made before that table.

        Each page's rows and the position they reach commit together (registrar_meta
        "diplomas_indexed"), so a kill mid-fill resumes where it stopped instead of leaving the
        older results unsearchable; "done" once the walk ended. Appends made meanwhile index
        their own diploma rows, and rows another process put there first are left alone.
        """
        with self.engine.connect() as conn:
            mark = conn.execute(select(meta.c.value).where(meta.c.key == DIPLOMAS_INDEXED)).scalar()
            if mark == b"done":
                return
            if mark is None and conn.execute(select(results.c.result_id).limit(1)).first() is None:
                self._mark_diplomas(conn, b"done")  # nothing registered yet: every append indexes itself
                conn.commit()
                return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        after, indexed = int(mark or 0), 0
        while True:
            with self.engine.connect() as conn:
                page = conn.execute(select(events.c.position, events.c.payload)
                                    .where(events.c.position > after, events.c.version == 1)
                                    .order_by(events.c.position).limit(5000)).all()
            rows = []
            for row in page:
                name, record = self.codec.decode(row.payload)
                if name == "ResultRegistered":
                    rows.append({"result_id": record["result_id"], "institution": record["institution"],
                                 "diploma_number": record["diploma_number"]})
            done = len(page) < 5000
            if page:
                after = page[-1].position
            with writing(self.engine) as conn:
                if rows:
                    conn.execute(dialect.insert(diplomas).on_conflict_do_nothing(index_elements=["result_id"]),
                                 rows)
                self._mark_diplomas(conn, b"done" if done else str(after).encode())
            indexed += len(rows)
            if done:
                break
        log.info("diploma_numbers_indexed", results=indexed)

    @staticmethod
    def _mark_diplomas(conn: Connection, value: bytes) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(meta).values(key=DIPLOMAS_INDEXED, value=value)
                     .on_conflict_do_update(index_elements=["key"], set_={"value": value}))

    def _seed_singletons(self) -> None:
        for table, row in (
            (chain_head, {"id": 1, "position": 0, "hash": chain.GENESIS}),
            (relay_progress, {"id": 1, "published_position": 0}),
            (log_tree, {"id": 1, "size": 0}),
        ):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(select(table.c.id)).first() is None:
                        conn.execute(insert(table).values(**row))
            except IntegrityError:
                pass  # another process seeded it first

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def appending(self) -> Iterator[Appender]:
        """One serialised write transaction; commits on clean exit, rolls back otherwise."""
        with writing(self.engine) as conn:
            head = conn.execute(
                select(chain_head.c.position, chain_head.c.hash)
                .where(chain_head.c.id == 1)
                .with_for_update()
            ).one()
            appender = Appender(conn, self.codec, head.position, head.hash)
            yield appender
            appender.flush()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def secret(self, key: str, make: Any) -> bytes:
        """A per-installation secret kept in the database (made on first use)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(meta.c.value).where(meta.c.key == key)).first()
            if row:
                return bytes(row.value)
        value = make()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(meta).values(key=key, value=value))
        except IntegrityError:
            pass
        with self.engine.connect() as conn:
            return bytes(conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one())

    def last_position(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(chain_head.c.position).where(chain_head.c.id == 1)).scalar_one()

    def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        """Events with a position above `position`, in position order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    events.c.position, events.c.event_id, events.c.stream_id, events.c.version,
                    events.c.event_type, events.c.payload, events.c.hash,
                )
                .where(events.c.position > position)
                .order_by(events.c.position)
                .limit(limit)
            )
            return [StoredEvent(*row) for row in rows]

    def results_page(
        self, institution: str, diploma_number: str | None = None, before: str | None = None, limit: int = 25,
    ) -> list[Any]:
        """`institution`'s results newest first (result ids are UUIDv7), `limit` of them from below
        `before`, only those of `diploma_number` if given: rows of result_id, diploma_number, status,
        version. One bounded index range scan (registrar_diplomas' indexes)."""
        query = (select(diplomas.c.result_id, diplomas.c.diploma_number, results.c.status, results.c.version)
                 .join(results, results.c.result_id == diplomas.c.result_id)
                 .where(diplomas.c.institution == institution))
        if diploma_number is not None:
            query = query.where(diplomas.c.diploma_number == diploma_number)
        if before is not None:
            query = query.where(diplomas.c.result_id < before)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(diplomas.c.result_id.desc()).limit(limit)))

    def latest_registrations(self, result_ids: list[str]) -> dict[str, StoredEvent]:
        """Each result's newest ResultRegistered event (at most a page of ids)."""
        if not result_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events.c.position, events.c.event_id, events.c.stream_id, events.c.version,
                       events.c.event_type, events.c.payload, events.c.hash)
                .where(events.c.stream_id.in_(result_ids), events.c.event_type == "ResultRegistered")
                .order_by(events.c.version))
            return {row.stream_id: StoredEvent(*row) for row in rows}

    def stream(self, result_id: str) -> list[StoredEvent]:
        """All events of one result, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    events.c.position, events.c.event_id, events.c.stream_id, events.c.version,
                    events.c.event_type, events.c.payload, events.c.hash,
                )
                .where(events.c.stream_id == result_id)
                .order_by(events.c.version)
            )
            return [StoredEvent(*row) for row in rows]


class SerialisedStore(EventStore):
    """The event store with one writer at a time per process.

    Appends are serialised by the database anyway (BEGIN IMMEDIATE, FOR UPDATE); taking a
    process lock first lets the API's threads queue here instead of in SQLite's busy handler,
    which polls with sleeps of up to 100 ms and made p99 latency ten times worse.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._write_lock = threading.Lock()

    @contextmanager
    def appending(self) -> Iterator[Appender]:
        with self._write_lock, super().appending() as tx:
            yield tx
