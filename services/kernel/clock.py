"""The one clock of the stores: UTC at the millisecond precision Avro timestamps keep."""

from __future__ import annotations

from datetime import UTC, datetime


def now_millis() -> datetime:
    """Now in UTC, cut to milliseconds (what an Avro timestamp-millis keeps)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: everything stored is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
