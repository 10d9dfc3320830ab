"""The operator's view over the dead letters of every consuming service.

Each service keeps its own table (distributor_deadletters, audit_deadletters,
registrar_deadletters) in its own database; this module reads them through each
service's database URL and names a letter "<service>:<number>" (e.g. distributor:3).
`counts` is only COUNT queries: `rod topics`, the console and /metrics call it often.
"""

from __future__ import annotations

import threading
from datetime import UTC
from typing import Any

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Engine

from services.kernel.database import make_engine
from services.kernel.deadletters import OPEN, DeadLetterBook, deadletter_table
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
