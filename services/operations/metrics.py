"""What the operations overview knows, as Prometheus metrics: consumer lag per group and
partition, each group's status, each subscription's pending events and their age, held
deliveries, dead letters per service.

A scrape never asks the broker or counts a table: the collector reads the last overview the
monitor of `rod up` gathered (every few seconds), so `/metrics` stays fast under load and
the broker is asked at one steady rate however often Prometheus scrapes. Only when the
overview lacks the dead letters per service are they counted here, at most every
DEADLETTER_REFRESH seconds (COUNT queries on small tables).

    install(monitor, settings)   # once per process; a second call only swaps the source
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("operations.metrics")

STATUSES = ("OK", "LAGGING", "STALLED", "STOPPED")
SERVICES = ("distributor", "audit", "registrar")
DEADLETTER_REFRESH = 5.0  # seconds

Overview = dict[str, Any]


class OverviewCollector(Collector):
    """Exports the latest overview dict (`rod topics --json`) that `latest()` returns."""

    def __init__(self, latest: Callable[[], Overview | None], settings: Settings | None = None) -> None:
        self.latest = latest
        self.settings = settings
        self._counted: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        return iter(())  # names vary with the overview: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        overview = self.latest() or {}
        yield from _groups(overview.get("groups") or [])
        yield from _subscriptions(overview.get("subscriptions") or [])
        yield from _consumers(overview.get("consumers") or [])
        yield from _topics(overview.get("topics") or [])
        yield from self._deadletters(overview.get("deadletters") or {})
        refreshed = GaugeMetricFamily(
            "rod_overview_last_refresh_timestamp_seconds",
            "When the operations overview behind the lag metrics was last gathered (Unix time; 0: never).",
        )
        refreshed.add_metric([], float(overview.get("_gathered_at") or 0))
        yield refreshed

    def _deadletters(self, given: dict[str, Any]) -> Iterator[Any]:
        by_service = given.get("by_service") or self._counts()
        opened = GaugeMetricFamily("rod_deadletters_open",
                                   "Dead letters open, by the service that recorded them.",
                                   labels=["service"])
        total = CounterMetricFamily("rod_deadletters",
                                    "Dead letters ever recorded, by service (none is removed).",
                                    labels=["service"])
        for service in sorted({*SERVICES, *by_service}):
            found = by_service.get(service) or {}
            opened.add_metric([service], float(found.get("open", 0)))
            total.add_metric([service], float(found.get("total", 0)))
        yield opened
        yield total

    def _counts(self) -> dict[str, Any]:
        if self.settings is None:
            return {}
        with self._lock:
            if self._counted is None or time.monotonic() - self._counted[0] >= DEADLETTER_REFRESH:
                from services.operations import deadletters

                try:
                    counted = deadletters.counts(self.settings)["by_service"]
                except Exception as exc:  # noqa: BLE001 - a database away: show the last counts
                    log.warning("metrics_deadletters_unavailable", error=type(exc).__name__)
                    counted = self._counted[1] if self._counted else {}
                self._counted = (time.monotonic(), counted)
            return self._counted[1]


def _groups(groups: list[dict[str, Any]]) -> Iterator[Any]:
    lag = GaugeMetricFamily("rod_consumer_lag_messages",
                            "Messages behind the end of the partition, per consumer group (as the broker "
                            "reports end offsets: the local broker may report short).",
                            labels=["group", "topic", "partition"])
    committed = GaugeMetricFamily("rod_consumer_committed_offset", "The group's committed offset.",
                                  labels=["group", "topic", "partition"])
    status = GaugeMetricFamily("rod_consumer_group_status",
                               "1 for the group's current status on a topic (OK, LAGGING, STALLED, STOPPED).",
                               labels=["group", "topic", "status"])
    members = GaugeMetricFamily("rod_consumer_group_members", "Live members of the group.",
                                labels=["group", "topic"])
    for g in groups:
        group, topic = str(g.get("group")), str(g.get("topic"))
        for p in g.get("partitions") or []:
            labels = [group, topic, str(p.get("partition"))]
            if p.get("lag") is not None:
                lag.add_metric(labels, float(p["lag"]))
            if p.get("committed") is not None:
                committed.add_metric(labels, float(p["committed"]))
        for s in STATUSES:
            status.add_metric([group, topic, s], 1.0 if g.get("status") == s else 0.0)
        if isinstance(g.get("members"), int | float):
            members.add_metric([group, topic], float(g["members"]))
    yield from (lag, committed, status, members)


def _subscriptions(subscriptions: list[dict[str, Any]]) -> Iterator[Any]:
    pending = GaugeMetricFamily("rod_subscription_pending_events",
                                "Stored events not yet decided for the subscription (exact, from stores).",
                                labels=["subscription"])
    age = GaugeMetricFamily("rod_subscription_pending_age_seconds",
                            "How long the oldest pending event has waited (0 when none is pending).",
                            labels=["subscription"])
    paused = GaugeMetricFamily("rod_subscription_paused", "1 while the subscription is paused.",
                               labels=["subscription"])
    held = GaugeMetricFamily("rod_subscription_held_deliveries",
                             "Deliveries held back by the subscription's hold window.",
                             labels=["subscription"])
    for s in subscriptions:
        name = [str(s.get("name"))]
        pending.add_metric(name, float(s.get("pending") or 0))
        age.add_metric(name, float(s.get("pending_age_seconds") or 0))
        paused.add_metric(name, 1.0 if s.get("state") == "paused" else 0.0)
        held.add_metric(name, float(s.get("held") or 0))
    yield from (pending, age, paused, held)


def _consumers(consumers: list[dict[str, Any]]) -> Iterator[Any]:
    unacknowledged = GaugeMetricFamily(
        "rod_feed_unacknowledged_messages",
        "Messages on the consumer's HTTP feed it has not acknowledged yet.",
        labels=["consumer", "subscription"])
    waiting = GaugeMetricFamily(
        "rod_feed_oldest_unacknowledged_age_seconds",
        "How long the oldest unacknowledged message has been on the feed (0 when none waits): it grows "
        "for as long as the consumer acknowledges nothing.", labels=["consumer", "subscription"])
    fetched = GaugeMetricFamily(
        "rod_feed_last_fetch_timestamp_seconds",
        "When the consumer last fetched its HTTP feed (Unix time; 0: never).",
        labels=["consumer", "subscription"])
    for c in consumers:
        labels = [str(c.get("name")), str(c.get("subscription"))]
        unacknowledged.add_metric(labels, float(c.get("unacknowledged") or 0))
        waiting.add_metric(labels, float(c.get("oldest_unacknowledged_age_seconds") or 0))
        last = c.get("last_fetch_at")
        fetched.add_metric(labels, datetime.fromisoformat(last).timestamp() if last else 0.0)
    yield from (unacknowledged, waiting, fetched)


def _topics(topics: list[dict[str, Any]]) -> Iterator[Any]:
    messages = GaugeMetricFamily("rod_topic_messages",
                                 "Messages on the topic from its end offsets, as the broker reports them.",
                                 labels=["topic"])
    for t in topics:
        if t.get("messages") is not None:
            messages.add_metric([str(t.get("name"))], float(t["messages"]))
    yield messages


_installed: OverviewCollector | None = None
_install_lock = threading.Lock()


def install(monitor: Any, settings: Settings) -> OverviewCollector | None:
    """Export `monitor.latest` on the process-wide registry; registered once per process
    (tests build several apps in one process). None when ROD_METRICS=off."""
    from services.registrar.metrics import enabled

    global _installed
    if not enabled():
        return None

    seen: list[Any] = [None, 0.0]  # the last overview object and when it was first seen here

    def latest() -> Overview | None:
        found = getattr(monitor, "latest", None)
        if found is None:
            return None
        if found is not seen[0]:
            seen[0], seen[1] = found, time.time()
        return {**found, "_gathered_at": getattr(monitor, "latest_at", None) or seen[1]}

    with _install_lock:
        if _installed is None:
            _installed = OverviewCollector(latest, settings)
            REGISTRY.register(_installed)
        else:
            _installed.latest, _installed.settings = latest, settings
        return _installed
