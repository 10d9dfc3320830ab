"""Chain impact: which consumers already received a result, and whether an extract showed it.

The registrar reads no other service's tables: it learns this from `rod.deliveries.v1`
(DeliveryReceipt) and `rod.extracts.v1` (ExtractIssued) into tables of its own. One row per
receipt, keyed by its deterministic id, inserted if absent: reading a receipt twice changes
nothing, and a WITHDRAWAL is one more row, so it never erases that a consumer had the result.

Impact is about the version being deleted: receipts for the result's current registration
event count; those of an earlier, already deleted version do not.

Loop: poll → decode (what cannot be decoded becomes a dead letter in registrar_deadletters:
origin, a code and a fixed message, never its contents) → insert receipts and letters in one
transaction → commit the offsets → publish the letters on rod.deadletter.v1 and mark them.
A crash in between reads some receipts again, which changes nothing (inserted if absent);
letters left unpublished go out when the reader starts again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from services.kernel import kafka
from services.kernel.codec import Codec, DecodeError
from services.kernel.database import create_tables, writing
from services.kernel.deadletters import TOPIC as DEADLETTER_TOPIC
from services.kernel.deadletters import DeadLetter, DeadLetterBook, add_missing_columns, dead_letter
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.codes import problem
from services.registrar.metrics import IMPACT_RECEIPTS
from services.registrar.store import deadletters, now_millis

log = get_logger("registrar.impact")

DELIVERIES_TOPIC = "rod.deliveries.v1"
EXTRACTS_TOPIC = "rod.extracts.v1"
GROUP_ID = "rod-registrar-impact"
SERVICE = "registrar"
EXPECTED = ("DeliveryReceipt", "ExtractIssued")

metadata = MetaData()

chain_impact = Table(
    "registrar_chain_impact",
    metadata,
    Column("delivery_id", String(200), primary_key=True),
    Column("result_id", String(36), nullable=False, index=True),
    Column("subscription", String(100), nullable=False),
    Column("kind", String(12), nullable=False),  # DELIVERY | WITHDRAWAL
    Column("event_id", String(36), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

extracts = Table(
    "registrar_extracts",
    metadata,
    Column("extract_id", String(200), primary_key=True),
    Column("result_id", String(36), nullable=False, index=True),
    Column("event_id", String(36), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Impact:
    """What deleting a result touches downstream."""

    consumers: list[str]
    extract_issued: bool

    @property
    def has_impact(self) -> bool:
        return bool(self.consumers) or self.extract_issued

    @property
    def message(self) -> str:
        """A plain Dutch sentence (or two) from the code table."""
        codes = (["IMPACT_DELIVERED"] if self.consumers else []) + (
            ["IMPACT_EXTRACT_ISSUED"] if self.extract_issued else []
        )
        return " ".join(problem(code).message for code in codes or ["IMPACT_NONE"])

    def as_dict(self) -> dict[str, Any]:
        return {"consumers": self.consumers, "extract_issued": self.extract_issued,
                "has_impact": self.has_impact, "message": self.message}


class ImpactStore:
    """The receipts the registrar has read, and the impact they add up to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(metadata, engine)
        deadletters.create(engine, checkfirst=True)  # the event store makes it too; whoever is first
        add_missing_columns(engine, deadletters)
        self.deadletters = DeadLetterBook(engine, deadletters, SERVICE)

    def record(
        self, receipts: Iterable[tuple[str, dict[str, Any]]], letters: Iterable[DeadLetter] = ()
    ) -> int:
        """Insert decoded receipts (name, record) that are not there yet, and the dead letters of the
        same poll, in one transaction."""
        deliveries, issued = [], []
        now = now_millis()
        for name, r in receipts:
            if name == "DeliveryReceipt":
                deliveries.append({
                    "delivery_id": r["delivery_id"], "result_id": r["result_id"],
                    "subscription": r["subscription"], "kind": r["kind"], "event_id": r["event_id"],
                    "delivered_at": r["delivered_at"], "received_at": now,
                })
            elif name == "ExtractIssued":
                issued.append({
                    "extract_id": r["extract_id"], "result_id": r["result_id"], "event_id": r["event_id"],
                    "issued_at": r["issued_at"], "received_at": now,
                })
        with writing(self.engine) as conn:
            for table, rows, key in (
                (chain_impact, deliveries, "delivery_id"), (extracts, issued, "extract_id")
            ):
                if rows:
                    conn.execute(self._insert_if_absent(table, key), rows)
            self.deadletters.record(conn, letters)
        return len(deliveries) + len(issued)

    def _insert_if_absent(self, table: Table, key: str) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing(index_elements=[key])

    def impact(self, result_id: str, registered_event_id: str) -> Impact:
        """The impact of deleting the registration `registered_event_id` of `result_id`."""
        with self.engine.connect() as conn:
            consumers = conn.execute(
                select(chain_impact.c.subscription).distinct()
                .where(chain_impact.c.result_id == result_id, chain_impact.c.kind == "DELIVERY",
                       chain_impact.c.event_id == registered_event_id)
                .order_by(chain_impact.c.subscription)
            ).scalars().all()
            extract = conn.execute(
                select(extracts.c.extract_id)
                .where(extracts.c.result_id == result_id, extracts.c.event_id == registered_event_id)
                .limit(1)
            ).first()
        return Impact(list(consumers), extract is not None)


