"""The register's rules (spec/domain.md) as plain functions: no database and no I/O.

The caller passes ``today`` (see :func:`today_in_amsterdam`), so every rule is testable
against any date.

A check collects every problem of a record, so bulk feedback can report them all at once,
but skips a check whose prerequisite already failed (no programme check without a valid
sector, no branch-of-institution check without a well-formed institution code).

No Problem and no message ever carries an input value: codes and field names only, so a
person number cannot leak through feedback, logs or tracebacks.

This runs for every record of a bulk import (15,000+ per second), so the work per call is
a handful of precompiled regex matches and dict lookups.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from services.kernel.codes import Problem, problem
from services.kernel.identifiers import (
    is_valid_bsn,
    is_valid_onderwijsnummer,
    mask_person_number,
    normalize_person_number,
)
from services.registrar.catalogue import SECTORS as _CATALOGUE_SECTORS
from services.registrar.catalogue import Catalogue, Programme

SECTORS = _CATALOGUE_SECTORS  # ("VO", "PRO", "VSO", "MBO", "HO")
DELETION_REASONS = (
    "FRAUD",
    "ADMINISTRATIVE_ERROR",
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT",
    "WRONG_PERSON_OR_DATA",
    "OTHER",
)
REASONS_NEEDING_EXPLANATION = frozenset({"FRAUD", "OTHER"})

# PRO/VSO diplomas of school year 2021-2022 and earlier cannot be exchanged.
PRO_VSO_FIRST_DATE: Final = datetime.date(2022, 8, 1)

_AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_INSTITUTION = re.compile(r"\d{2}[A-Z]{2}")
_BRANCH = re.compile(r"\d{2}[A-Z]{2}\d{2}")
_PROVIDER = re.compile(r"\d{3}A\d{3}")
_DIPLOMA_NUMBER = re.compile(r"[A-Za-z0-9-]{1,20}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# VO elementcode: 4 digits; MBO crebo and HO CROHO code: 5 digits.
_CODE_FORMAT = {
    "VO": re.compile(r"\d{4}"),
    "MBO": re.compile(r"\d{5}"),
    "HO": re.compile(r"\d{5}"),
}
# PRO and VSO deliver a named erkende opleidingscode instead of a number (seed 000).
_NAMED_CODES: dict[str, tuple[str, ...]] = {
    "PRO": ("Praktijkonderwijs",),
    "VSO": ("Dagbesteding", "Arbeidsmarkt"),
}
_NAMED_BY_SECTOR = {
    sector: {code.casefold(): code for code in codes} for sector, codes in _NAMED_CODES.items()
}
_VERVOLGONDERWIJS = "vervolgonderwijs"
# Which sectors a named code belongs to, for telling a sector mismatch from an unknown code.
_NAMED_SECTORS: dict[str, frozenset[str]] = {
    **{code.casefold(): frozenset({s}) for s, codes in _NAMED_CODES.items() for code in codes},
    _VERVOLGONDERWIJS: frozenset(_NAMED_CODES),
}
_PROVIDER_REQUIRED = frozenset({"PRO", "VSO"})


class _WrongType:
    """Marks a field whose value was neither text nor absent (already reported)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<wrong type>"


_WRONG_TYPE: Final = _WrongType()


@dataclass(frozen=True, slots=True)
class Institution:
    """An institution as the register knows it: its sectors and whether it is funded."""

    code: str
    name: str
    sectors: frozenset[str]
    funded: bool


