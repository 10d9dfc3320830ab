"""Het Loket's words: the chain impact in sentences, dates spelled out, reasons by name."""

from __future__ import annotations

from services.registrar.loket import texts
from services.registrar.rules import DELETION_REASONS


def impact(deliveries: list[dict], extracts: list[dict] | None = None) -> dict:
    return {"deliveries": deliveries, "extracts": extracts or []}


def test_each_receiver_gets_its_sentence_with_the_dutch_calendar_day() -> None:
    answer = impact(
        [{"subscription": "cibg-big", "delivered_at": "2026-07-02T22:30:00Z", "acknowledged_at": None},
         {"subscription": "mijnoverheid", "delivered_at": "2026-07-03T10:00:00Z",
          "acknowledged_at": "2026-07-05T09:00:00Z"},
         {"subscription": "duo-archief", "delivered_at": "2026-07-03T10:00:00Z", "acknowledged_at": None}],
        [{"extract_id": "X-1", "issued_at": "2026-07-04T09:00:00Z"}])
    assert texts.impact_sentences(answer, "nl") == [
        # 22:30 UTC is 00:30 the next day in Amsterdam
        "CIBG heeft dit resultaat op 3 juli 2026 ontvangen en kan het niet terugdraaien.",
        "MijnOverheid toont het al (ontvangen op 3 juli 2026).",
        "MijnOverheid heeft op 5 juli 2026 bevestigd dat het is verwerkt.",
        "duo-archief heeft dit resultaat op 3 juli 2026 ontvangen.",
        "De student heeft op 4 juli 2026 een uittreksel gedownload; dat blijft een geldig bewijs.",
    ]
    english = texts.impact_sentences(answer, "en")
    assert english[0] == "CIBG received this result on 3 July 2026 and cannot undo it."


def test_nobody_has_it_yet() -> None:
    assert texts.impact_sentences(impact([]), "nl") == [
        "Nog niemand heeft dit resultaat ontvangen: verwijderen raakt verder niemand."]


def test_dates_reasons_and_advice() -> None:
    assert texts.long_date("2027-04-30", "nl") == "30 april 2027"
    assert texts.long_date("2026-11-01", "en") == "1 November 2026"
    assert all(texts.reason_name(code, "nl") != code for code in DELETION_REASONS)
    assert texts.advice("EXTRA_COURSES_OR_GRADE_IMPROVEMENT", "nl")[0].startswith("Vermijd het verwijderen")
    assert texts.advice("ADMINISTRATIVE_ERROR", "nl") == ()
    assert texts.message("BSN_INVALID", "en") == "The BSN is not 9 digits or fails the eleven test."
