"""`rod verify`: walk the hash chain over the whole event store and name the first break."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from services.kernel import chain
from services.kernel.codec import DecodeError
from services.registrar.store import EventStore, chain_head, events

PAGE = 5000


@dataclass(frozen=True)
class Verdict:
    """Outcome of a chain walk: ok, how many events were checked, where and why it broke."""

    ok: bool
    checked: int
    broken_position: int | None = None
    reason: str | None = None


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
                reason = _check(codec, row, expected, prev_hash)
                if reason:
                    broken = row.position if row.position == expected else expected
                    return Verdict(False, expected - 1, broken, reason)
                prev_hash = bytes(row.hash)
                expected += 1
        head = conn.execute(select(chain_head.c.position, chain_head.c.hash)).one()
    if head.position != expected - 1 or bytes(head.hash) != prev_hash:
        return Verdict(False, expected - 1, head.position, "chain head does not match the last event")
    return Verdict(True, expected - 1)


def _check(codec, row, expected: int, prev_hash: bytes) -> str | None:  # noqa: ANN001
    if row.position != expected:
        return f"position {expected} is missing"
    try:
        record, recomputed = chain.recompute(codec, bytes(row.payload))
    except DecodeError as exc:
        return f"payload unreadable ({exc.code})"
    if record["prev_hash"] != prev_hash:
        return "prev_hash does not link to the previous event"
    if recomputed != record["hash"] or recomputed != bytes(row.hash):
        return "hash does not match the event's contents"
    if (record["position"], record["event_id"], record["result_id"], record["version"]) != (
        row.position,
        row.event_id,
        row.stream_id,
        row.version,
    ):
        return "payload disagrees with the stored columns"
    return None
