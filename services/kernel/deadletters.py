"""Dead letters: what a consuming service could not process, kept in its own table and
published on rod.deadletter.v1.

Every consumer (distributor, audit, the registrar's receipt reader) uses this one module:
the same columns (`deadletter_table`), the same reasons and the same headers. A reason is
an error code plus a FIXED message per code, never text taken from the record or from an
exception's message, so no person number can reach a reason, a header or a log line.

Order of work: record the letter in the same transaction as the consumer's own progress
(cursor or offsets), publish after, then mark it published; what a crash leaves
unpublished is published again on start. Transient faults (database or broker away) are
never dead letters: `is_transient` tells the loops which exceptions to retry instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from services.kernel import kafka
from services.kernel.clock import now_millis as now
from services.kernel.database import ROW_ID, writing
from services.kernel.settings import Settings

TOPIC = "rod.deadletter.v1"
OPEN, REPLAYED, DISCARDED = "open", "replayed", "discarded"

# A fixed message per code: what went wrong, in words that never come from the record.
MESSAGES = {
    "NOT_SINGLE_OBJECT": "the value is not an Avro single-object message",
    "SCHEMA_UNKNOWN": "written with a schema this service does not know (yet)",
    "BODY_UNREADABLE": "the Avro body does not match its writer schema",
    "EVENT_TYPE_UNKNOWN": "a record type this topic does not carry",
    "EVENT_INCOMPLETE": "a field this service needs is missing",
    "RECORD_UNEXPECTED": "a record type this topic does not carry",
    "PROCESSING_FAILED": "the service could not act on this record",
}


def deadletter_table(metadata: MetaData, name: str) -> Table:
    """The dead-letter table of one service (the same columns for every service)."""
    return Table(
        name,
        metadata,
        Column("id", ROW_ID, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("topic", String(120), nullable=False),  # base name, without ROD_TOPIC_PREFIX
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
        Column("key", LargeBinary),
        Column("value", LargeBinary),
        Column("error_class", String(120), nullable=False),
        Column("error_code", String(40), nullable=False),
        Column("error_message", Text, nullable=False),  # fixed per code: free of personal data
        Column("attempt", Integer, nullable=False),
        Column("status", String(10), nullable=False),  # open | replayed | discarded
        Column("published", Boolean, nullable=False),
        Column("closed_at", DateTime(timezone=True)),
        Column("closed_by", String(80)),
        Column("close_reason", Text),
        UniqueConstraint("topic", "partition", "offset", name=f"uq_{name}_origin"),
    )


def is_transient(exc: BaseException) -> bool:
    """Database or broker unreachable: retried with backoff, never a dead letter."""
    return isinstance(exc, DBAPIError | KafkaError | OSError)


class Failed(Exception):
    """Processing failed again, as a service's own loop records it (the reason is kept as is)."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"{letter.error_code}: {letter.error_message}")
        self.letter = letter


def reason(exc: BaseException) -> tuple[str, str, str]:
    """(exception class, code, fixed message) of a failure; nothing of the record's content."""
    if isinstance(exc, Failed):
        return exc.letter.error_class, exc.letter.error_code, exc.letter.error_message
    code = getattr(exc, "code", None)
    if not isinstance(code, str):
        head, sep, _rest = str(exc).partition(":")
        code = head if sep and head.isupper() and head.replace("_", "").isalpha() else "PROCESSING_FAILED"
    message = MESSAGES.get(code) or f"{type(exc).__name__} while processing the record"
    if code == "PROCESSING_FAILED":
        message = f"{type(exc).__name__}: {MESSAGES['PROCESSING_FAILED']}"
    return f"{type(exc).__module__}.{type(exc).__qualname__}"[:120], code[:40], message


