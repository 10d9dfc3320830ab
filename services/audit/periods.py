"""Report periods: `YYYY-05` and `YYYY-11`, bounded at midnight Dutch time (interfaces.md).

A period is named by the month it ends in (its report is due then), not by the months it
covers: `YYYY-05` covers deletions recorded from 1 November of the year before up to and
including 30 April; `YYYY-11` covers 1 May up to and including 31 October. So in November
2026, `2026-11` is the period that just ended (May to October) and the deletions recorded now
belong to `2027-05`. The boundaries are midnight
in Europe/Amsterdam, summer (CEST, +02:00) and winter time (CET, +01:00) alike, so a period
is a half-open interval of instants [start, end).

>>> p = Period.parse("2025-05")
>>> p.start.isoformat(), p.end.isoformat()
('2024-11-01T00:00:00+01:00', '2025-05-01T00:00:00+02:00')
>>> p.covers()
'1 November 2024 up to and including 30 April 2025'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PERIOD_ID = re.compile(r"^(?P<year>\d{4})-(?P<month>05|11)$")


@dataclass(frozen=True, order=True)
class Period:
    """One half-year report period, named by the month its report is due."""

    year: int
    month: int  # 5 or 11

    @classmethod
    def parse(cls, text: str) -> Period:
        """`2025-05` → Period(2025, 5); ValueError for anything else."""
        match = _PERIOD_ID.fullmatch(text)
        if not match or not 1900 < int(match["year"]) < 9999:
            raise ValueError("a period is YYYY-05 or YYYY-11")
        return cls(int(match["year"]), int(match["month"]))

    @classmethod
    def containing(cls, instant: datetime) -> Period:
        """The period an instant (timezone-aware) falls in, by its Dutch local date."""
        local = instant.astimezone(AMSTERDAM)
        if local.month <= 4:
            return cls(local.year, 5)
        if local.month <= 10:
            return cls(local.year, 11)
        return cls(local.year + 1, 5)

    @property
    def id(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def __str__(self) -> str:
        return self.id

    @property
    def start(self) -> datetime:
        """The first instant of the period (midnight in Amsterdam)."""
        if self.month == 5:
            return datetime(self.year - 1, 11, 1, tzinfo=AMSTERDAM)
        return datetime(self.year, 5, 1, tzinfo=AMSTERDAM)

    @property
    def end(self) -> datetime:
        """The first instant after the period (midnight in Amsterdam), exclusive."""
        return datetime(self.year, self.month, 1, tzinfo=AMSTERDAM)

    @property
    def start_ms(self) -> int:
        return to_millis(self.start)

    @property
    def end_ms(self) -> int:
        return to_millis(self.end)

    @property
    def first_day(self) -> date:
        """The first Dutch calendar day the period covers."""
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last Dutch calendar day the period covers (up to and including)."""
        return self.end.date() - timedelta(days=1)

    def covers(self) -> str:
        """The days covered, in English: `1 November 2026 up to and including 30 April 2027`."""
        return f"{english_date(self.first_day)} up to and including {english_date(self.last_day)}"

    def previous(self) -> Period:
        return Period(self.year - 1, 11) if self.month == 5 else Period(self.year, 5)

    def following(self) -> Period:
        return Period(self.year, 11) if self.month == 5 else Period(self.year + 1, 5)

    def history(self, count: int) -> list[Period]:
        """This period and the `count - 1` before it, oldest first."""
        periods = [self]
        while len(periods) < count:
            periods.append(periods[-1].previous())
        return periods[::-1]

    def months(self) -> list[str]:
        """The six Dutch calendar months of the period, `YYYY-MM`, in order."""
        first = self.start
        return [
            f"{first.year + (first.month - 1 + i) // 12:04d}-{(first.month - 1 + i) % 12 + 1:02d}"
            for i in range(6)
        ]

    def is_closed(self, now: datetime) -> bool:
        """True once the period's last instant has passed."""
        return now >= self.end


def english_date(day: date) -> str:
    """`30 April 2027`, whatever the locale."""
    months = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")
    return f"{day.day} {months[day.month - 1]} {day.year}"


def to_millis(instant: datetime) -> int:
    """Milliseconds since the epoch (the Avro timestamp-millis value), exact."""
    return (instant - EPOCH) // timedelta(milliseconds=1)


def from_millis(millis: int) -> datetime:
    """The UTC instant of a timestamp-millis value."""
    return datetime.fromtimestamp(millis / 1000, UTC)


def local_month(millis: int) -> str:
    """`YYYY-MM` of the Dutch local date of an instant."""
    return from_millis(millis).astimezone(AMSTERDAM).strftime("%Y-%m")


def local_time(millis: int) -> str:
    """ISO 8601 in Dutch local time with its offset, to the second: `2025-04-30T23:30:00+02:00`."""
    return from_millis(millis).astimezone(AMSTERDAM).isoformat(timespec="seconds")


def closed_since(first: Period, now: datetime) -> list[Period]:
    """Every closed period from `first` up to the last one closed at `now`, oldest first."""
    periods: list[Period] = []
    period = first
    while period.is_closed(now):
        periods.append(period)
        period = period.following()
    return periods