class ImpactReader:
    """Consumes delivery receipts and issued extracts into an ImpactStore until stopped."""

    def __init__(self, impact_store: ImpactStore, settings: Settings, bootstrap: str,
                 group_id: str = GROUP_ID) -> None:
        self.store = impact_store
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.settings = settings
        self.topics = [settings.topic(DELIVERIES_TOPIC), settings.topic(EXTRACTS_TOPIC)]
        self.base = {settings.topic(t): t for t in (DELIVERIES_TOPIC, EXTRACTS_TOPIC)}
        self.codec = Codec()
        self.letters: list[DeadLetter] = []

    def decode(self, records: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Decoded receipts; what cannot be decoded is collected in `self.letters` and left out."""
        decoded = []
        for rec in records:
            try:
                name, record = self.codec.decode(rec.value or b"")
                if name not in EXPECTED:
                    raise DecodeError("RECORD_UNEXPECTED", name)
            except DecodeError as exc:
                letter = dead_letter(self.base.get(rec.topic, rec.topic), rec, exc)
                self.letters.append(letter)
                log.warning("impact_message_undecodable", topic=rec.topic, partition=rec.partition,
                            offset=rec.offset, code=exc.code)
                outcome = "unexpected" if exc.code == "RECORD_UNEXPECTED" else "undecodable"
                IMPACT_RECEIPTS.labels(topic=rec.topic, outcome=outcome).inc()
                continue
            IMPACT_RECEIPTS.labels(topic=rec.topic, outcome="read").inc()
            decoded.append((name, record))
        return decoded

    def publish_dead_letters(self) -> int:
        """Publish the stored letters not yet on rod.deadletter.v1, then mark them published."""
        return self.store.deadletters.publish_waiting(self.settings, self.bootstrap)

    def poll_once(self, consumer: Any, timeout_ms: int = 200) -> int:
        """One poll: receipts and dead letters stored together, offsets committed, letters sent."""
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        if not polled:
            return 0
        self.letters = []
        records = [r for batch in polled.values() for r in batch]
        self.store.record(self.decode(records), self.letters)
        consumer.commit()  # only after the rows are committed
        if self.letters:
            self.publish_dead_letters()
        return len(records)

    def run(self, stop: threading.Event) -> None:
        """Poll → record → commit until `stop` is set; broker trouble is retried with backoff."""
        backoff = 0.5
        while not stop.is_set():
            consumer = None
            try:
                kafka.ensure_topics(self.settings, self.bootstrap, [DEADLETTER_TOPIC])
                self.publish_dead_letters()  # what a crash left stored but not sent
                consumer = kafka.consumer(self.bootstrap, group_id=self.group_id)
                consumer.subscribe(self.topics)
                while not stop.is_set():
                    if self.poll_once(consumer):
                        backoff = 0.5
            except Exception as exc:  # broker or database away: retry; what was not committed is read again
                log.warning("impact_reader_error", error=type(exc).__name__, retry_in_seconds=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if consumer is not None:
                    consumer.close(autocommit=False)
