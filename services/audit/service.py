"""The audit service inside `rod up`: the projection's reader, with the scheduler on its idle ticks."""

from __future__ import annotations

import threading

from services.audit import metrics
from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.audit.reports import ReportWriter
from services.audit.scheduler import Clock, Scheduler, utc_now
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("audit")


class AuditService:
    """Reads its topics into the projection; when caught up, publishes the periods that closed."""

    def __init__(self, settings: Settings, bootstrap: str, clock: Clock = utc_now,
                 tick_every: float = 60.0, **scheduler_options: object) -> None:
        self.projection = Projection(settings.database_urls["audit"])
        metrics.follow(self.projection)
        self.reader = AuditReader(self.projection, settings, bootstrap)
        self.scheduler = Scheduler(self.projection, ReportWriter(self.projection, settings, bootstrap),
                                   clock, **scheduler_options)  # type: ignore[arg-type]
        self.tick_every = tick_every
        self.ticks = 0  # scheduler runs so far (operators' and tests' view)

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: read, and tick the scheduler at start-up's catch-up and every `tick_every`."""
        self.reader.run(stop, on_idle=self._tick, idle_every=self.tick_every)

    def _tick(self, idle_seconds: float) -> None:
        try:
            self.scheduler.tick(idle_seconds)
            self.ticks += 1
        except Exception as exc:  # noqa: BLE001 - the next tick tries again; reading goes on
            log.error("audit_scheduler_failed", error=type(exc).__name__, detail=str(exc)[:300])

    def close(self) -> None:
        self.projection.dispose()
