"""Publishing each closed period's reports exactly once, and never an open period's.

Inside `rod up` the audit service calls `tick()` whenever its reader has caught up: at start
(so a period that closed while the service was down is caught up on) and then every minute.
A period is due when it has closed and audit_published_periods has no `published` row for
it. It is published only when the log proves it complete: the chain is verified (no alert)
up to an event recorded after the period's end. A register with no event at all after the
end (a quiet holiday) is published once the reader has seen nothing new for `settle` and
the period ended more than `quiet` ago.

Exactly once: a scheduler first claims the period (INSERT of the period's row, a unique
key: of two schedulers only one gets it), then writes the files, publishes ReportPublished
and marks the row `published`. A claim left `publishing` by a process that died is taken
over after `lease`; that run repeats the same bodies and so the same report ids.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from services.audit import metrics
from services.audit.periods import Period, closed_since, from_millis, to_millis
from services.audit.projection import Projection, published_periods
from services.audit.reports import ReportWriter
from services.kernel.logging import get_logger

log = get_logger("audit.scheduler")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Decides which closed periods to publish, and publishes each once."""

    def __init__(
        self,
        projection: Projection,
        writer: ReportWriter,
        clock: Clock = utc_now,
        *,
        lease: timedelta = timedelta(minutes=30),
        settle: float = 600.0,
        quiet: timedelta = timedelta(days=1),
    ) -> None:
        self.projection = projection
        self.writer = writer
        self.clock = clock
        self.lease = lease
        self.settle = settle
        self.quiet = quiet
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._said: dict[str, str] = {}  # period → the last reason logged for waiting

    def due(self, now: datetime) -> list[Period]:
        """Closed periods since the first event that are not published yet, oldest first."""
        first = self.projection.first_recorded_at()
        if first is None:
            return []
        with self.projection.engine.connect() as conn:
            done = set(conn.execute(select(published_periods.c.period)
                                    .where(published_periods.c.status == "published")).scalars())
        return [p for p in closed_since(Period.containing(from_millis(first)), now) if p.id not in done]

    def blocked(self, period: Period, now: datetime, idle_seconds: float) -> str | None:
        """Why `period` cannot be published yet, or None when it can."""
        status = self.projection.status()
        if status.breaks:
            b = status.breaks[0]
            return f"hash chain broken at position {b.position} ({b.code})"
        if status.head_recorded_at is not None and status.head_recorded_at >= period.end_ms:
            return None
        if status.waiting_for is None and idle_seconds >= self.settle and now >= period.end + self.quiet:
            return None
        if status.waiting_for is not None:
            return f"waiting for position {status.waiting_for}"
        return "no event after the period's end in the verified log yet"

    def tick(self, idle_seconds: float = 0.0) -> list[str]:
        """Publish every due period that is ready; the ids of those published now."""
        now = self.clock()
        published = []
        due = self.due(now)
        for period in due:
            reason = self.blocked(period, now, idle_seconds)
            if reason:
                if self._said.get(period.id) != reason:
                    self._said[period.id] = reason
                    (log.error if reason.startswith("hash chain") else log.info)(
                        "audit_period_not_published", period=period.id, reason=reason)
                continue
            if not self.claim(period, now):
                continue
            written = self.writer.write(period, now)
            self.writer.publish(written, generated_at=now)
            self._mark(period, now, len(written))
            log.info("audit_period_published", period=period.id, reports=len(written))
            published.append(period.id)
        metrics.unpublished(p.end for p in due if p.id not in published)
        return published

    def claim(self, period: Period, now: datetime) -> bool:
        """Take the period for this scheduler; False when another holds it or it is published."""
        at = to_millis(now)
        with self.projection.writing() as conn:
            conn.execute(self.projection.insert_if_absent(published_periods).values(
                period=period.id, status="publishing", owner=self.owner, claimed_at=at))
            row = conn.execute(select(published_periods).where(published_periods.c.period == period.id)).one()
            if row.status == "published":
                return False
            if row.owner == self.owner:
                return True
            if at - row.claimed_at < self.lease / timedelta(milliseconds=1):
                return False
            taken = conn.execute(published_periods.update().where(
                published_periods.c.period == period.id, published_periods.c.owner == row.owner,
                published_periods.c.claimed_at == row.claimed_at,
                published_periods.c.status == "publishing",
            ).values(owner=self.owner, claimed_at=at)).rowcount
            if taken:
                log.warning("audit_period_claim_taken_over", period=period.id)
            return bool(taken)

    def _mark(self, period: Period, now: datetime, reports: int) -> None:
        with self.projection.writing() as conn:
            conn.execute(published_periods.update().where(
                published_periods.c.period == period.id, published_periods.c.owner == self.owner,
            ).values(status="published", published_at=to_millis(now), reports=reports))

    def published(self) -> dict[str, str]:
        """period → status, for operators and tests."""
        with self.projection.engine.connect() as conn:
            return dict(conn.execute(select(published_periods.c.period, published_periods.c.status)).all())