@dataclass(frozen=True, slots=True, repr=False)
class Registration:
    """A validated, normalised registration; its repr masks the person number."""

    person_kind: str  # "BSN" | "ONDERWIJSNUMMER"
    person_number: str  # normalised, 9 digits
    institution: str
    branch: str
    provider: str | None
    sector: str
    programme_code: str  # the catalogue's spelling
    programme_name: str
    big_profession: str | None
    diploma_number: str
    diploma_date: datetime.date

    def __repr__(self) -> str:
        # Reprs reach logs and tracebacks: never show the whole person number.
        return (
            f"Registration(person_kind={self.person_kind!r}, "
            f"person_number={mask_person_number(self.person_number)!r}, "
            f"institution={self.institution!r}, branch={self.branch!r}, "
            f"provider={self.provider!r}, sector={self.sector!r}, "
            f"programme_code={self.programme_code!r}, programme_name={self.programme_name!r}, "
            f"big_profession={self.big_profession!r}, diploma_number={self.diploma_number!r}, "
            f"diploma_date={self.diploma_date!r})"
        )


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of checking one record: a registration only when there is no error."""

    registration: Registration | None
    errors: list[Problem]
    warnings: list[Problem]

    @property
    def ok(self) -> bool:
        """True when the record may be registered (warnings do not count)."""
        return not self.errors


def today_in_amsterdam() -> datetime.date:
    """Today's date in Europe/Amsterdam, the register's calendar."""
    return datetime.datetime.now(_AMSTERDAM).date()


def check_registration(
    raw: Mapping[str, object],
    *,
    acting_institution: str,
    institutions: Callable[[str], Institution | None],
    catalogue: Catalogue,
    today: datetime.date,
) -> Checked:
    """Check one registration record against every rule; normalise it when it passes.

    ``raw`` holds the English field names with text values (or None); blank text counts as
    missing. ``institutions`` looks an institution up by code; ``acting_institution`` is the
    code the caller may deliver for.
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []

    person, person_problems = check_person_number(raw.get("bsn"), raw.get("onderwijsnummer"))
    errors.extend(person_problems)

    institution_code, institution = _check_institution(
        _text(raw, "institution", errors), acting_institution, institutions, errors
    )
    branch = _check_branch(_text(raw, "branch", errors), institution_code, errors)
    sector = _check_sector(_text(raw, "sector", errors), institution, errors)
    provider = _check_provider(_text(raw, "provider", errors), sector, errors)
    programme = _check_programme(_text(raw, "programme_code", errors), sector, institution, catalogue, errors)
    diploma_number = _check_diploma_number(_text(raw, "diploma_number", errors), errors)
    diploma_date = _check_diploma_date(_text(raw, "diploma_date", errors), sector, today, errors, warnings)

    if errors:
        return Checked(registration=None, errors=errors, warnings=warnings)
    # No error means every required part was present and valid.
    assert person is not None and institution_code is not None and branch is not None
    assert sector is not None and programme is not None
    assert diploma_number is not None and diploma_date is not None
    registration = Registration(
        person_kind=person[0],
        person_number=person[1],
        institution=institution_code,
        branch=branch,
        provider=provider,
        sector=sector,
        programme_code=programme.code,
        programme_name=programme.name,
        big_profession=programme.big_profession,
        diploma_number=diploma_number,
        diploma_date=diploma_date,
    )
    return Checked(registration=registration, errors=errors, warnings=warnings)


def check_person_number(bsn: object, onderwijsnummer: object) -> tuple[tuple[str, str] | None, list[Problem]]:
    """Exactly one valid person number: ``(("BSN"|"ONDERWIJSNUMMER", number), [])`` or problems.

    The number comes back normalised (separators stripped, 8 digits padded to 9).
    """
    problems: list[Problem] = []
    bsn_value = _clean(bsn, "bsn", problems)
    onr_value = _clean(onderwijsnummer, "onderwijsnummer", problems)
    if problems:  # a wrong type: nothing sensible to check
        return None, problems
    if bsn_value is None and onr_value is None:
        return None, [problem("PERSON_NUMBER_MISSING")]
    if bsn_value is not None and onr_value is not None:
        return None, [problem("PERSON_NUMBER_AMBIGUOUS")]
    if isinstance(bsn_value, str):
        number = normalize_person_number(bsn_value)
        if is_valid_bsn(number):
            return ("BSN", number), []
        code = "BSN_IS_ONDERWIJSNUMMER" if is_valid_onderwijsnummer(number) else "BSN_INVALID"
        return None, [problem(code, "bsn")]
    number = normalize_person_number(str(onr_value))
    if is_valid_onderwijsnummer(number):
        return ("ONDERWIJSNUMMER", number), []
    code = "ONDERWIJSNUMMER_IS_BSN" if is_valid_bsn(number) else "ONDERWIJSNUMMER_INVALID"
    return None, [problem(code, "onderwijsnummer")]


