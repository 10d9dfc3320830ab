"""Chain impact: which consumers already received a result, and whether an extract showed it.

The registrar reads no other service's tables: it learns this from `rod.deliveries.v1`
(DeliveryReceipt) and `rod.extracts.v1` (ExtractIssued) into tables of its own. One row per
receipt, keyed by its deterministic id, inserted if absent: reading a receipt twice changes
nothing, and a WITHDRAWAL is one more row, so it never erases that a consumer had the result.
An ACKNOWLEDGED receipt (the consumer confirmed it processed the message) stamps the row of
the delivery it confirms; it follows that delivery's receipt on the same partition.

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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from services.kernel import kafka
from services.kernel.clock import now_millis
from services.kernel.codes import problem
from services.kernel.consume import Batch, ConsumeLoop, Consumption
from services.kernel.database import create_tables, make_engine, writing
from services.kernel.deadletters import TOPIC as DEADLETTER_TOPIC
from services.kernel.deadletters import DeadLetter, DeadLetterBook, StoredRecord, add_missing_columns
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.metrics import IMPACT_RECEIPTS
from services.registrar.store import deadletters

log = get_logger("registrar.impact")

DELIVERIES_TOPIC = "rod.deliveries.v1"
EXTRACTS_TOPIC = "rod.extracts.v1"
GROUP_ID = "rod-registrar-impact"
SERVICE = "registrar"

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
    Column("acknowledged_at", DateTime(timezone=True)),
)

extracts = Table(
    "registrar_extracts",
    metadata,
    Column("extract_id", String(200), primary_key=True),
    Column("result_id", String(36), primary_key=True, index=True),  # one row per result an extract shows
    Column("event_id", String(36), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Delivery:
    """One consumer had the result: since when, and since when it confirmed processing it."""

    subscription: str
    delivered_at: datetime
    acknowledged_at: datetime | None


@dataclass(frozen=True)
class Extract:
    """An extract (uittreksel) that showed the result: a legally valid copy nobody can take back."""

    extract_id: str
    issued_at: datetime


@dataclass(frozen=True)
class Impact:
    """What deleting a result touches downstream."""

    deliveries: list[Delivery]
    extracts: list[Extract]

    @property
    def extract_issued(self) -> bool:
        return bool(self.extracts)

    @property
    def consumers(self) -> list[str]:
        return [d.subscription for d in self.deliveries]

    @property
    def acknowledged(self) -> list[str]:
        return [d.subscription for d in self.deliveries if d.acknowledged_at]

    @property
    def has_impact(self) -> bool:
        return bool(self.deliveries) or self.extract_issued

    @property
    def message(self) -> str:
        """A plain Dutch sentence (or two) from the code table."""
        codes = (["IMPACT_DELIVERED"] if self.consumers else []) + (
            ["IMPACT_ACKNOWLEDGED"] if self.acknowledged else []) + (
            ["IMPACT_EXTRACT_ISSUED"] if self.extract_issued else []
        )
        return " ".join(problem(code).message for code in codes or ["IMPACT_NONE"])

    def as_dict(self) -> dict[str, Any]:
        return {"consumers": self.consumers, "acknowledged": self.acknowledged,
                "deliveries": [{"subscription": d.subscription, "delivered_at": _iso(d.delivered_at),
                                "acknowledged_at": _iso(d.acknowledged_at)} for d in self.deliveries],
                "extract_issued": self.extract_issued,
                "extracts": [{"extract_id": x.extract_id, "issued_at": _iso(x.issued_at)}
                             for x in self.extracts],
                "has_impact": self.has_impact, "message": self.message}


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes: stored as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ImpactStore:
    """The receipts the registrar has read, and the impact they add up to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(metadata, engine)
        add_missing_columns(engine, chain_impact)  # made before acknowledgements existed
        deadletters.create(engine, checkfirst=True)  # the event store makes it too; whoever is first
        add_missing_columns(engine, deadletters)
        self.deadletters = DeadLetterBook(engine, deadletters, SERVICE)

    def record(
        self, receipts: Iterable[tuple[str, dict[str, Any]]], letters: Iterable[DeadLetter] = ()
    ) -> int:
        """Insert decoded receipts (name, record) that are not there yet, and the dead letters of the
        same poll, in one transaction."""
        deliveries, issued, acknowledged = [], [], []
        now = now_millis()
        for name, r in receipts:
            if name == "DeliveryReceipt" and r["kind"] == "ACKNOWLEDGED":
                moment = r.get("acknowledged_at") or r["delivered_at"]
                acknowledged.append({"key": r["delivery_id"], "at": moment})
            elif name == "DeliveryReceipt":
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
                (chain_impact, deliveries, ["delivery_id"]), (extracts, issued, ["extract_id", "result_id"])
            ):
                if rows:
                    conn.execute(self._insert_if_absent(table, key), rows)
            if acknowledged:  # after the inserts: a delivery and its acknowledgement may share a poll
                conn.execute(
                    update(chain_impact)
                    .where(chain_impact.c.delivery_id == bindparam("key"),
                           chain_impact.c.acknowledged_at.is_(None))
                    .values(acknowledged_at=bindparam("at")),
                    acknowledged,
                )
            self.deadletters.record(conn, letters)
        return len(deliveries) + len(issued) + len(acknowledged)

    def _insert_if_absent(self, table: Table, key: list[str]) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing(index_elements=key)

    def impact(self, result_id: str, registered_event_id: str) -> Impact:
        """The impact of deleting the registration `registered_event_id` of `result_id`."""
        with self.engine.connect() as conn:
            deliveries = [
                Delivery(r.subscription, r.delivered_at, r.acknowledged_at)
                for r in conn.execute(
                    select(chain_impact.c.subscription, chain_impact.c.delivered_at,
                           chain_impact.c.acknowledged_at)
                    .where(chain_impact.c.result_id == result_id, chain_impact.c.kind == "DELIVERY",
                           chain_impact.c.event_id == registered_event_id)
                    .order_by(chain_impact.c.subscription)
                )
            ]
            shown = [
                Extract(r.extract_id, r.issued_at)
                for r in conn.execute(
                    select(extracts.c.extract_id, extracts.c.issued_at)
                    .where(extracts.c.result_id == result_id, extracts.c.event_id == registered_event_id)
                    .order_by(extracts.c.issued_at, extracts.c.extract_id)
                )
            ]
        return Impact(deliveries, shown)


