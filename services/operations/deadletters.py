"""The operator's view over the dead letters of every consuming service.

Each service keeps its own table (distributor_deadletters, audit_deadletters,
registrar_deadletters) in its own database; this module reads them through each
service's database URL and names a letter "<service>:<number>" (e.g. distributor:3).
`counts` is only COUNT queries: `rod topics`, the console and /metrics call it often.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC
from typing import Any

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Engine

from services.kernel.database import make_engine
from services.kernel.deadletters import OPEN, DeadLetterBook, Failed, deadletter_table, is_transient
from services.kernel.settings import Settings

# service → its table (in that service's own database)
TABLES = {
    "distributor": "distributor_deadletters",
    "audit": "audit_deadletters",
    "registrar": "registrar_deadletters",
}

_metadata = MetaData()
_tables = {service: deadletter_table(_metadata, name) for service, name in TABLES.items()}
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class UnknownDeadLetter(LookupError):
    """No dead letter with this id."""


def _engine(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def book(settings: Settings, service: str) -> DeadLetterBook | None:
    """The dead letters of one service, or None while that service has not made its table yet."""
    engine = _engine(settings.database_urls[service])
    if not inspect(engine).has_table(TABLES[service]):
        return None
    return DeadLetterBook(engine, _tables[service], service)


def parse_id(text: str) -> tuple[str, int]:
    service, sep, number = text.partition(":")
    if not sep or service not in TABLES or not number.isdigit():
        raise UnknownDeadLetter(f"not a dead-letter id: {text!r} (expected SERVICE:NUMBER)")
    return service, int(number)


def counts(settings: Settings) -> dict[str, Any]:
    """{"open": n, "total": m, "by_service": {service: {"open", "total"}}}."""
    by_service = {}
    for service in TABLES:
        found = book(settings, service)
        opened, total = found.counts() if found else (0, 0)
        by_service[service] = {"open": opened, "total": total}
    return {
        "open": sum(x["open"] for x in by_service.values()),
        "total": sum(x["total"] for x in by_service.values()),
        "by_service": by_service,
    }


def _describe(service: str, row: Any) -> dict[str, Any]:
    at = row.at if row.at is None or row.at.tzinfo else row.at.replace(tzinfo=UTC)  # SQLite: naive UTC
    return {
        "id": f"{service}:{row.id}",
        "at": at.isoformat() if at is not None else None,
        "service": service,
        "origin": {"topic": row.topic, "partition": row.partition, "offset": row.offset},
        "reason": {"code": row.error_code, "message": row.error_message},
        "status": row.status,
        "attempt": row.attempt,
    }


def list_all(settings: Settings) -> list[dict[str, Any]]:
    """Every dead letter of every service (open and closed: nothing is removed)."""
    out = []
    for service in TABLES:
        found = book(settings, service)
        if found:
            out.extend(_describe(service, row) for row in found.list())
    return sorted(out, key=lambda x: (x["at"] or "", x["id"]))


def open_ids(settings: Settings) -> list[str]:
    return [x["id"] for x in list_all(settings) if x["status"] == OPEN]


# --- acting on them ------------------------------------------------------------------------


def _origin(row: Any) -> dict[str, Any]:
    return {"topic": row.topic, "partition": row.partition, "offset": row.offset}


def _value(row: Any) -> bytes:
    return b"" if row.value is None else bytes(row.value)


def _replay_distributor(settings: Settings, bootstrap: str, row: Any) -> str:
    """Decode, check and decide for the live subscriptions in ONE ledger transaction, with the
    distributor's own machinery (UNIQUE(subscription, event_id): an event already decided is
    not decided again), then send feed messages and receipts as the loop does."""
    from services.distributor import decide as d
    from services.distributor.feeds import DELIVERIES_TOPIC, Publisher, ensure_topic
    from services.distributor.loop import Distributor, Item, Reader

    dist = Distributor(settings, bootstrap)
    try:
        name, event = dist.codec.decode(_value(row))
        d.check_event(name, event)
        record = _Record(row)
        item = Item(row.partition, row.offset, name, event, record)
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
    from services.distributor import decide as d
    from services.registrar.store import event_id_for

    if name != d.REGISTERED or not subs:
        return set()
    deletion = event_id_for(event["result_id"], event["version"] + 1)
    found = dist.ledger.existing(conn, [(s.name, deletion) for s in subs])
    ended = (d.NOT_DELIVERED, d.HOLD_CANCELLED)  # what a deletion decides (v + 1 may be a correction)
    return {sub for (sub, _event), row in found.items() if row.kind == "WITHDRAWAL" or row.reason in ended}


def _skipped_row(subscription: str, event: dict[str, Any], partition: int) -> dict[str, Any]:
    from services.distributor.ledger import now

    return {
        "subscription": subscription, "event_id": event["event_id"], "result_id": event["result_id"],
        "institution": event["institution"], "state": "skipped", "kind": None, "reason": "DELETED_FIRST",
        "delivery_id": None, "payload": None, "partition": partition, "due_at": None,
        "delivered_at": None, "decided_at": now(),
    }


def _replay_audit(settings: Settings, _bootstrap: str, row: Any) -> str:
    """Apply to the projection (rows inserted if absent; the chain check fills its gap)."""
    from services.audit.projection import Batch, Projection
    from services.audit.reader import Decoder, now_ms

    projection = Projection(settings.database_urls["audit"])
    try:
        batch = Batch()
        Decoder(settings).add(batch, row.topic, _value(row))
        projection.apply(batch, now_ms())
        return f"applied to the projection ({len(batch)} row(s), inserted if absent)"
    finally:
        projection.dispose()


def _replay_registrar(settings: Settings, _bootstrap: str, row: Any) -> str:
    """Record the receipt (idempotent by delivery_id / extract_id)."""
    from services.kernel.codec import DecodeError
    from services.registrar.impact import EXPECTED, ImpactReader, ImpactStore

    engine = make_engine(settings.database_urls["registrar"])
    try:
        store = ImpactStore(engine)
        name, record = ImpactReader(store, settings, "").codec.decode(_value(row))
        if name not in EXPECTED:
            raise DecodeError("RECORD_UNEXPECTED", name)
        store.record([(name, record)])
        return f"{name} recorded (inserted if absent)"
    finally:
        engine.dispose()


REPLAYERS = {"distributor": _replay_distributor, "audit": _replay_audit, "registrar": _replay_registrar}


class _Record:
    """The few consumer-record fields the services' processing reads."""

    def __init__(self, row: Any) -> None:
        self.topic, self.partition, self.offset = row.topic, row.partition, row.offset
        self.key = None if row.key is None else bytes(row.key)
        self.value = _value(row)


