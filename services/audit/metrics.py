"""The audit service's Prometheus metrics (process-wide registry; labels: kind only).

The chain's verified position and whether it is broken are read from the projection's
in-memory chain check when scraped (no query); the report gauges are set by the scheduler
on each tick, so "a period closed and still no report" can alert.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

PROJECTED = Counter(
    "rod_audit_projected_total",
    "Messages the audit projection stored, by kind (event, delivery, extract).",
    ["kind"],
)
LAST_PROCESSED = Gauge(
    "rod_audit_last_processed_timestamp_seconds", "When the audit projection last stored a batch (Unix time)."
)
VERIFIED = Gauge("rod_chain_verified_position",
                 "The last position of rod.results.v1 the hash chain is verified to.")
BROKEN = Gauge("rod_chain_broken",
               "1 when the audit found the hash chain broken (no report is published over it).")
REPORTS = Counter("rod_reports_published_total", "Audit reports published on rod.reports.v1.")
LAST_REPORT = Gauge(
    "rod_report_last_published_timestamp_seconds", "When the audit last published reports (Unix time)."
)
UNPUBLISHED = Gauge(
    "rod_report_unpublished_periods", "Report periods that have closed and have no published report yet."
)
OLDEST_UNPUBLISHED = Gauge(
    "rod_report_oldest_unpublished_period_end_timestamp_seconds",
    "End (Unix time) of the oldest closed period without a published report; 0 when there is none.",
)
for _kind in ("event", "delivery", "extract"):
    PROJECTED.labels(kind=_kind)


def follow(projection: Any) -> None:
    """Export this projection's chain check (the last one followed wins: one audit per process)."""
    VERIFIED.set_function(lambda: projection.check.verified)
    BROKEN.set_function(lambda: 1 if projection.check.broken else 0)


def projected(batch: Any) -> None:
    """A batch (events, deliveries, extracts) is stored."""
    for kind, rows in (("event", batch.events), ("delivery", batch.deliveries), ("extract", batch.extracts)):
        if rows:
            PROJECTED.labels(kind=kind).inc(len(rows))
    LAST_PROCESSED.set(time.time())


def published(reports: int) -> None:
    REPORTS.inc(reports)
    LAST_REPORT.set(time.time())


def unpublished(period_ends: Iterable[datetime]) -> None:
    """The closed periods still without a report after a scheduler tick."""
    ends = sorted(period_ends)
    UNPUBLISHED.set(len(ends))
    OLDEST_UNPUBLISHED.set(ends[0].timestamp() if ends else 0)