class ImpactReader(Consumption):
    """Receipts and issued extracts into an ImpactStore, on the kernel's consume loop."""

    name = SERVICE
    expected = {DELIVERIES_TOPIC: ("DeliveryReceipt",), EXTRACTS_TOPIC: ("ExtractIssued",)}

    def __init__(self, impact_store: ImpactStore, settings: Settings, bootstrap: str,
                 group_id: str = GROUP_ID) -> None:
        self.store = impact_store
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.settings = settings
        self.loop = ConsumeLoop(self, settings, bootstrap, batch=1000)

    def open(self) -> None:
        kafka.ensure_topics(self.settings, self.bootstrap, [DEADLETTER_TOPIC])
        self.publish_dead_letters()  # what a crash left stored but not sent

    def process(self, batch: Batch) -> list[DeadLetter]:
        """Receipts and dead letters stored together (the group's offsets are this reader's cursor)."""
        for message in batch.messages:
            IMPACT_RECEIPTS.labels(topic=message.topic, outcome="read").inc()
        for letter in batch.letters:
            outcome = "unexpected" if letter.error_code == "RECORD_UNEXPECTED" else "undecodable"
            IMPACT_RECEIPTS.labels(topic=letter.topic, outcome=outcome).inc()
        self.store.record([(m.name, m.record) for m in batch.messages], batch.letters)
        return batch.letters

    def publish(self, done: list[DeadLetter]) -> None:
        if done:
            self.publish_dead_letters()

    def publish_dead_letters(self) -> int:
        """Publish the stored letters not yet on rod.deadletter.v1, then mark them published."""
        return self.store.deadletters.publish_waiting(self.settings, self.bootstrap)

    def run(self, stop: threading.Event) -> None:
        """Poll → record → commit until `stop` is set; broker trouble is retried with backoff."""
        self.loop.run(stop)


def replay_dead_letter(settings: Settings, _bootstrap: str, row: Any) -> str:
    """One stored letter recorded again (idempotent by delivery_id / extract and result id)."""
    engine = make_engine(settings.database_urls["registrar"])
    try:
        reader = ImpactReader(ImpactStore(engine), settings, "")
        message = reader.loop.read(StoredRecord(row))  # raises what keeps it a dead letter
        reader.process(Batch([message]))
        return f"{message.name} recorded (inserted if absent)"
    finally:
        engine.dispose()