def _action_log(settings: Settings, bootstrap: str | None) -> Any:
    from services.operations.actions import ActionLog
    from services.operations.store import OperationsStore

    return ActionLog(OperationsStore(settings.database_urls["operations"]), settings, bootstrap)


def replay(
    settings: Settings,
    bootstrap: str,
    ids: list[str] | None = None,
    all_open: bool = False,
    operator: str = "",
    via: str = "cli",
    dry_run: bool = False,
    reason: str = "",
) -> list[dict[str, Any]]:
    """Run each letter's original bytes through its service's own processing again.

    Outcomes: `replayed` (closed), `failed` (still open: the new reason, attempt + 1; never
    re-queued by itself), `error` (a transient fault: database or broker away; nothing
    counted, try again), `not open` (already replayed or discarded: nothing changes),
    `unknown`, and with `dry_run` `would replay` (nothing changes, nothing recorded).
    """
    targets = open_ids(settings) if all_open else list(ids or [])
    log = None if dry_run else _action_log(settings, bootstrap)
    outcomes = []
    for target in targets:
        outcome = _replay_one(settings, bootstrap, target, operator, dry_run, reason)
        if log is not None and outcome["outcome"] != "unknown":
            log.record(operator, via, "deadletter-replay", target, reason,
                       f"{outcome['outcome']}: {outcome['detail']}"[:500])
        outcomes.append(outcome)
    return outcomes


def _replay_one(
    settings: Settings, bootstrap: str, target: str, operator: str, dry_run: bool, why: str
) -> dict[str, Any]:
    try:
        service, number = parse_id(target)
    except UnknownDeadLetter as exc:
        return {"id": target, "outcome": "unknown", "detail": str(exc), "failed": True}
    found = book(settings, service)
    row = found.get(number) if found else None
    if found is None or row is None:
        return {"id": target, "outcome": "unknown", "detail": "no such dead letter", "failed": True}
    base = {"id": target, "service": service, "origin": _origin(row)}
    if row.status != OPEN:
        return {**base, "outcome": "not open", "detail": f"already {row.status}: nothing changes",
                "failed": False}
    if dry_run:
        where = f"{service}, from {row.topic} partition {row.partition} offset {row.offset}"
        return {**base, "outcome": "would replay", "detail": f"would run through {where}", "failed": False}
    try:
        detail = REPLAYERS[service](settings, bootstrap, row)
    except Exception as exc:  # noqa: BLE001 - what went wrong is the outcome, kept on the letter
        if is_transient(exc):  # the letter did not fail: its database or the broker is away
            return {**base, "outcome": "error", "detail": f"{type(exc).__name__}: not reachable, try again",
                    "failed": True}
        letter = found.record_failed_replay(number, exc)
        with contextlib.suppress(Exception):  # broker away: the service publishes it on its next start
            found.publish_waiting(settings, bootstrap)  # the new attempt too (rod.attempt says which)
        code, message = (letter.error_code, letter.error_message) if letter else ("?", "")
        return {**base, "outcome": "failed", "detail": f"{code}: {message}", "reason": {"code": code,
                "message": message}, "attempt": letter.attempt if letter else None, "failed": True}
    found.mark_replayed(number, operator, why)
    return {**base, "outcome": "replayed", "detail": detail, "failed": False}


def discard(settings: Settings, target: str, reason: str, operator: str, via: str = "cli",
            bootstrap: str | None = None) -> dict[str, Any]:
    """Close one open letter on purpose (it stays listed, as discarded); recorded as an action."""
    service, number = parse_id(target)
    found = book(settings, service)
    row = found.get(number) if found else None
    if found is None or row is None:
        raise UnknownDeadLetter(f"no such dead letter: {target}")
    if found.discard(number, reason, operator):
        outcome = {"id": target, "outcome": "discarded", "detail": reason, "failed": False}
    else:
        outcome = {"id": target, "outcome": "not open", "detail": f"already {row.status}", "failed": True}
    if bootstrap is None:
        from services.kernel.broker import BrokerUnavailable, resolve_bootstrap

        try:
            bootstrap = resolve_bootstrap(settings)
        except BrokerUnavailable:
            bootstrap = None  # the action waits in the outbox
    _action_log(settings, bootstrap).record(operator, via, "deadletter-discard", target, reason,
                                            outcome["outcome"])
    return outcome
