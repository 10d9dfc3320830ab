"""Report arithmetic: pure functions from the facts of a period to the report's content.

Nothing here touches a database or a file. The content is plain dicts and lists in a fixed
order (institutions by code, rows by deletion time then position, reasons and consumers in
the order below), so rendering it twice gives the same bytes.

The deletion rate of an institution in a period is its deletions divided by the results it
registered in the same period (registration events); with nothing registered it has no
rate (None). A sector's median is over the institutions that registered in that sector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from statistics import median

from services.audit.periods import Period, local_month, local_time
from services.kernel.identifiers import mask_person_number

REASONS = (
    "FRAUD",
    "ADMINISTRATIVE_ERROR",
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT",
    "WRONG_PERSON_OR_DATA",
    "OTHER",
)
CONSUMERS = ("cibg-big", "mijnoverheid", "extract")  # subscriptions downstream, in report order
HISTORY = 6  # periods shown: this one and the five before it
NATIONAL = "national"


@dataclass(frozen=True)
class Deletion:
    """One deletion in the period, with its registration and what had reached the chain."""

    position: int
    event_id: str
    result_id: str
    institution: str
    sector: str
    programme_code: str
    programme_name: str
    diploma_number: str
    diploma_date: str
    person_last3: str
    registered_at: int  # ms
    deleted_at: int  # ms
    reason: str
    received_by: tuple[str, ...]  # subscriptions that had a DELIVERY before the deletion
    extract_issued: bool  # an extract of this registration was issued before the deletion
    confirmed_by: tuple[str, ...] = ()  # of those, the ones that acknowledged it before the deletion


@dataclass
class PeriodFacts:
    """Everything a period's reports are made of, read from the verified projection."""

    period: Period
    provisional: bool
    institutions: list[str]  # every institution registered in the log before the period's end
    deletions: list[Deletion]
    registered: dict[tuple[str, str], int]  # (institution, sector) → registrations in the period
    deleted: dict[tuple[str, str], int]  # (institution, sector) → deletions in the period
    history: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    # period id → institution → (registrations, deletions), for this period and the ones before

    @cached_property
    def deletions_of(self) -> dict[str, list[Deletion]]:
        """Deletions grouped by institution (each list in report order)."""
        grouped: dict[str, list[Deletion]] = {}
        for d in self.deletions:
            grouped.setdefault(d.institution, []).append(d)
        return grouped

    @cached_property
    def sectors_of(self) -> dict[str, dict[str, int]]:
        """institution → sector → registrations in the period."""
        grouped: dict[str, dict[str, int]] = {}
        for (institution, sector), n in sorted(self.registered.items()):
            grouped.setdefault(institution, {})[sector] = n
        return grouped

    @cached_property
    def medians(self) -> dict[str, dict[str, float | int | None]]:
        return sector_medians(self)


def rate(deletions: int, registrations: int) -> float | None:
    """Deletions per registration, rounded to 4 decimals; None with nothing registered.

    >>> rate(3, 200), rate(1, 0)
    (0.015, None)
    """
    return round(deletions / registrations, 4) if registrations else None


def median_rate(rates: Iterable[float | None]) -> float | None:
    """The median of the defined rates (None when there are none), rounded like a rate.

    >>> median_rate([0.1, None, 0.3]), median_rate([0.1, 0.2, 0.4]), median_rate([None])
    (0.2, 0.2, None)
    """
    known = [r for r in rates if r is not None]
    return round(median(known), 4) if known else None


def share(part: int, whole: int) -> float | None:
    """part / whole rounded to 4 decimals; None for an empty whole."""
    return round(part / whole, 4) if whole else None


def consumers_in(deletions: Sequence[Deletion]) -> list[str]:
    """The known consumers, then any other subscription seen, sorted."""
    seen = {c for d in deletions for c in d.received_by}
    return [*CONSUMERS, *sorted(seen - set(CONSUMERS))]


def sector_medians(facts: PeriodFacts) -> dict[str, dict[str, float | int | None]]:
    """Per sector: the institutions that registered in it and their median deletion rate."""
    by_sector: dict[str, list[float | None]] = {}
    for (institution, sector), registrations in sorted(facts.registered.items()):
        by_sector.setdefault(sector, []).append(
            rate(facts.deleted.get((institution, sector), 0), registrations)
        )
    return {
        sector: {"institutions": len(rates), "median_rate": median_rate(rates)}
        for sector, rates in sorted(by_sector.items())
    }


def impact(deletions: Sequence[Deletion], consumers: Sequence[str]) -> dict[str, object]:
    """How many deletions had already reached each consumer, any consumer, or an extract."""
    total = len(deletions)
    received = Counter(c for d in deletions for c in d.received_by)
    confirmed = Counter(c for d in deletions for c in d.confirmed_by)
    extracts = sum(d.extract_issued for d in deletions)
    reached = sum(bool(d.received_by) or d.extract_issued for d in deletions)
    return {
        "by_consumer": {c: {"count": received[c], "share": share(received[c], total),
                            "confirmed": confirmed[c]} for c in consumers},
        "extract_issued": {"count": extracts, "share": share(extracts, total)},
        "any": {"count": reached, "share": share(reached, total)},
    }