@dataclass
class DeadLetter:
    """A record a service could not decode or act on, with where it came from."""

    topic: str  # base name
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    error_code: str
    error_message: str
    attempt: int = 1

    def headers(self, cluster_topic: str, service: str) -> list[tuple[str, bytes]]:
        """Kafka Connect's dead-letter header names, plus rod.service and rod.attempt."""
        return [
            ("__connect.errors.topic", cluster_topic.encode()),
            ("__connect.errors.partition", str(self.partition).encode()),
            ("__connect.errors.offset", str(self.offset).encode()),
            ("__connect.errors.exception.class.name", self.error_class.encode()),
            ("__connect.errors.exception.message", f"{self.error_code}: {self.error_message}".encode()),
            ("rod.service", service.encode()),
            ("rod.attempt", str(self.attempt).encode()),
        ]

    @property
    def origin(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


def dead_letter(topic: str, record: Any, exc: BaseException) -> DeadLetter:
    """A dead letter for a consumer record; the reason is a code and a fixed message."""
    cls, code, message = reason(exc)
    return DeadLetter(topic, record.partition, record.offset, record.key, record.value, cls, code, message)


def from_row(row: Any) -> DeadLetter:
    return DeadLetter(
        row.topic,
        row.partition,
        row.offset,
        None if row.key is None else bytes(row.key),
        None if row.value is None else bytes(row.value),
        row.error_class,
        row.error_code,
        row.error_message,
        row.attempt,
    )


def send(
    producer: Any, cluster_topic: str, letter: DeadLetter, origin_cluster_topic: str, service: str
) -> Any:
    """Send one letter on rod.deadletter.v1 (key and value the original bytes); the future."""
    return producer.send(
        cluster_topic,
        key=letter.key,
        value=letter.value or b"",
        headers=letter.headers(origin_cluster_topic, service),
    )


def add_missing_columns(engine: Engine, table: Table) -> bool:
    """Tables made before some (nullable) columns existed get them: no data moves. True when
    columns were added."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in present and c.nullable]
    if not missing:
        return False
    with writing(engine) as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
    return True


class DeadLetterBook:
    """One service's dead letters in its own table."""

    def __init__(self, engine: Engine, table: Table, service: str) -> None:
        self.engine = engine
        self.table = table
        self.service = service

    def _insert_if_absent(self) -> Any:
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(self.table).on_conflict_do_nothing(
            index_elements=["topic", "partition", "offset"]
        )

    def record(self, conn: Connection, letters: Iterable[DeadLetter]) -> None:
        """Insert-if-absent, in the caller's transaction (with the consumer's own progress)."""
        rows = [
            {
                "at": now(),
                "status": OPEN,
                "published": False,
                "topic": x.topic,
                "partition": x.partition,
                "offset": x.offset,
                "key": x.key,
                "value": x.value,
                "error_class": x.error_class,
                "error_code": x.error_code,
                "error_message": x.error_message,
                "attempt": x.attempt,
            }
            for x in letters
        ]
        if rows:
            conn.execute(self._insert_if_absent(), rows)

    def unpublished(self) -> list[DeadLetter]:
        with self.engine.connect() as conn:
            query = select(self.table).where(self.table.c.published.is_(False)).order_by(self.table.c.id)
            return [from_row(r) for r in conn.execute(query)]

    def mark_published(self, conn: Connection | None, letters: Sequence[DeadLetter]) -> None:
        """Mark these letters (by origin) published; in `conn` or a transaction of its own."""
        if not letters:
            return
        if conn is None:
            with writing(self.engine) as own:
                self.mark_published(own, letters)
            return
        t = self.table
        for x in letters:
            conn.execute(
                update(t)
                .where(and_(t.c.topic == x.topic, t.c.partition == x.partition, t.c.offset == x.offset))
                .values(published=True)
            )

    def publish_waiting(self, settings: Settings, bootstrap: str) -> int:
        """Send the letters not yet on rod.deadletter.v1, check every send, then mark them published.

        A broker that is away raises; the letters stay unpublished and the next call sends them.
        """
        letters = self.unpublished()
        if not letters:
            return 0
        producer = kafka.producer(bootstrap, max_block_ms=10_000)
        try:
            topic = settings.topic(TOPIC)
            futures = [send(producer, topic, x, settings.topic(x.topic), self.service) for x in letters]
            producer.flush(timeout=15)
            for future in futures:
                future.get(timeout=0)
        finally:
            producer.close(timeout=5)
        self.mark_published(None, letters)
        return len(letters)

    def list(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(self.table).order_by(self.table.c.id)))

    def get(self, number: int) -> Any | None:
        with self.engine.connect() as conn:
            return conn.execute(select(self.table).where(self.table.c.id == number)).first()

    def counts(self) -> tuple[int, int]:
        """(open, total)."""
        t = self.table
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t)).scalar_one()
            opened = conn.execute(select(func.count()).select_from(t).where(t.c.status == OPEN)).scalar_one()
        return int(opened), int(total)

    def _close(self, number: int, status: str, actor: str, why: str) -> bool:
        t = self.table
        with writing(self.engine) as conn:
            done = conn.execute(
                update(t)
                .where(and_(t.c.id == number, t.c.status == OPEN))
                .values(status=status, closed_at=now(), closed_by=actor[:80], close_reason=why)
            ).rowcount
        return bool(done)

    def mark_replayed(self, number: int, actor: str, why: str = "") -> bool:
        """An open letter whose replay succeeded; False when it was not open."""
        return self._close(number, REPLAYED, actor, why)

    def discard(self, number: int, why: str, actor: str) -> bool:
        """Close an open letter on purpose; False when it was not open."""
        return self._close(number, DISCARDED, actor, why)

    def record_failed_replay(self, number: int, exc: BaseException) -> DeadLetter | None:
        """The replay failed again: the new reason, attempt + 1, still open, to be published again."""
        cls, code, message = reason(exc)
        t = self.table
        with writing(self.engine) as conn:
            conn.execute(
                update(t)
                .where(t.c.id == number)
                .values(
                    error_class=cls,
                    error_code=code,
                    error_message=message,
                    attempt=t.c.attempt + 1,
                    published=False,
                )
            )
            row = conn.execute(select(t).where(t.c.id == number)).first()
        return from_row(row) if row else None


# --- replaying: each service gives its own function; the top installs them --------------------

Replayer = Callable[[Settings, str, Any], str]  # (settings, bootstrap, stored letter row) -> what it did
_replayers: dict[str, Replayer] = {}


def install_replayers(replayers: dict[str, Replayer]) -> None:
    """The services' replay functions by service name (services/app.py knows them all)."""
    _replayers.update(replayers)


def replayer(service: str) -> Replayer:
    """How `service` runs one of its dead letters again (its own processing)."""
    return _replayers[service]


class StoredRecord:
    """A stored letter as the consumer record it was: the fields the services' processing reads."""

    def __init__(self, row: Any) -> None:
        self.topic, self.partition, self.offset = row.topic, row.partition, row.offset
        self.key = None if row.key is None else bytes(row.key)
        self.value = b"" if row.value is None else bytes(row.value)