def check_deletion(reason: object, explanation: object) -> list[Problem]:
    """A deletion needs a known reason; FRAUD and OTHER also need an explanation."""
    problems: list[Problem] = []
    reason_value = _clean(reason, "reason", problems)
    explanation_value = _clean(explanation, "explanation", problems)
    if reason_value is None:
        problems.append(problem("FIELD_REQUIRED", "reason"))
    elif isinstance(reason_value, str):
        if reason_value not in DELETION_REASONS:
            problems.append(problem("DELETION_REASON_INVALID", "reason"))
        elif reason_value in REASONS_NEEDING_EXPLANATION and explanation_value is None:
            problems.append(problem("EXPLANATION_REQUIRED", "explanation"))
    return problems


# --- one check per field; each appends its problems and returns the normalised value --------


def _check_institution(
    code: str | _WrongType | None,
    acting_institution: str,
    institutions: Callable[[str], Institution | None],
    errors: list[Problem],
) -> tuple[str | None, Institution | None]:
    """The well-formed code (or None) and the institution when it is known and the caller's."""
    if code is None:
        errors.append(problem("FIELD_REQUIRED", "institution"))
        return None, None
    if not isinstance(code, str):  # wrong type, already reported
        return None, None
    if not _INSTITUTION.fullmatch(code):
        errors.append(problem("INSTITUTION_CODE_INVALID", "institution"))
        return None, None
    institution = institutions(code)
    if institution is None:
        errors.append(problem("INSTITUTION_UNKNOWN", "institution"))
        return code, None
    if code != acting_institution:
        errors.append(problem("INSTITUTION_FORBIDDEN", "institution"))
        # Another institution's sectors and funding are not the caller's to check against.
        return code, None
    return code, institution


def _check_branch(
    branch: str | _WrongType | None, institution_code: str | None, errors: list[Problem]
) -> str | None:
    if branch is None:
        errors.append(problem("FIELD_REQUIRED", "branch"))
        return None
    if not isinstance(branch, str):  # wrong type, already reported
        return None
    if not _BRANCH.fullmatch(branch):
        errors.append(problem("BRANCH_CODE_INVALID", "branch"))
        return None
    if institution_code is not None and not branch.startswith(institution_code):
        errors.append(problem("BRANCH_NOT_OF_INSTITUTION", "branch"))
        return None
    return branch


def _check_sector(
    sector: str | _WrongType | None, institution: Institution | None, errors: list[Problem]
) -> str | None:
    """The sector when it is one of SECTORS (even if the institution lacks it), else None."""
    if sector is None:
        errors.append(problem("FIELD_REQUIRED", "sector"))
        return None
    if not isinstance(sector, str):  # wrong type, already reported
        return None
    if sector not in SECTORS:
        errors.append(problem("SECTOR_INVALID", "sector"))
        return None
    if institution is not None and sector not in institution.sectors:
        errors.append(problem("SECTOR_NOT_OF_INSTITUTION", "sector"))
    return sector


def _check_provider(
    provider: str | _WrongType | None, sector: str | None, errors: list[Problem]
) -> str | None:
    if provider is None:
        if sector in _PROVIDER_REQUIRED:
            errors.append(problem("FIELD_REQUIRED", "provider"))
        return None
    if not isinstance(provider, str):  # wrong type, already reported
        return None
    if not _PROVIDER.fullmatch(provider):
        errors.append(problem("PROVIDER_CODE_INVALID", "provider"))
        return None
    return provider