def counted(deletions: Sequence[Deletion], period: Period) -> dict[str, dict[str, int]]:
    """Deletions by reason (every reason, zero included) and by Dutch calendar month."""
    reasons = Counter(d.reason for d in deletions)
    months = Counter(local_month(d.deleted_at) for d in deletions)
    return {
        "by_reason": {r: reasons[r] for r in (*REASONS, *sorted(set(reasons) - set(REASONS)))},
        "by_month": {m: months[m] for m in period.months()},
    }


def row(d: Deletion) -> dict[str, object]:
    """One deletion as the report shows it (the person number masked)."""
    return {
        "result_id": d.result_id,
        "person_number": mask_person_number(d.person_last3),
        "diploma_number": d.diploma_number,
        "programme_code": d.programme_code,
        "programme_name": d.programme_name,
        "sector": d.sector,
        "diploma_date": d.diploma_date,
        "registered_at": local_time(d.registered_at),
        "deleted_at": local_time(d.deleted_at),
        "reason": d.reason,
        "received_by": list(d.received_by),
        "confirmed_by": list(d.confirmed_by),
        "extract_issued": d.extract_issued,
    }


def _header(facts: PeriodFacts, scope: str) -> dict[str, object]:
    return {
        "period": facts.period.id,
        "institution": scope,
        "from": facts.period.start.isoformat(),
        "until": facts.period.end.isoformat(),
        "provisional": facts.provisional,
    }


def institution_report(facts: PeriodFacts, code: str) -> dict[str, object]:
    """The report of one institution: totals, breakdowns, comparisons and its rows."""
    mine = facts.deletions_of.get(code, [])
    registrations = sum(facts.sectors_of.get(code, {}).values())
    medians = facts.medians
    sectors = sorted(set(facts.sectors_of.get(code, {})) | {d.sector for d in mine})
    return {
        **_header(facts, code),
        "totals": {
            "deletions": len(mine),
            "registrations": registrations,
            "deletion_rate": rate(len(mine), registrations),
        },
        **counted(mine, facts.period),
        "chain_impact": impact(mine, consumers_in(mine)),
        "sectors": [
            {
                "sector": s,
                "registrations": facts.registered.get((code, s), 0),
                "deletions": facts.deleted.get((code, s), 0),
                "deletion_rate": rate(facts.deleted.get((code, s), 0), facts.registered.get((code, s), 0)),
                "sector_median_rate": medians.get(s, {}).get("median_rate"),
                "institutions_in_sector": medians.get(s, {}).get("institutions", 0),
            }
            for s in sectors
        ],
        "history": _history(facts, code),
        "deletions": [row(d) for d in mine],
    }


def _history(facts: PeriodFacts, code: str | None) -> list[dict[str, object]]:
    out = []
    for period_id, per_institution in sorted(facts.history.items()):
        if code is None:
            registrations = sum(r for r, _d in per_institution.values())
            deletions = sum(d for _r, d in per_institution.values())
        else:
            registrations, deletions = per_institution.get(code, (0, 0))
        out.append({"period": period_id, "registrations": registrations, "deletions": deletions,
                    "deletion_rate": rate(deletions, registrations)})
    return out


def national_report(facts: PeriodFacts) -> dict[str, object]:
    """DUO's overview: national totals and breakdowns, sector medians, one line per institution."""
    registrations = sum(facts.registered.values())
    per_institution = []
    for code in facts.institutions:
        mine = facts.deletions_of.get(code, [])
        registered = sum(facts.sectors_of.get(code, {}).values())
        reasons = Counter(d.reason for d in mine)
        per_institution.append({
            "institution": code,
            "sectors": sorted(set(facts.sectors_of.get(code, {})) | {d.sector for d in mine}),
            "registrations": registered,
            "deletions": len(mine),
            "deletion_rate": rate(len(mine), registered),
            "by_reason": {r: reasons[r] for r in REASONS},
            "reached_chain": sum(bool(d.received_by) or d.extract_issued for d in mine),
            "extract_issued": sum(d.extract_issued for d in mine),
        })
    return {
        **_header(facts, NATIONAL),
        "totals": {
            "deletions": len(facts.deletions),
            "registrations": registrations,
            "deletion_rate": rate(len(facts.deletions), registrations),
            "institutions": len(facts.institutions),
            "institutions_with_deletions": len({d.institution for d in facts.deletions}),
        },
        **counted(facts.deletions, facts.period),
        "chain_impact": impact(facts.deletions, consumers_in(facts.deletions)),
        "sectors": [{"sector": s, **v} for s, v in facts.medians.items()],
        "history": _history(facts, None),
        "institutions": per_institution,
    }
