"""`rod verify`: walk the hash chain over the whole event store and name the first break.

Each verdict is kept in registrar_verifications, so the operator console can show when the
chain was last checked and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from services.kernel import chain
from services.kernel.clock import now_millis
from services.kernel.codec import DecodeError
from services.kernel.database import writing
from services.registrar.store import EventStore, chain_head, events, verifications

PAGE = 5000


@dataclass(frozen=True)
class Verdict:
    """Outcome of a chain walk: ok, how many events were checked, where and why it broke."""

    ok: bool
    checked: int
    broken_position: int | None = None
    reason: str | None = None
    code: str | None = None  # stable name of the failure, e.g. HASH_MISMATCH


def verify(event_store: EventStore) -> Verdict:
    """Check every event in position order: decodable, linked, hash matching, columns agreeing."""
    codec = event_store.codec
    prev_hash = chain.GENESIS
    expected = 1
    with event_store.reading() as conn:
        while True:
            rows = conn.execute(
                select(
                    events.c.position,
                    events.c.event_id,
                    events.c.stream_id,
                    events.c.version,
                    events.c.payload,
                    events.c.hash,
                )
                .where(events.c.position >= expected)
                .order_by(events.c.position)
                .limit(PAGE)
            ).all()
            if not rows:
                break
            for row in rows:
                failure = _check(codec, row, expected, prev_hash)
                if failure:
                    broken = row.position if row.position == expected else expected
                    return Verdict(False, expected - 1, broken, failure[1], failure[0])
                prev_hash = bytes(row.hash)
                expected += 1
        head = conn.execute(select(chain_head.c.position, chain_head.c.hash)).one()
    if head.position != expected - 1 or bytes(head.hash) != prev_hash:
        return Verdict(False, expected - 1, head.position, "chain head does not match the last event",
                       "HEAD_MISMATCH")
    return Verdict(True, expected - 1)


def _check(codec, row, expected: int, prev_hash: bytes) -> tuple[str, str] | None:  # noqa: ANN001
    """(code, reason) of what is wrong with this row, or None."""
    if row.position != expected:
        return "POSITION_MISSING", f"position {expected} is missing"
    try:
        record, recomputed = chain.recompute(codec, bytes(row.payload))
    except DecodeError as exc:
        return "PAYLOAD_UNREADABLE", f"payload unreadable ({exc.code})"
    if record["prev_hash"] != prev_hash:
        return "PREV_HASH_MISMATCH", "prev_hash does not link to the previous event"
    if recomputed != record["hash"] or recomputed != bytes(row.hash):
        return "HASH_MISMATCH", "hash does not match the event's contents"
    if (record["position"], record["event_id"], record["result_id"], record["version"]) != (
        row.position,
        row.event_id,
        row.stream_id,
        row.version,
    ):
        return "COLUMNS_DISAGREE", "payload disagrees with the stored columns"
    return None


def record_verdict(event_store: EventStore, verdict: Verdict) -> None:
    """Keep `verdict` as the latest `rod verify` outcome."""
    with writing(event_store.engine) as conn:
        conn.execute(insert(verifications).values(
            at=now_millis(), ok=verdict.ok, checked=verdict.checked, broken_position=verdict.broken_position,
            code=verdict.code, reason=verdict.reason,
        ))


def last_verification(engine: Engine) -> dict[str, Any] | None:
    """The latest recorded verdict (at, ok, checked, broken_position, code, reason), or None."""
    with engine.connect() as conn:
        row = conn.execute(select(verifications).order_by(verifications.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    found = dict(row._mapping)
    at: datetime = found["at"]
    found["at"] = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return found