def _check_programme(
    code: str | _WrongType | None,
    sector: str | None,
    institution: Institution | None,
    catalogue: Catalogue,
    errors: list[Problem],
) -> Programme | None:
    if code is None:
        errors.append(problem("FIELD_REQUIRED", "programme_code"))
        return None
    if not isinstance(code, str) or sector is None:  # wrong type (reported) or no sector
        return None
    programme = _find_programme(code, sector, catalogue, errors)
    if programme is None:
        return None
    if sector == "HO" and programme.kind == "module":
        errors.append(problem("HO_MODULE_HAS_NO_RESULT", "programme_code"))
        return None
    if institution is not None and not institution.funded and not programme.recognised:
        errors.append(problem("PROGRAMME_NOT_RECOGNISED", "programme_code"))
        return None
    return programme


def _find_programme(code: str, sector: str, catalogue: Catalogue, errors: list[Problem]) -> Programme | None:
    folded = code.casefold()
    named = _NAMED_BY_SECTOR.get(sector)
    if named is not None:
        if folded == _VERVOLGONDERWIJS:
            errors.append(problem("VERVOLGONDERWIJS_USES_EXAM_RESULTS", "programme_code"))
            return None
        canonical = named.get(folded)
        if canonical is not None:
            # A replacement catalogue may lack the PRO/VSO names; the rule itself knows them.
            return catalogue.find(sector, canonical) or Programme(
                code=canonical,
                name=canonical,
                sector=sector,
                kind="diploma",
                recognised=True,
                big_profession=None,
            )
    elif _CODE_FORMAT[sector].fullmatch(code):
        programme = catalogue.find(sector, code)
        if programme is not None:
            return programme
    # Say "other sector" when another sector knows the code: the likeliest mistake.
    elsewhere = catalogue.sectors_of(code) | _NAMED_SECTORS.get(folded, frozenset())
    elsewhere.discard(sector)
    code_problem = "PROGRAMME_SECTOR_MISMATCH" if elsewhere else "PROGRAMME_UNKNOWN"
    errors.append(problem(code_problem, "programme_code"))
    return None


def _check_diploma_number(number: str | _WrongType | None, errors: list[Problem]) -> str | None:
    if number is None:
        errors.append(problem("FIELD_REQUIRED", "diploma_number"))
        return None
    if not isinstance(number, str):  # wrong type, already reported
        return None
    if not _DIPLOMA_NUMBER.fullmatch(number):
        errors.append(problem("DIPLOMA_NUMBER_INVALID", "diploma_number"))
        return None
    return number


def _check_diploma_date(
    text: str | _WrongType | None,
    sector: str | None,
    today: datetime.date,
    errors: list[Problem],
    warnings: list[Problem],
) -> datetime.date | None:
    if text is None:
        errors.append(problem("FIELD_REQUIRED", "diploma_date"))
        return None
    if not isinstance(text, str):  # wrong type, already reported
        return None
    date = _parse_date(text)
    if date is None:
        errors.append(problem("DIPLOMA_DATE_INVALID", "diploma_date"))
        return None
    if date > today:
        errors.append(problem("DIPLOMA_DATE_IN_FUTURE", "diploma_date"))
        return None
    if sector in _PROVIDER_REQUIRED and date < PRO_VSO_FIRST_DATE:
        errors.append(problem("PRO_VSO_SCHOOL_YEAR_CLOSED", "diploma_date"))
        return None
    if date < _one_year_before(today):
        warnings.append(problem("LATE_DELIVERY", "diploma_date"))
    return date


def _parse_date(text: str) -> datetime.date | None:
    # fromisoformat alone would also take forms such as 20240701 or 2024-W27-1.
    if not _DATE.fullmatch(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


def _one_year_before(day: datetime.date) -> datetime.date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February: a year earlier has no such day
        return day.replace(year=day.year - 1, day=28)


# --- reading raw values ----------------------------------------------------------------------


def _text(raw: Mapping[str, object], field: str, problems: list[Problem]) -> str | _WrongType | None:
    return _clean(raw.get(field), field, problems)


def _clean(value: object, field: str, problems: list[Problem]) -> str | _WrongType | None:
    """Stripped text; None when absent or blank; _WRONG_TYPE (reported) for any other type."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(problem("FIELD_TYPE_INVALID", field))
        return _WRONG_TYPE
    value = value.strip()
    return value or None
