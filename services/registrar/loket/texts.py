"""Het Loket's words: Dutch by default, English on request; dates spelled out; the deletion
reasons by their Dutch names; the chain impact and the seeds' advice in plain sentences.

Rule messages are not spelled here: they come from the one code table (services/kernel/codes.py),
its Dutch message or its English line.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.kernel.codes import CODES
from services.registrar.rules import DELETION_REASONS, REASONS_NEEDING_EXPLANATION

LANGUAGES = ("nl", "en")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_MONTHS = {
    "nl": ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september",
           "oktober", "november", "december"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"),
}

REASON_NAMES = {  # reason code -> (Dutch, English)
    "FRAUD": ("Fraude", "Fraud"),
    "ADMINISTRATIVE_ERROR": ("Administratieve fout", "Administrative error"),
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT": ("De student wil extra vakken volgen of cijfers verhogen",
                                           "The student wants to take extra courses or raise a grade"),
    "WRONG_PERSON_OR_DATA": ("Verkeerde persoon of verkeerde gegevens", "Wrong person or wrong data"),
    "OTHER": ("Anders", "Other"),
}
assert set(REASON_NAMES) == set(DELETION_REASONS)
AVOIDABLE = frozenset({"EXTRA_COURSES_OR_GRADE_IMPROVEMENT"})

# the seeds' advice (DUO, "Vermijd het verwijderen van onderwijsresultaten")
ADVICE = {
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT": (
        ("Vermijd het verwijderen van onderwijsresultaten. Een student die extra vakken wil volgen of "
         "cijfers wil verhogen, hoeft zijn resultaat daarvoor niet kwijt: bedenk hoe u de student goed "
         "kunt informeren over het afstuderen, zodat het resultaat niet verwijderd hoeft te worden.",
         "Ook als het resultaat is verwijderd, kan de student nog een digitaal uittreksel hebben; dat "
         "heeft dezelfde waarde als het officiële diploma. Het helpt als de examencommissie zich bewust "
         "is van de gevolgen van het verwijderen van een onderwijsresultaat."),
        ("Avoid deleting results. A student who wants to take extra courses or raise a grade does not "
         "need to lose the result for it: consider how to inform the student well about graduating, so "
         "that the result need not be deleted.",
         "Even after a deletion the student may still hold a digital extract, which has the same value as "
         "the official diploma. It helps when the examination board knows what deleting a result causes."),
    ),
    "FRAUD": (
        ("Is er sprake van fraude? Neem dan ook direct contact op met de helpdesk van DUO.",),
        ("Is this fraud? Then also contact DUO's helpdesk at once.",),
    ),
}

_RECEIVERS = {  # subscription -> what it means, in words: (Dutch, English) with {date}
    "cibg-big": ("CIBG heeft dit resultaat op {date} ontvangen en kan het niet terugdraaien.",
                 "CIBG received this result on {date} and cannot undo it."),
    "mijnoverheid": ("MijnOverheid toont het al (ontvangen op {date}).",
                     "MijnOverheid already shows it (received on {date})."),
    "extract": ("Mijn diploma's heeft het op {date} ontvangen: de student kan er een uittreksel van "
                "downloaden.",
                "Mijn diploma's received it on {date}: the student can download an extract of it."),
}
_NAMES = {"cibg-big": "CIBG", "mijnoverheid": "MijnOverheid", "extract": "Mijn diploma's"}
_RECEIVER = ("{name} heeft dit resultaat op {date} ontvangen.", "{name} received this result on {date}.")
_ACKNOWLEDGED = ("{name} heeft op {date} bevestigd dat het is verwerkt.",
                 "{name} confirmed on {date} that it was processed.")
_EXTRACT = ("De student heeft op {date} een uittreksel gedownload; dat blijft een geldig bewijs.",
            "The student downloaded an extract on {date}; it remains valid proof.")
_NOBODY = ("Nog niemand heeft dit resultaat ontvangen: verwijderen raakt verder niemand.",
           "Nobody has received this result yet: deleting it affects no one else.")


def pick(lang: str, dutch: str, english: str) -> str:
    return english if lang == "en" else dutch


def message(code: str, lang: str) -> str:
    """The rule's message for `code`: the code table's Dutch message, or its English line."""
    dutch, english = CODES.get(code, (code, code))
    return pick(lang, dutch, english)


def long_date(day: date | datetime | str | None, lang: str) -> str:
    """`1 november 2026` (Dutch) or `1 November 2026`; a moment by its Dutch calendar day."""
    if day is None:
        return "–"
    if isinstance(day, str):
        day = date.fromisoformat(day)
    if isinstance(day, datetime):
        day = day.astimezone(AMSTERDAM).date()
    return f"{day.day} {_MONTHS[lang][day.month - 1]} {day.year}"


def moment(value: datetime | str | None, lang: str) -> str:
    """A moment in Dutch time: `3 juli 2026, 14:05`."""
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    local = value.astimezone(AMSTERDAM)
    return f"{long_date(local.date(), lang)}, {local:%H:%M}"


def reason_name(reason: str, lang: str) -> str:
    names = REASON_NAMES.get(reason)
    return pick(lang, *names) if names else reason


def needs_explanation(reason: str) -> bool:
    return reason in REASONS_NEEDING_EXPLANATION


def impact_sentences(impact: dict[str, Any], lang: str) -> list[str]:
    """The chain impact (the API's `impact` answer) in plain words, one sentence a receiver."""
    index = 1 if lang == "en" else 0
    said = []
    for delivery in impact["deliveries"]:
        name = delivery["subscription"]
        template = _RECEIVERS.get(name, _RECEIVER)[index]
        day = long_date(datetime.fromisoformat(delivery["delivered_at"]), lang)
        said.append(template.format(name=name, date=day))
        if delivery.get("acknowledged_at"):
            day = long_date(datetime.fromisoformat(delivery["acknowledged_at"]), lang)
            said.append(_ACKNOWLEDGED[index].format(name=_NAMES.get(name, name), date=day))
    for extract in impact["extracts"]:
        day = long_date(datetime.fromisoformat(extract["issued_at"]), lang)
        said.append(_EXTRACT[index].format(date=day))
    return said or [_NOBODY[index]]


def advice(reason: str, lang: str) -> tuple[str, ...]:
    """The seeds' advice before deleting for `reason` (none for most reasons)."""
    texts = ADVICE.get(reason)
    return (texts[1] if lang == "en" else texts[0]) if texts else ()
