"""Checking the hash chain of rod.results.v1 as its events arrive (pure; no I/O).

Events arrive in position order per partition but not across the six partitions, so the
check keeps what arrived ahead of a gap and walks forward whenever the next position is
there: each event's own hash must be right (recomputed from its bytes) and its `prev_hash`
must be the hash of the event before it (32 zero bytes before position 1). The first event
that fails is a `Break`: the walk stops there for good, naming the position, and no report
may be published over it. Only positions up to `verified` are ever used in a report.

>>> check = ChainCheck()
>>> check.offer(Link(1, GENESIS, b"h1", True, 0)); check.advance()
[]
>>> check.offer(Link(3, b"h2", b"h3", True, 0)); check.advance(), check.verified, check.waiting_for
([], 1, 2)
>>> check.offer(Link(2, b"hX", b"h2", True, 0)); [b.code for b in check.advance()], check.verified
(['PREV_HASH_MISMATCH'], 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.kernel.chain import GENESIS


@dataclass(frozen=True)
class Link:
    """What the chain check needs of one event."""

    position: int
    prev_hash: bytes
    hash: bytes
    hash_ok: bool  # the hash recomputed from the event's bytes equals its `hash`
    recorded_at: int  # ms


@dataclass(frozen=True)
class Break:
    """Where and how the chain is broken: a stable code and a line free of personal data."""

    position: int
    code: str  # HASH_MISMATCH, PREV_HASH_MISMATCH, POSITION_CONFLICT
    detail: str


@dataclass
class ChainCheck:
    """The verified prefix of the chain and what waits beyond it."""

    verified: int = 0
    head_hash: bytes = GENESIS
    head_at: int | None = None  # recorded_at (ms) of the event at `verified`
    broken: Break | None = None
    pending: dict[int, Link] = field(default_factory=dict)

    def offer(self, link: Link) -> Break | None:
        """Take an event in; a second, different event at a pending position is a conflict."""
        if link.position <= self.verified:
            return None
        held = self.pending.get(link.position)
        if held is None:
            self.pending[link.position] = link
        elif held.hash != link.hash or held.prev_hash != link.prev_hash:
            return Break(link.position, "POSITION_CONFLICT", "two different events claim this position")
        return None

    def advance(self) -> list[Break]:
        """Walk forward over the contiguous positions that have arrived; the new break, if any."""
        if self.broken:
            return []
        while (link := self.pending.get(self.verified + 1)) is not None:
            found = None
            if not link.hash_ok:
                found = Break(link.position, "HASH_MISMATCH", "the event's hash does not match its contents")
            elif link.prev_hash != self.head_hash:
                found = Break(link.position, "PREV_HASH_MISMATCH",
                              f"prev_hash is not the hash of position {link.position - 1}")
            if found:
                self.broken = found
                return [found]
            del self.pending[link.position]
            self.verified, self.head_hash, self.head_at = link.position, link.hash, link.recorded_at
        return []

    @property
    def waiting_for(self) -> int | None:
        """The missing position that holds up events already received, if any."""
        return self.verified + 1 if self.pending and not self.broken else None
