"""The log's Prometheus metrics, read from the registrar's tables when scraped.

The registrar's `/metrics` registers this collector beside the relay's (services.registrar.
metrics.Metrics), so the front door shows how far the log is even when the log component that
builds the tree and signs checkpoints is not running: that is when the numbers matter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.registrar.store import EventStore
from services.registrar.transparency.progress import read


class LogCollector(Collector):
    """Tree size, how far it and the newest checkpoint are behind the store, the checkpoint's age
    and the checkpoints not yet on rod.checkpoints.v1."""

    def __init__(self, event_store: EventStore) -> None:
        self.store = event_store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.store.reading() as conn:
            progress = read(conn)
        age = progress.age(datetime.now(UTC))
        yield GaugeMetricFamily("rod_log_tree_size",
                                "Leaves in the log's stored Merkle tree (events it holds).",
                                value=progress.tree_size)
        yield GaugeMetricFamily("rod_log_tree_behind_events",
                                "Stored events not yet in the log's tree (store position - tree size).",
                                value=progress.tree_behind)
        yield GaugeMetricFamily("rod_log_checkpoint_tree_size",
                                "Tree size of the newest signed checkpoint (0: none signed yet).",
                                value=progress.checkpoint_size or 0)
        yield GaugeMetricFamily("rod_log_checkpoint_behind_events",
                                "Stored events no signed checkpoint covers yet (store position - the "
                                "newest checkpoint's tree size).", value=progress.unsigned)
        yield GaugeMetricFamily("rod_log_checkpoint_age_seconds",
                                "Seconds since the newest checkpoint was signed (+Inf: none signed yet).",
                                value=math.inf if age is None else age)
        yield GaugeMetricFamily("rod_log_checkpoints_unpublished",
                                "Signed checkpoints not yet sent on rod.checkpoints.v1.",
                                value=progress.unpublished)
