"""The operator's view over the dead letters of every consuming service.

Each service keeps its own table (distributor_deadletters, audit_deadletters,
registrar_deadletters, extract_deadletters) in its own database; this module reads them
through each service's database URL and names a letter "<service>:<number>" (e.g.
distributor:3). A replay runs the letter through its own service's processing: each service
gives that function, and the top (services/app.py) installs them in the kernel's registry.
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
from services.kernel.deadletters import OPEN, DeadLetterBook, deadletter_table, is_transient, replayer
from services.kernel.settings import Settings

# service → its table (in that service's own database)
TABLES = {
    "distributor": "distributor_deadletters",
    "audit": "audit_deadletters",
    "registrar": "registrar_deadletters",
    "extract": "extract_deadletters",
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
        detail = replayer(service)(settings, bootstrap, row)
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
