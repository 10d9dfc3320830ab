"""The per-event decision for one subscription: pure functions, no I/O.

registration → (start) → filter → entitlement → hold → a DELIVERY, held or pending
deletion     → what the ledger holds for the registration it ends → a WITHDRAWAL, or
               nothing (never delivered: filtered, cancelled while held, or unknown)

The ledger stores what is decided here, once per (subscription, event); a repeat of the
same event uses the stored decision and never calls these functions again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.distributor.subscriptions import Subscription
from services.kernel.identifiers import uuid5_text

DELIVERY_NAMESPACE = uuid.UUID("8e3f5d2a-6b1c-4c7e-9a0d-2f4b6c8e1a35")

REGISTERED = "ResultRegistered"
DELETED = "ResultDeleted"

# ledger states
HELD, PENDING, PUBLISHED, CANCELLED, SKIPPED = "held", "pending", "published", "cancelled", "skipped"
DELIVERED_STATES = (PENDING, PUBLISHED)  # pending may already be on the feed: treat as delivered

# reasons
FILTERED = "FILTERED"  # the filter does not select this result
NOT_DELIVERED = "NOT_DELIVERED"  # a deletion of a result this consumer never got
HOLD_CANCELLED = "HOLD_CANCELLED"  # a deletion while the delivery was held back
HOLD_WINDOW = "HOLD_WINDOW"
PAUSED = "PAUSED"


def delivery_id(subscription: str, event_id: str, kind: str) -> str:
    """Deterministic id of a feed message: what it is (this subscription, event and kind).

    A UUIDv5 (RFC 4122: SHA-1 of namespace and name) of "subscription/event_id/kind",
    written out directly: it is computed for every message, uuid.uuid5 costs three times more.
    """
    return uuid5_text(DELIVERY_NAMESPACE, f"{subscription}/{event_id}/{kind}")


@dataclass(frozen=True)
class Prior:
    """What the ledger holds for the registration a deletion ends (for one subscription)."""

    state: str
    delivery_id: str | None


@dataclass
class Decision:
    """One ledger row to be: skip, hold or deliver an event on one subscription's feed."""

    subscription: str
    event_id: str
    result_id: str
    institution: str
    state: str  # pending | held | skipped
    kind: str | None = None  # DELIVERY | WITHDRAWAL
    reason: str | None = None
    delivery_id: str | None = None
    due_at: datetime | None = None
    message: dict[str, Any] | None = None  # the feed record, delivered_at still to be set
    cancels: str | None = field(default=None)  # event id of the held registration it cancels


def entitled(sub: Subscription, event: dict[str, Any]) -> dict[str, Any]:
    """Only the fields this subscription is entitled to, under their feed names."""
    return {sub.rename.get(f, f): event.get(f) for f in sub.fields}


def applies(sub: Subscription, started_at: datetime | None, event: dict[str, Any]) -> bool:
    """False for events before a `start = "now"` subscription began: it decides nothing on them."""
    return started_at is None or sub.start != "now" or event["recorded_at"] >= started_at


def _address(
    decision: Decision, sub: Subscription, event: dict[str, Any], kind: str,
    withdraws: str | None, fields: dict[str, Any],
) -> None:
    """Make `decision` a feed message of `kind`: the envelope (interfaces.md) plus `fields`."""
    decision.kind = kind
    decision.delivery_id = delivery_id(sub.name, event["event_id"], kind)
    decision.message = {
        "delivery_id": decision.delivery_id,
        "kind": kind,
        "event_id": event["event_id"],
        "result_id": event["result_id"],
        "withdraws": withdraws,
        **fields,
    }


def decide_registered(sub: Subscription, event: dict[str, Any], paused: bool) -> Decision:
    """Skip (filtered), hold (window or paused) or deliver a registration."""
    base = Decision(sub.name, event["event_id"], event["result_id"], event["institution"], SKIPPED)
    if not sub.matches(event):
        base.reason = FILTERED
        return base
    _address(base, sub, event, "DELIVERY", None, entitled(sub, event))
    if paused or sub.hold:
        base.state, base.reason = HELD, PAUSED if paused else HOLD_WINDOW
        base.due_at = event["recorded_at"] + sub.hold
    else:
        base.state = PENDING
    return base


def decide_deleted(sub: Subscription, event: dict[str, Any], prior: Prior | None, paused: bool) -> Decision:
    """A deletion: withdraw what was delivered; what was held or never sent is never delivered."""
    base = Decision(sub.name, event["event_id"], event["result_id"], event["institution"], SKIPPED)
    if prior is None or prior.state not in (HELD, *DELIVERED_STATES):
        base.reason = NOT_DELIVERED
        return base
    if prior.state == HELD:
        base.reason, base.cancels = HOLD_CANCELLED, event["registered_event_id"]
        return base
    _address(base, sub, event, "WITHDRAWAL", prior.delivery_id, dict.fromkeys(sub.message_fields))
    if paused:
        base.state, base.reason, base.due_at = HELD, PAUSED, event["recorded_at"]
    else:
        base.state = PENDING
    return base


def check_event(name: str, event: dict[str, Any]) -> None:
    """Raise ValueError for an event the distributor cannot act on (it goes to the dead letters)."""
    if name not in (REGISTERED, DELETED):
        raise ValueError(f"EVENT_TYPE_UNKNOWN: {name} is not an event of rod.results.v1")
    if not event.get("event_id") or not event.get("result_id"):
        raise ValueError("EVENT_INCOMPLETE: event_id and result_id are required")
