"""The distributor's Prometheus metrics (process-wide registry; labels: subscription and kind only).

Feed messages are counted once the broker confirmed them (after the flush in `_send`), so
a retried batch is counted again only when it was really sent again. Held deliveries and
each subscription's pending events come from the operations overview (a cached gauge,
services/operations/metrics.py), never from the ledger at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge

FEED_MESSAGES = Counter(
    "rod_feed_messages_total",
    "Feed messages the broker confirmed, by subscription and kind (delivery or withdrawal).",
    ["subscription", "kind"],
)
EVENTS = Counter(
    "rod_distributor_events_total", "Events of rod.results.v1 the distributor decided for its subscriptions."
)
LAST_PROCESSED = Gauge(
    "rod_distributor_last_processed_timestamp_seconds",
    "When the distributor last processed a batch of rod.results.v1 (Unix time).",
)
_KINDS = {"DELIVERY": "delivery", "WITHDRAWAL": "withdrawal"}


_children: dict[tuple[str, str], Any] = {}  # .labels() costs microseconds; a batch has thousands


def sent(outgoing: Iterable[Any]) -> None:
    """Count confirmed feed messages (each has `.subscription` and `.kind`)."""
    counts: dict[tuple[str, str], int] = {}
    for out in outgoing:
        key = (out.subscription, out.kind)
        counts[key] = counts.get(key, 0) + 1
    for (subscription, kind), n in counts.items():
        child = _children.get((subscription, kind))
        if child is None:
            child = _children[(subscription, kind)] = FEED_MESSAGES.labels(
                subscription=subscription, kind=_KINDS.get(kind, "other"))
        child.inc(n)


def processed(events: int) -> None:
    EVENTS.inc(events)
    LAST_PROCESSED.set(time.time())


def known(subscriptions: Iterable[str]) -> None:
    """Every configured subscription shows 0 before its first message (dashboards see no gap)."""
    for name in subscriptions:
        for kind in _KINDS.values():
            FEED_MESSAGES.labels(subscription=name, kind=kind)
