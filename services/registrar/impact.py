"""Chain impact: which consumers already received a result, and whether an extract showed it.

The registrar reads no other service's tables: it learns this from `rod.deliveries.v1`
(DeliveryReceipt) and `rod.extracts.v1` (ExtractIssued) into tables of its own. One row per
receipt, keyed by its deterministic id, inserted if absent: reading a receipt twice changes
nothing, and a WITHDRAWAL is one more row, so it never erases that a consumer had the result.

Impact is about the version being deleted: receipts for the result's current registration
event count; those of an earlier, already deleted version do not.

Loop: poll → decode (an undecodable message is logged without its contents and skipped) →
insert in one transaction → commit the offsets. A crash in between reads some receipts
again, which changes nothing.
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
from services.kernel.database import writing
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.batches import create_tables
from services.registrar.codes import problem
from services.registrar.metrics import IMPACT_RECEIPTS
from services.registrar.store import now_millis

log = get_logger("registrar.impact")

DELIVERIES_TOPIC = "rod.deliveries.v1"
EXTRACTS_TOPIC = "rod.extracts.v1"
GROUP_ID = "rod-registrar-impact"

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

    def record(self, receipts: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Insert decoded receipts (name, record) that are not there yet, in one transaction."""
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
        self.topics = [settings.topic(DELIVERIES_TOPIC), settings.topic(EXTRACTS_TOPIC)]
        self.codec = Codec()

    def decode(self, records: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Decoded receipts; what cannot be decoded is logged (origin and code only) and left out."""
        decoded = []
        for rec in records:
            try:
                name, record = self.codec.decode(rec.value or b"")
            except DecodeError as exc:
                log.warning("impact_message_undecodable", topic=rec.topic, partition=rec.partition,
                            offset=rec.offset, code=exc.code)
                IMPACT_RECEIPTS.labels(topic=rec.topic, outcome="undecodable").inc()
                continue
            if name not in ("DeliveryReceipt", "ExtractIssued"):
                log.warning("impact_message_unexpected", topic=rec.topic, partition=rec.partition,
                            offset=rec.offset, record_name=name)
                IMPACT_RECEIPTS.labels(topic=rec.topic, outcome="unexpected").inc()
                continue
            IMPACT_RECEIPTS.labels(topic=rec.topic, outcome="read").inc()
            decoded.append((name, record))
        return decoded

    def run(self, stop: threading.Event) -> None:
        """Poll → record → commit until `stop` is set; broker trouble is retried with backoff."""
        backoff = 0.5
        while not stop.is_set():
            consumer = None
            try:
                consumer = kafka.consumer(self.bootstrap, group_id=self.group_id)
                consumer.subscribe(self.topics)
                while not stop.is_set():
                    polled = consumer.poll(timeout_ms=200, max_records=1000)
                    if not polled:
                        continue
                    self.store.record(self.decode(r for batch in polled.values() for r in batch))
                    consumer.commit()  # only after the rows are committed
                    backoff = 0.5
            except Exception as exc:  # broker or database away: retry; what was not committed is read again
                log.warning("impact_reader_error", error=type(exc).__name__, retry_in_seconds=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if consumer is not None:
                    consumer.close(autocommit=False)
