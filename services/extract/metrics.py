"""The extract service's Prometheus metrics (process-wide registry).

Counters move as things happen in this process; the outbox gauge is read from the store
when scraped (one small query), so "issued but not on rod.extracts.v1" can alert whichever
process runs the outbox.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge

FEED_APPLIED = Counter(
    "rod_extract_feed_messages_total",
    "Messages of rod.feed.extract.v1 the extract service stored, by kind (delivery, withdrawal, repeat).",
    ["kind"],
)
ISSUED = Counter("rod_extracts_issued_total", "Extracts issued (one per document, any number of results).")
PUBLISHED = Counter("rod_extract_issued_published_total", "ExtractIssued messages sent on rod.extracts.v1.")
VERIFICATIONS = Counter(
    "rod_extract_verifications_total", "Verification answers, by outcome (valid, withdrawn, not_found, "
    "throttled).", ["outcome"],
)
LAST_APPLIED = Gauge(
    "rod_extract_last_applied_timestamp_seconds", "When the extract service last stored a feed batch."
)
UNPUBLISHED = Gauge(
    "rod_extract_outbox_unpublished", "Issued extract items not yet sent as ExtractIssued on rod.extracts.v1."
)
for _kind in ("delivery", "withdrawal", "repeat"):
    FEED_APPLIED.labels(kind=_kind)
for _outcome in ("valid", "withdrawn", "not_found", "throttled"):
    VERIFICATIONS.labels(outcome=_outcome)


def follow(store: Any) -> None:
    """Export this store's outbox length when scraped (the last store followed wins)."""
    UNPUBLISHED.set_function(lambda: store.counts().unpublished)


def applied(delivered: int, withdrawn: int, repeated: int) -> None:
    FEED_APPLIED.labels(kind="delivery").inc(delivered)
    FEED_APPLIED.labels(kind="withdrawal").inc(withdrawn)
    FEED_APPLIED.labels(kind="repeat").inc(repeated)
    LAST_APPLIED.set(time.time())
