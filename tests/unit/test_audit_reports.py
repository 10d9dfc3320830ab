"""The audit service's pure parts: periods at Amsterdam midnight, report arithmetic, the chain
check as events arrive out of order, and deterministic bodies."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import html5lib
import pytest

from services.audit import render
from services.audit.chain_check import ChainCheck, Link
from services.audit.figures import (
    Deletion,
    PeriodFacts,
    institution_report,
    median_rate,
    national_report,
    rate,
    sector_medians,
)
from services.audit.periods import Period, closed_since, local_time, to_millis
from services.kernel.chain import GENESIS
from services.kernel.codec import Codec
from services.kernel.identifiers import mask_person_number

AMS = ZoneInfo("Europe/Amsterdam")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avro"


def ams(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=AMS)


@pytest.mark.parametrize(
    ("instant", "period"),
    [
        (ams(2025, 4, 30, 23, 30), "2025-05"),  # summer time (+02:00): still winter's period
        (ams(2025, 5, 1, 0, 30), "2025-11"),
        (ams(2025, 10, 31, 23, 30), "2025-11"),  # winter time again (+01:00)
        (ams(2025, 11, 1, 0, 30), "2026-05"),
        (ams(2025, 1, 1, 0, 0), "2025-05"),
        (ams(2024, 12, 31, 23, 59), "2025-05"),
        (datetime(2025, 4, 30, 22, 0, tzinfo=UTC), "2025-11"),  # 00:00 on 1 May in Amsterdam
        (datetime(2025, 4, 30, 21, 59, 59, 999000, tzinfo=UTC), "2025-05"),
        (datetime(2025, 10, 31, 23, 0, tzinfo=UTC), "2026-05"),  # 00:00 on 1 November (CET)
        (datetime(2025, 10, 31, 22, 59, 59, tzinfo=UTC), "2025-11"),
    ],
)
def test_an_instant_falls_in_exactly_one_period_by_its_dutch_date(instant: datetime, period: str) -> None:
    found = Period.containing(instant)
    assert found.id == period
    assert found.start <= instant < found.end
    assert found.start_ms <= to_millis(instant) < found.end_ms


def test_periods_are_half_years_bounded_at_amsterdam_midnight_in_summer_and_winter_time() -> None:
    may, nov = Period.parse("2025-05"), Period.parse("2025-11")
    assert may.start.isoformat() == "2024-11-01T00:00:00+01:00"
    assert may.end.isoformat() == nov.start.isoformat() == "2025-05-01T00:00:00+02:00"
    assert nov.end.isoformat() == "2025-11-01T00:00:00+01:00"
    assert may.end_ms == nov.start_ms == to_millis(datetime(2025, 4, 30, 22, tzinfo=UTC))
    assert nov.following() == Period.parse("2026-05") and may.previous() == Period.parse("2024-11")
    assert may.months() == ["2024-11", "2024-12", "2025-01", "2025-02", "2025-03", "2025-04"]
    assert [p.id for p in may.history(3)] == ["2024-05", "2024-11", "2025-05"]
    assert not may.is_closed(ams(2025, 4, 30, 23, 59)) and may.is_closed(ams(2025, 5, 1))
    assert [p.id for p in closed_since(Period.parse("2024-11"), ams(2025, 6, 1))] == ["2024-11", "2025-05"]
    assert local_time(to_millis(ams(2025, 10, 31, 23, 30))) == "2025-10-31T23:30:00+01:00"
    for bad in ("2025-04", "2025-5", "25-05", "2025-05x", ""):
        with pytest.raises(ValueError):
            Period.parse(bad)


def test_a_period_is_named_by_the_month_it_ends_in_and_says_which_days_it_covers() -> None:
    may, november = Period.parse("2027-05"), Period.parse("2026-11")
    assert (may.first_day.isoformat(), may.last_day.isoformat()) == ("2026-11-01", "2027-04-30")
    assert may.covers() == "1 November 2026 up to and including 30 April 2027"
    assert november.covers() == "1 May 2026 up to and including 31 October 2026"
    assert Period.containing(ams(2026, 11, 15)) == may  # in November, 2026-11 is the period just ended
    assert november.is_closed(ams(2026, 11, 1)) and not may.is_closed(ams(2027, 4, 30, 23, 59))


def test_masking_rates_and_medians() -> None:
    assert mask_person_number("333") == "******333"  # the reports keep only these
    assert rate(1, 3) == 0.3333 and rate(0, 5) == 0.0 and rate(2, 0) is None
    assert median_rate([0.5, 0.1, None, 0.2]) == 0.2
    assert median_rate([0.1, 0.2]) == 0.15 and median_rate([]) is None


def deletion(position: int, institution: str, sector: str, reason: str, at: datetime,
             received: tuple[str, ...] = (), extract: bool = False,
             confirmed: tuple[str, ...] = ()) -> Deletion:
    return Deletion(position, f"e{position}", f"r{position}", institution, sector, "56551", "B Geneeskunde",
                    f"D-{position}", "2024-07-01", "333", to_millis(at - timedelta(days=30)), to_millis(at),
                    reason, received, extract, confirmed)


def facts() -> PeriodFacts:
    period = Period.parse("2025-05")
    deletions = [
        deletion(10, "25BE", "HO", "FRAUD", ams(2025, 1, 5), ("cibg-big",), True, ("cibg-big",)),
        deletion(11, "25BE", "VO", "OTHER", ams(2025, 4, 30, 23, 30)),
        deletion(12, "30XX", "HO", "ADMINISTRATIVE_ERROR", ams(2024, 11, 1, 0, 0), ("mijnoverheid",)),
    ]
    return PeriodFacts(
        period=period, provisional=False, institutions=["25BE", "30XX", "40MB"], deletions=deletions,
        registered={("25BE", "HO"): 10, ("25BE", "VO"): 4, ("30XX", "HO"): 40, ("40MB", "HO"): 5},
        deleted={("25BE", "HO"): 1, ("25BE", "VO"): 1, ("30XX", "HO"): 1},
        history={"2024-11": {"25BE": (8, 2)}, "2025-05": {"25BE": (14, 2), "30XX": (40, 1), "40MB": (5, 0)}},
    )


def test_the_sector_median_is_over_the_institutions_that_registered_in_the_sector() -> None:
    # HO rates: 25BE 1/10, 30XX 1/40, 40MB 0/5 → median 0.025; VO: only 25BE, 1/4
    assert sector_medians(facts()) == {"HO": {"institutions": 3, "median_rate": 0.025},
                                       "VO": {"institutions": 1, "median_rate": 0.25}}


def test_an_institution_report_counts_its_own_deletions_and_compares_them() -> None:
    report = institution_report(facts(), "25BE")
    assert report["totals"] == {"deletions": 2, "registrations": 14, "deletion_rate": 0.1429}
    assert report["by_reason"]["FRAUD"] == 1 and report["by_reason"]["OTHER"] == 1
    assert report["by_month"]["2025-04"] == 1 and report["by_month"]["2025-01"] == 1
    assert report["chain_impact"]["any"] == {"count": 1, "share": 0.5}
    assert report["chain_impact"]["by_consumer"]["cibg-big"] == {"count": 1, "share": 0.5, "confirmed": 1}
    assert report["chain_impact"]["by_consumer"]["mijnoverheid"]["confirmed"] == 0
    assert [r["confirmed_by"] for r in report["deletions"]] == [["cibg-big"], []]
    assert [(s["sector"], s["deletion_rate"], s["sector_median_rate"]) for s in report["sectors"]] == [
        ("HO", 0.1, 0.025), ("VO", 0.25, 0.25)]
    assert [h["deletion_rate"] for h in report["history"]] == [0.25, 0.1429]
    assert [r["person_number"] for r in report["deletions"]] == ["******333", "******333"]
    national = national_report(facts())
    assert national["totals"]["deletions"] == 3 and national["totals"]["institutions_with_deletions"] == 2
    assert [i["deletions"] for i in national["institutions"]] == [2, 1, 0]


def test_bodies_are_byte_identical_every_time_and_the_html_is_html5_without_scripts() -> None:
    first = render.bodies(institution_report(facts(), "25BE"), national=False)
    assert first == render.bodies(institution_report(facts(), "25BE"), national=False)
    assert first["csv"].decode().splitlines()[1].startswith("r10,******333,D-10,56551,")
    html = first["html"]
    html5lib.HTMLParser(strict=True).parse(html)
    assert b"<script" not in html and b"<svg" in html and b'id="total-deletions">2<' in html
    national = render.bodies(national_report(facts()), national=True)
    html5lib.HTMLParser(strict=True).parse(national["html"])
    assert national["csv"].decode().splitlines()[0].startswith("institution,sectors,registrations,deletions")


def test_html_escapes_what_institutions_typed() -> None:
    content = institution_report(facts(), "25BE")
    content["deletions"][0]["programme_name"] = '<img src="http://x">'
    html = render.to_html(content, national=False)
    assert b"<img" not in html and b"&lt;img" in html


def test_the_chain_check_walks_in_position_order_over_events_arriving_out_of_order() -> None:
    hashes = {p: hashlib.sha256(bytes([p])).digest() for p in range(1, 7)}
    hashes[0] = GENESIS
    links = {p: Link(p, hashes[p - 1], hashes[p], True, p) for p in range(1, 7)}
    check = ChainCheck()
    for p in (2, 4, 3):  # other partitions first
        check.offer(links[p])
    assert check.advance() == [] and check.verified == 0 and check.waiting_for == 1
    check.offer(links[1])
    assert check.advance() == [] and (check.verified, check.head_at) == (4, 4)
    check.offer(links[1])  # a repeat changes nothing
    check.offer(Link(6, hashes[5], hashes[6], False, 6))  # its own hash does not match its bytes
    check.offer(links[5])
    [broken] = check.advance()
    assert (broken.position, broken.code, check.verified) == (6, "HASH_MISMATCH", 5)
    assert check.advance() == []  # stays stopped at the break
    other = ChainCheck()
    other.offer(Link(1, b"\x01" * 32, hashes[1], True, 1))
    assert [(b.position, b.code) for b in other.advance()] == [(1, "PREV_HASH_MISMATCH")]
    third = ChainCheck()
    third.offer(links[2])
    assert third.offer(Link(2, hashes[1], b"\x09" * 32, True, 2)).code == "POSITION_CONFLICT"


def test_the_first_report_published_sample_still_decodes() -> None:
    data = (FIXTURES / "ReportPublished.v1.bin").read_bytes()
    name, record = Codec().decode(data)
    assert name == "ReportPublished"
    assert (record["period"], record["institution"], record["provisional"]) == ("2025-05", "25BE", False)
    assert [f["format"] for f in record["files"]] == ["csv", "json", "html"]
    assert record["files"][0]["path"] == "2025-05/25BE.csv" and len(record["files"][0]["sha256"]) == 64
