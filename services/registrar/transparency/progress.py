"""How far the log keeps up with the register: the tree, the newest checkpoint and its outbox.

One reading of a few single-row queries on the registrar's tables, for the three places an
operator looks: `/metrics`, `rod topics` and the console's `/ops`.

Checkpoints have *stalled* when stored events wait outside every signed checkpoint, the newest
checkpoint is older than the limit and the oldest waiting event has waited longer than the
limit too: after a quiet night the first event finds an old checkpoint, and that is no fault
until the log component has had the limit's time to sign it. A log that never signed one while
events waited that long has *not started* (the log component never ran on this store): shown,
but not judged a stall, since nothing stopped (the Prometheus alert fires on both, its age of
the newest checkpoint being +Inf before the first).

    >>> with store.reading() as conn:
    ...     progress = read(conn)
    >>> progress.stalled(now)
    False
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from services.kernel.clock import utc
from services.registrar.store import chain_head, events, log_checkpoints, log_tree

STALL_SECONDS = 60.0
OK, STALLED, NOT_STARTED = "OK", "STALLED", "NOT_STARTED"


def stall_seconds() -> float:
    """How long checkpoints may stop while events wait (ROD_LOG_CHECKPOINT_ALERT_SECONDS, default 60)."""
    return float(os.environ.get("ROD_LOG_CHECKPOINT_ALERT_SECONDS") or STALL_SECONDS)


@dataclass(frozen=True)
class LogProgress:
    """The log's position against the store's, read at one moment."""

    stored: int  # position of the newest stored event
    tree_size: int
    checkpoint_size: int | None  # None: no checkpoint signed yet
    signed_at: datetime | None
    unpublished: int  # signed checkpoints not yet on rod.checkpoints.v1
    oldest_unsigned_at: datetime | None  # recorded_at of the first stored event no checkpoint covers

    @property
    def tree_behind(self) -> int:
        """Stored events not yet in the tree."""
        return max(self.stored - self.tree_size, 0)

    @property
    def unsigned(self) -> int:
        """Stored events no signed checkpoint covers yet."""
        return max(self.stored - (self.checkpoint_size or 0), 0)

    def age(self, now: datetime) -> float | None:
        """Seconds since the newest checkpoint was signed; None before the first."""
        return None if self.signed_at is None else max((now - self.signed_at).total_seconds(), 0.0)

    def waited(self, now: datetime) -> float | None:
        """Seconds the oldest event outside every checkpoint has waited; None when none waits."""
        if not self.unsigned or self.oldest_unsigned_at is None:
            return None
        return max((now - self.oldest_unsigned_at).total_seconds(), 0.0)

    def status(self, now: datetime, limit: float | None = None) -> str:
        """OK, STALLED (checkpoints stopped while events wait) or NOT_STARTED (none was ever signed
        while events waited longer than the limit); see the module's docstring."""
        limit = stall_seconds() if limit is None else limit
        age, waited = self.age(now), self.waited(now)
        if waited is None or waited <= limit:
            return OK
        if age is None:
            return NOT_STARTED
        return STALLED if age > limit else OK

    def stalled(self, now: datetime, limit: float | None = None) -> bool:
        """True when checkpoints stopped while events wait."""
        return self.status(now, limit) == STALLED

    def view(self, now: datetime, limit: float | None = None) -> dict[str, Any]:
        """The `log` object of `rod topics --json`."""
        age, waited = self.age(now), self.waited(now)
        return {
            "tree_size": self.tree_size,
            "tree_behind": self.tree_behind,
            "checkpoint_tree_size": self.checkpoint_size,
            "checkpoint_signed_at": self.signed_at.isoformat() if self.signed_at else None,
            "checkpoint_age_seconds": round(age, 3) if age is not None else None,
            "unsigned_events": self.unsigned,
            "oldest_unsigned_age_seconds": round(waited, 3) if waited is not None else None,
            "unpublished_checkpoints": self.unpublished,
            "status": self.status(now, limit),
        }


def read(conn: Connection) -> LogProgress:
    """The log's progress from the registrar's tables (each query reads a row or a few by key)."""
    stored = conn.execute(select(chain_head.c.position)).scalar_one_or_none() or 0
    tree_size = conn.execute(select(log_tree.c.size).where(log_tree.c.id == 1)).scalar_one_or_none() or 0
    newest = conn.execute(
        select(log_checkpoints.c.tree_size, log_checkpoints.c.created_at)
        .order_by(log_checkpoints.c.tree_size.desc()).limit(1)
    ).first()
    size = newest.tree_size if newest else None
    oldest_unsigned_at = None
    if stored > (size or 0):
        oldest_unsigned_at = utc(conn.execute(
            select(events.c.recorded_at).where(events.c.position == (size or 0) + 1)
        ).scalar_one_or_none())
    return LogProgress(stored, tree_size, size, utc(newest.created_at) if newest else None,
                       _unpublished(conn), oldest_unsigned_at)


def _unpublished(conn: Connection) -> int:
    """Checkpoints not yet published. They are published oldest first, so they are the newest
    ones: walk back from the newest to the first published (no scan of every checkpoint)."""
    cp = log_checkpoints.c
    last_sent = conn.execute(
        select(cp.tree_size).where(cp.partition.is_not(None)).order_by(cp.tree_size.desc()).limit(1)
    ).scalar_one_or_none()
    query = select(func.count()).select_from(log_checkpoints).where(cp.partition.is_(None))
    if last_sent is not None:
        query = query.where(cp.tree_size > last_sent)
    return conn.execute(query).scalar_one()
