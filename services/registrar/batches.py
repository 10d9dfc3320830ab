"""Uploaded bulk files and their per-record feedback, kept so it can be fetched again.

The registrar's own tables, on the event store's engine. Feedback rows are written while
the import runs (buffered and inserted in chunks), never held whole in memory; the batch
row gets the import's batch id (the one its events carry) when the import finishes. A batch
whose import died stays `running` with no batch id: nobody can fetch half a feedback.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError

from services.kernel.clock import now_millis
from services.kernel.database import create_tables, writing
from services.registrar.commands import BatchSummary, RecordFeedback

metadata = MetaData()

batches = Table(
    "registrar_batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", String(36), unique=True, nullable=True),  # set when the import finishes
    Column("institution", String(4), nullable=False),
    Column("format", String(4), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # running | finished | refused | failed
    Column("accepted", Integer, nullable=False, default=0),
    Column("duplicate", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("warnings", Integer, nullable=False, default=0),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

batch_records = Table(
    "registrar_batch_records",
    metadata,
    Column("batch", Integer, primary_key=True, autoincrement=False),  # registrar_batches.id
    Column("record", Integer, primary_key=True, autoincrement=False),
    Column("line", Integer, nullable=False),
    Column("outcome", String(10), nullable=False),
    Column("result_id", String(36), nullable=True),
    Column("codes", Text, nullable=False),  # space-separated
)

# the rejected records of a batch, for the Loket's "only rejected" pages: partial, so the accepted
# records of an import (nearly all of them) cost it nothing
rejected_records = Index("ix_registrar_batch_records_rejected", batch_records.c.batch, batch_records.c.record,
                         sqlite_where=batch_records.c.outcome == "rejected",
                         postgresql_where=batch_records.c.outcome == "rejected")

FLUSH_EVERY = 5000
PAGE = 5000


@dataclass(frozen=True)
class Batch:
    """A finished upload: whose it is and its summary."""

    key: int
    batch_id: str
    institution: str
    accepted: int
    duplicate: int
    rejected: int
    warnings: int

    def summary(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicate": self.duplicate,
                "rejected": self.rejected, "warnings": self.warnings}


class FeedbackWriter:
    """The `on_record` callback of an import: buffers feedback rows, inserts them in chunks."""

    def __init__(self, engine: Engine, key: int) -> None:
        self.engine = engine
        self.key = key
        self.rows: list[dict[str, Any]] = []

    def __call__(self, feedback: RecordFeedback) -> None:
        self.rows.append({
            "batch": self.key, "record": feedback.record, "line": feedback.line,
            "outcome": feedback.outcome, "result_id": feedback.result_id, "codes": " ".join(feedback.codes),
        })
        if len(self.rows) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            with writing(self.engine) as conn:
                conn.execute(insert(batch_records), self.rows)
            self.rows = []


class BatchStore:
    """Batches and their feedback in the registrar's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(metadata, engine)
        try:
            rejected_records.create(engine, checkfirst=True)  # also on a database made before it
        except DatabaseError:
            if not inspect(engine).has_index(batch_records.name, rejected_records.name):
                raise  # not a concurrent creation

    def start(self, institution: str, fmt: str, size: int) -> FeedbackWriter:
        """Record an upload whose import is about to run; returns the feedback writer for it."""
        with writing(self.engine) as conn:
            key = conn.execute(
                insert(batches).values(
                    institution=institution, format=fmt, size_bytes=size, status="running",
                    accepted=0, duplicate=0, rejected=0, warnings=0, received_at=now_millis(),
                ).returning(batches.c.id)
            ).scalar_one()
        return FeedbackWriter(self.engine, key)

    def finish(self, writer: FeedbackWriter, summary: BatchSummary) -> None:
        writer.flush()
        with writing(self.engine) as conn:
            conn.execute(
                update(batches).where(batches.c.id == writer.key).values(
                    batch_id=summary.batch_id, status="finished", accepted=summary.accepted,
                    duplicate=summary.duplicate, rejected=summary.rejected, warnings=summary.warnings,
                    finished_at=now_millis(),
                )
            )

    def close(self, writer: FeedbackWriter, status: str) -> None:
        """An upload that ended without a batch: refused as a whole, or failed."""
        with writing(self.engine) as conn:
            conn.execute(update(batches).where(batches.c.id == writer.key)
                         .values(status=status, finished_at=now_millis()))

    def find(self, batch_id: str) -> Batch | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(batches.c.id, batches.c.batch_id, batches.c.institution, batches.c.accepted,
                       batches.c.duplicate, batches.c.rejected, batches.c.warnings)
                .where(batches.c.batch_id == batch_id, batches.c.status == "finished")
            ).first()
        return Batch(*row) if row else None

    def page(
        self, batch: Batch, after: int, limit: int, rejected_only: bool = False
    ) -> list[tuple[int, int, str, str | None, list[str]]]:
        """Up to `limit` feedback rows after record `after`, in record order: one bounded index range."""
        query = (select(batch_records.c.record, batch_records.c.line, batch_records.c.outcome,
                        batch_records.c.result_id, batch_records.c.codes)
                 .where(batch_records.c.batch == batch.key, batch_records.c.record > after))
        if rejected_only:
            query = query.where(batch_records.c.outcome == "rejected")
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(batch_records.c.record).limit(limit)).all()
        return [(r.record, r.line, r.outcome, r.result_id, r.codes.split()) for r in rows]

    def records(self, batch: Batch) -> Iterator[tuple[int, int, str, str | None, list[str]]]:
        """(record, line, outcome, result_id, codes) in record order, read page by page."""
        after = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(batch_records.c.record, batch_records.c.line, batch_records.c.outcome,
                           batch_records.c.result_id, batch_records.c.codes)
                    .where(batch_records.c.batch == batch.key, batch_records.c.record > after)
                    .order_by(batch_records.c.record)
                    .limit(PAGE)
                ).all()
            for row in rows:
                yield row.record, row.line, row.outcome, row.result_id, row.codes.split()
            if len(rows) < PAGE:
                return
            after = rows[-1].record
