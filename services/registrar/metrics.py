"""The registrar's Prometheus metrics: names start with `rod_`, labels never carry personal data.

Counters and histograms live in the process-wide registry, so every service in the process
shows up on one `/metrics` (the distributor's, the audit's and the operations overview's
register there too). Relay position and lag, and the log's tree and checkpoints, are read from
the event store at scrape time by collectors bound to one store (a registry of its own, per app).

ROD_METRICS=off serves no `/metrics` at all (the benchmark's baseline); counting stays on,
it costs well under a microsecond per event.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from services.registrar.rules import DELETION_REASONS
from services.registrar.store import EventStore, chain_head, relay_progress
from services.registrar.transparency.metrics import LogCollector

REGISTRATIONS = Counter(
    "rod_registrations_total",
    "Single registrations over HTTP by outcome; code is the first rejection code, else none.",
    ["outcome", "code"],
)
DELETIONS = Counter("rod_deletions_total", "Deletions recorded over HTTP, by reason.", ["reason"])
BATCH_RECORDS = Histogram(
    "rod_batch_records",
    "Records per uploaded bulk file.",
    buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
)
BATCH_OUTCOMES = Counter(
    "rod_batch_record_outcomes_total", "Records of uploaded bulk files, by outcome.", ["outcome"]
)
IMPACT_RECEIPTS = Counter(
    "rod_registrar_impact_receipts_total",
    "Delivery receipts and issued extracts the registrar read, by topic and outcome.",
    ["topic", "outcome"],
)

for _outcome in ("accepted", "duplicate", "rejected"):  # shown as 0 before the first upload
    BATCH_OUTCOMES.labels(outcome=_outcome)
RELAY_PUBLISHED = Counter(
    "rod_relay_published_events_total",
    "Events the relay published to rod.results.v1 (confirmed by the broker)."
)
RELAY_LAST_PUBLISHED = Gauge(
    "rod_relay_last_published_timestamp_seconds", "When the relay last published a batch (Unix time)."
)

_REASONS = frozenset(DELETION_REASONS)


def enabled() -> bool:
    """False when ROD_METRICS=off: no `/metrics` endpoint and no scrape-time collectors."""
    return os.environ.get("ROD_METRICS", "on").strip().lower() not in ("off", "0", "false", "no")


def relay_published(events: int) -> None:
    RELAY_PUBLISHED.inc(events)
    RELAY_LAST_PUBLISHED.set(time.time())


def count_deletion(reason: str) -> None:
    DELETIONS.labels(reason=reason if reason in _REASONS else "OTHER").inc()


class RelayCollector(Collector):
    """Relay progress of one event store, read when scraped."""

    def __init__(self, event_store: EventStore) -> None:
        self.store = event_store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.store.reading() as conn:
            head = conn.execute(select(chain_head.c.position)).scalar_one()
            published = conn.execute(select(relay_progress.c.published_position)).scalar_one()
        yield GaugeMetricFamily("rod_store_position", "Position of the last stored event.", value=head)
        yield GaugeMetricFamily(
            "rod_relay_published_position", "Position of the last event the relay published.", value=published
        )
        yield GaugeMetricFamily(
            "rod_relay_lag_events", "Stored events the relay has not published yet.", value=head - published
        )


class Metrics:
    """What `/metrics` shows: the process-wide registry plus this app's store collectors."""

    def __init__(self, event_store: EventStore) -> None:
        self.own = CollectorRegistry(auto_describe=True)
        self.own.register(RelayCollector(event_store))
        self.own.register(LogCollector(event_store))

    def render(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.own)
