"""Replaying one of the distributor's dead letters: decided and sent as the loop would."""

from __future__ import annotations

from typing import Any

from services.distributor import decide as d
from services.distributor.feeds import DELIVERIES_TOPIC, Publisher, ensure_topic
from services.distributor.ledger import now
from services.distributor.loop import Distributor, Reader
from services.kernel.deadletters import Failed, StoredRecord
from services.kernel.identifiers import event_id_for
from services.kernel.settings import Settings


def replay_dead_letter(settings: Settings, bootstrap: str, row: Any) -> str:
    """Decode, check and decide for the live subscriptions in ONE ledger transaction, with the
    distributor's own machinery (UNIQUE(subscription, event_id): an event already decided is
    not decided again), then send feed messages and receipts as the loop does."""
    dist = Distributor(settings, bootstrap)
    try:
        item = dist.loop.read(StoredRecord(row))  # raises what keeps it a dead letter
        name, event = item.name, item.record
        reader = Reader("deadletter-replay", None)  # type: ignore[arg-type] - decides, never polls
        with dist.ledger.writing() as conn:
            states = dist.ledger.states(conn, lock=True)
            subs = dist._deciding(reader, states)
            skipped = _deleted_first(dist, conn, subs, name, event)
            subs = [s for s in subs if s.name not in skipped]
            outgoing, rows, letters = dist._decide(conn, reader, subs, states, [item], [])
            if letters:
                raise Failed(letters[0])
            rows += [_skipped_row(name, event, row.partition) for name in sorted(skipped)]
            dist.ledger.insert(conn, rows)
        if outgoing:
            for topic in {o.topic for o in outgoing} | {DELIVERIES_TOPIC}:
                ensure_topic(settings, bootstrap, topic)
            dist.publisher = Publisher(settings, bootstrap, dist.codec)
            dist._send(outgoing, [])
        sent = sorted({o.subscription for o in outgoing})
        parts = [f"{len(rows)} new decision(s)", f"sent to {', '.join(sent)}" if sent else "nothing sent"]
        if skipped:
            parts.append(f"not delivered to {', '.join(sorted(skipped))}: its deletion was decided first")
        return "; ".join(parts)
    finally:
        dist.close()
        dist.ledger.dispose()


def _deleted_first(dist: Any, conn: Any, subs: list[Any], name: str, event: dict[str, Any]) -> set[str]:
    """Subscriptions that already decided the deletion of this registration.

    A registration that comes back through a replay may be older than its deletion, which was
    decided (as NOT_DELIVERED) while the registration sat here. Delivering it now would put a
    deleted result on a feed and never withdraw it: it is recorded as skipped instead. The
    deletion's event id is the registration's result and version + 1 (deterministic ids); a
    deletion that is itself still a dead letter is decided by its own replay, which finds the
    registration's decision and withdraws it as usual.
    """
    if name != d.REGISTERED or not subs:
        return set()
    deletion = event_id_for(event["result_id"], event["version"] + 1)
    found = dist.ledger.existing(conn, [(s.name, deletion) for s in subs])
    ended = (d.NOT_DELIVERED, d.HOLD_CANCELLED)  # what a deletion decides (v + 1 may be a correction)
    return {sub for (sub, _event), row in found.items() if row.kind == "WITHDRAWAL" or row.reason in ended}


def _skipped_row(subscription: str, event: dict[str, Any], partition: int) -> dict[str, Any]:
    return {
        "subscription": subscription, "event_id": event["event_id"], "result_id": event["result_id"],
        "institution": event["institution"], "state": "skipped", "kind": None, "reason": "DELETED_FIRST",
        "delivery_id": None, "payload": None, "feed_json": None, "partition": partition, "due_at": None,
        "delivered_at": None, "decided_at": now(),
    }
