"""Every rule of domain.md: a passing and a failing example, asserting the code and the field."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.kernel.codes import CODES
from services.registrar.catalogue import Catalogue
from services.registrar.rules import (
    DELETION_REASONS,
    SECTORS,
    Checked,
    Institution,
    Registration,
    check_deletion,
    check_person_number,
    check_registration,
    today_in_amsterdam,
)

TODAY = datetime.date(2025, 1, 15)

CATALOGUE_CSV = """code,name,sector,kind,recognised,big_profession
56551,B Geneeskunde,HO,diploma,true,arts
99001,Test module,HO,module,true,
99002,Test unrecognised,HO,diploma,false,
25480,Mbo-Verpleegkundige,MBO,diploma,true,verpleegkundige
0090,Praktijkonderwijs,VO,diploma,true,
Praktijkonderwijs,Praktijkonderwijs,PRO,diploma,true,
Dagbesteding,Dagbesteding,VSO,diploma,true,
Arbeidsmarkt,Arbeidsmarkt,VSO,diploma,true,
"""

INSTITUTIONS = {
    "25BE": Institution("25BE", "Acting", frozenset({"HO", "MBO", "PRO", "VSO"}), funded=True),
    "31FR": Institution("31FR", "Other", frozenset({"HO"}), funded=True),
    "30VO": Institution("30VO", "Secondary", frozenset({"VO"}), funded=True),
    "99ZZ": Institution("99ZZ", "Unfunded", frozenset({"HO", "MBO"}), funded=False),
}

BASE = {
    "bsn": "111222333",
    "onderwijsnummer": None,
    "institution": "25BE",
    "branch": "25BE01",
    "provider": None,
    "sector": "HO",
    "programme_code": "56551",
    "diploma_number": "2024-0001",
    "diploma_date": "2024-07-01",
}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    path = tmp_path_factory.mktemp("catalogue") / "catalogue.csv"
    path.write_text(CATALOGUE_CSV, encoding="utf-8")
    return Catalogue.load(path)


@pytest.fixture
def check(catalogue: Catalogue):
    def run(acting: str = "25BE", today: datetime.date = TODAY, cat: Catalogue | None = None, **changes):
        raw = {**BASE, **changes}
        return check_registration(
            raw,
            acting_institution=acting,
            institutions=INSTITUTIONS.get,
            catalogue=cat or catalogue,
            today=today,
        )

    return run


def codes(checked: Checked) -> list[tuple[str, str | None]]:
    return [(p.code, p.field) for p in checked.errors]


def assert_ok(checked: Checked) -> Registration:
    assert checked.errors == [], codes(checked)
    assert checked.registration is not None
    return checked.registration


def assert_only(checked: Checked, code: str, field: str | None) -> None:
    assert codes(checked) == [(code, field)]
    assert checked.registration is None


# --- a complete, valid registration ---------------------------------------------------------


def test_valid_registration_is_normalised(check) -> None:
    checked = check(bsn=" 111.222.333 ", branch=" 25BE01 ")
    registration = assert_ok(checked)
    assert registration == Registration(
        person_kind="BSN",
        person_number="111222333",
        institution="25BE",
        branch="25BE01",
        provider=None,
        sector="HO",
        programme_code="56551",
        programme_name="B Geneeskunde",
        big_profession="arts",
        diploma_number="2024-0001",
        diploma_date=datetime.date(2024, 7, 1),
    )
    assert checked.warnings == []
    assert checked.ok


def test_missing_keys_count_as_missing_values(check, catalogue: Catalogue) -> None:
    checked = check_registration(
        {"bsn": "111222333"},
        acting_institution="25BE",
        institutions=INSTITUTIONS.get,
        catalogue=catalogue,
        today=TODAY,
    )
    assert ("FIELD_REQUIRED", "institution") in codes(checked)


def test_every_code_used_exists_in_the_code_table(check) -> None:
    checked = check(
        bsn="123456789", institution="25be", branch="x", sector="WO", diploma_number="", diploma_date="x"
    )
    assert all(p.code in CODES for p in checked.errors)


# --- person numbers -------------------------------------------------------------------------


def test_eight_digit_bsn_is_padded(check) -> None:
    assert assert_ok(check(bsn="12345672")).person_number == "012345672"


@pytest.mark.parametrize("number", ["101222331", "106071665"])
def test_valid_onderwijsnummer_is_registered_as_such(check, number: str) -> None:
    registration = assert_ok(check(bsn=None, onderwijsnummer=number))
    assert (registration.person_kind, registration.person_number) == ("ONDERWIJSNUMMER", number)


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_person_number_missing(check, blank: str | None) -> None:
    assert_only(check(bsn=blank, onderwijsnummer=blank), "PERSON_NUMBER_MISSING", None)


def test_person_number_ambiguous(check) -> None:
    assert_only(check(bsn="111222333", onderwijsnummer="101222331"), "PERSON_NUMBER_AMBIGUOUS", None)


@pytest.mark.parametrize("number", ["111252333", "123456789", "000000000", "1234567890", "12345678a"])
def test_bsn_invalid(check, number: str) -> None:
    assert_only(check(bsn=number), "BSN_INVALID", "bsn")


@pytest.mark.parametrize("number", ["101222333", "211222337"])
def test_onderwijsnummer_invalid(check, number: str) -> None:
    assert_only(check(bsn=None, onderwijsnummer=number), "ONDERWIJSNUMMER_INVALID", "onderwijsnummer")


def test_bsn_is_onderwijsnummer(check) -> None:
    assert_only(check(bsn="101222331"), "BSN_IS_ONDERWIJSNUMMER", "bsn")


def test_onderwijsnummer_is_bsn(check) -> None:
    assert_only(check(bsn=None, onderwijsnummer="111222333"), "ONDERWIJSNUMMER_IS_BSN", "onderwijsnummer")


def test_check_person_number_alone() -> None:
    assert check_person_number("249 566 758", None) == (("BSN", "249566758"), [])
    assert check_person_number(None, "106071665") == (("ONDERWIJSNUMMER", "106071665"), [])
    person, problems = check_person_number("319072357", None)
    assert person is None and [(p.code, p.field) for p in problems] == [("BSN_INVALID", "bsn")]


def test_person_number_of_the_wrong_type(check) -> None:
    assert_only(check(bsn=111222333), "FIELD_TYPE_INVALID", "bsn")
    person, problems = check_person_number(None, 101222331)
    assert person is None and [(p.code, p.field) for p in problems] == [
        ("FIELD_TYPE_INVALID", "onderwijsnummer")
    ]


# --- institution and branch -----------------------------------------------------------------


@pytest.mark.parametrize("code", ["25be", "251E", "25BEE", "2BE", "25 BE"])
def test_institution_code_invalid(check, code: str) -> None:
    assert_only(check(institution=code), "INSTITUTION_CODE_INVALID", "institution")


def test_institution_unknown(check) -> None:
    assert_only(check(institution="00AA", branch="00AA01"), "INSTITUTION_UNKNOWN", "institution")


def test_institution_forbidden(check) -> None:
    assert_only(check(institution="31FR", branch="31FR01"), "INSTITUTION_FORBIDDEN", "institution")
    assert_ok(check(acting="31FR", institution="31FR", branch="31FR01"))


@pytest.mark.parametrize("branch", ["25BE1", "25BE001", "25be01", "BE2501", "25BE0A"])
def test_branch_code_invalid(check, branch: str) -> None:
    assert_only(check(branch=branch), "BRANCH_CODE_INVALID", "branch")


def test_branch_not_of_institution(check) -> None:
    assert_only(check(branch="31FR01"), "BRANCH_NOT_OF_INSTITUTION", "branch")
    assert assert_ok(check(branch="25BE07")).branch == "25BE07"


def test_no_branch_of_institution_check_when_the_institution_code_is_malformed(check) -> None:
    assert codes(check(institution="25be", branch="31FR01")) == [("INSTITUTION_CODE_INVALID", "institution")]


def test_branch_is_still_checked_against_an_unknown_institution_code(check) -> None:
    assert codes(check(institution="00AA", branch="25BE01")) == [
        ("INSTITUTION_UNKNOWN", "institution"),
        ("BRANCH_NOT_OF_INSTITUTION", "branch"),
    ]


# --- provider -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["100B490", "110A13", "110a133", "A110133"])
def test_provider_code_invalid(check, provider: str) -> None:
    assert_only(check(provider=provider), "PROVIDER_CODE_INVALID", "provider")


def test_provider_is_optional_for_ho_and_kept_when_given(check) -> None:
    assert assert_ok(check(provider=None)).provider is None
    assert assert_ok(check(provider="110A133")).provider == "110A133"


@pytest.mark.parametrize(("sector", "programme"), [("PRO", "Praktijkonderwijs"), ("VSO", "Dagbesteding")])
def test_provider_required_for_pro_and_vso(check, sector: str, programme: str) -> None:
    assert_only(check(sector=sector, programme_code=programme), "FIELD_REQUIRED", "provider")
    assert_ok(check(sector=sector, programme_code=programme, provider="110A133"))


# --- sector ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sector", ["WO", "HBO", "ho", "H O"])
def test_sector_invalid(check, sector: str) -> None:
    assert_only(check(sector=sector), "SECTOR_INVALID", "sector")


def test_sectors_are_the_five_of_the_domain() -> None:
    assert SECTORS == ("VO", "PRO", "VSO", "MBO", "HO")


def test_no_programme_check_when_the_sector_is_invalid(check) -> None:
    assert codes(check(sector="WO", programme_code="nonsense")) == [("SECTOR_INVALID", "sector")]


def test_sector_not_of_institution(check) -> None:
    assert_only(check(sector="VO", programme_code="0090"), "SECTOR_NOT_OF_INSTITUTION", "sector")
    assert_ok(check(acting="30VO", institution="30VO", branch="30VO01", sector="VO", programme_code="0090"))


# --- programme ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["Praktijkonderwijs", "praktijkonderwijs", "PRAKTIJKONDERWIJS"])
def test_pro_programme_compares_without_case(check, code: str) -> None:
    registration = assert_ok(
        check(sector="PRO", programme_code=code, provider="110A133", diploma_date="2024-07-01")
    )
    assert registration.programme_code == "Praktijkonderwijs"  # the catalogue's spelling


@pytest.mark.parametrize("code", ["Dagbesteding", "arbeidsmarkt"])
def test_vso_programmes(check, code: str) -> None:
    registration = assert_ok(check(sector="VSO", programme_code=code, provider="110A133"))
    assert registration.programme_code == code.capitalize()


@pytest.mark.parametrize("sector", ["PRO", "VSO"])
@pytest.mark.parametrize("code", ["Vervolgonderwijs", "VERVOLGONDERWIJS"])
def test_vervolgonderwijs_uses_exam_results(check, sector: str, code: str) -> None:
    checked = check(sector=sector, programme_code=code, provider="110A133")
    assert_only(checked, "VERVOLGONDERWIJS_USES_EXAM_RESULTS", "programme_code")


@pytest.mark.parametrize(
    ("sector", "code"),
    [
        ("PRO", "Dagbesteding"),  # a VSO name
        ("PRO", "0090"),  # the VO elementcode for praktijkonderwijs
        ("VSO", "Praktijkonderwijs"),
        ("MBO", "56551"),  # a CROHO code
        ("HO", "25480"),  # a crebo
        ("HO", "Praktijkonderwijs"),
    ],
)
def test_programme_sector_mismatch(check, sector: str, code: str) -> None:
    assert_only(
        check(sector=sector, programme_code=code, provider="110A133"),
        "PROGRAMME_SECTOR_MISMATCH",
        "programme_code",
    )


@pytest.mark.parametrize(
    ("sector", "code"),
    [
        ("HO", "56552"),
        ("HO", "5655"),  # wrong format
        ("HO", "B Geneeskunde"),
        ("MBO", "2548"),
        ("PRO", "Theater"),
        ("VSO", "Werk"),
    ],
)
def test_programme_unknown(check, sector: str, code: str) -> None:
    assert_only(
        check(sector=sector, programme_code=code, provider="110A133"), "PROGRAMME_UNKNOWN", "programme_code"
    )


def test_vo_programme_is_a_four_digit_elementcode(check) -> None:
    vo = {"acting": "30VO", "institution": "30VO", "branch": "30VO01", "sector": "VO"}
    assert assert_ok(check(**vo, programme_code="0090")).programme_name == "Praktijkonderwijs"
    assert_only(check(**vo, programme_code="00900"), "PROGRAMME_UNKNOWN", "programme_code")


def test_mbo_programme_carries_its_big_profession(check) -> None:
    registration = assert_ok(check(sector="MBO", programme_code="25480"))
    assert (registration.programme_name, registration.big_profession) == (
        "Mbo-Verpleegkundige",
        "verpleegkundige",
    )


def test_ho_module_has_no_result(check) -> None:
    assert_only(check(programme_code="99001"), "HO_MODULE_HAS_NO_RESULT", "programme_code")
    assert_ok(check(programme_code="56551"))


def test_programme_not_recognised_only_for_unfunded_institutions(check) -> None:
    unfunded = {"acting": "99ZZ", "institution": "99ZZ", "branch": "99ZZ01"}
    assert_only(check(**unfunded, programme_code="99002"), "PROGRAMME_NOT_RECOGNISED", "programme_code")
    assert_ok(check(**unfunded, programme_code="56551"))
    assert_ok(check(programme_code="99002"))  # a funded institution


def test_pro_and_vso_names_work_with_a_catalogue_that_lacks_them(check, tmp_path: Path) -> None:
    path = tmp_path / "croho-only.csv"
    path.write_text(
        "code,name,sector,kind,recognised,big_profession\n56551,B Geneeskunde,HO,diploma,true,arts\n"
    )
    registration = assert_ok(
        check(cat=Catalogue.load(path), sector="PRO", programme_code="praktijkonderwijs", provider="110A133")
    )
    assert (registration.programme_code, registration.programme_name) == (
        "Praktijkonderwijs",
        "Praktijkonderwijs",
    )


# --- diploma date ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "date",
    ["2024-02-30", "2024-13-01", "01-07-2024", "20240701", "2024-7-1", "2024-W27-1", "2024-07-01T00:00"],
)
def test_diploma_date_invalid(check, date: str) -> None:
    assert_only(check(diploma_date=date), "DIPLOMA_DATE_INVALID", "diploma_date")


def test_leap_day_is_a_real_date(check) -> None:
    assert assert_ok(check(diploma_date="2024-02-29")).diploma_date == datetime.date(2024, 2, 29)


def test_diploma_date_in_future(check) -> None:
    assert_only(check(diploma_date="2025-01-16"), "DIPLOMA_DATE_IN_FUTURE", "diploma_date")
    assert_ok(check(diploma_date="2025-01-15"))


@pytest.mark.parametrize("sector", ["PRO", "VSO"])
def test_pro_vso_school_year_closed(check, sector: str) -> None:
    programme = {"PRO": "Praktijkonderwijs", "VSO": "Arbeidsmarkt"}[sector]
    fields = {"sector": sector, "programme_code": programme, "provider": "110A133"}
    today = datetime.date(2023, 6, 1)
    assert_only(
        check(**fields, today=today, diploma_date="2022-07-31"), "PRO_VSO_SCHOOL_YEAR_CLOSED", "diploma_date"
    )
    assert_ok(check(**fields, today=today, diploma_date="2022-08-01"))


def test_school_year_rule_is_only_for_pro_and_vso(check) -> None:
    checked = check(today=datetime.date(2023, 6, 1), diploma_date="2022-07-31")
    assert_ok(checked)


# --- diploma number -------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["A B", "x" * 21, "nr/1", "ü1", "2024_1"])
def test_diploma_number_invalid(check, number: str) -> None:
    assert_only(check(diploma_number=number), "DIPLOMA_NUMBER_INVALID", "diploma_number")


@pytest.mark.parametrize("number", ["1", "a" * 20, "AB-12-cd"])
def test_diploma_number_valid(check, number: str) -> None:
    assert assert_ok(check(diploma_number=number)).diploma_number == number


# --- required fields and types --------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["institution", "branch", "sector", "programme_code", "diploma_number", "diploma_date"]
)
@pytest.mark.parametrize("blank", [None, "", " \t "])
def test_field_required(check, field: str, blank: str | None) -> None:
    assert_only(check(**{field: blank}), "FIELD_REQUIRED", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("institution", 25),
        ("branch", ["25BE01"]),
        ("sector", b"HO"),
        ("provider", 110133),
        ("programme_code", 56551),
        ("diploma_number", 1),
        ("diploma_date", datetime.date(2024, 7, 1)),
    ],
)
def test_field_type_invalid(check, field: str, value: object) -> None:
    assert_only(check(**{field: value}), "FIELD_TYPE_INVALID", field)


# --- warnings -------------------------------------------------------------------------------


def test_late_delivery_is_a_warning_and_the_result_is_registered(check) -> None:
    checked = check(diploma_date="2024-01-14")
    assert assert_ok(checked).diploma_date == datetime.date(2024, 1, 14)
    assert [(p.code, p.field) for p in checked.warnings] == [("LATE_DELIVERY", "diploma_date")]


def test_exactly_one_year_is_not_late(check) -> None:
    assert check(diploma_date="2024-01-15").warnings == []


def test_late_delivery_around_a_leap_day(check) -> None:
    leap = datetime.date(2024, 2, 29)
    assert check(today=leap, diploma_date="2023-02-28").warnings == []
    assert [p.code for p in check(today=leap, diploma_date="2023-02-27").warnings] == ["LATE_DELIVERY"]


# --- collecting problems, and keeping person numbers out of them -----------------------------


def test_every_problem_of_a_record_is_reported(check) -> None:
    checked = check(
        bsn="123456789",
        branch="31FR01",
        provider="100B490",
        programme_code="99001",
        diploma_number="A B",
        diploma_date="2099-01-01",
    )
    assert codes(checked) == [
        ("BSN_INVALID", "bsn"),
        ("BRANCH_NOT_OF_INSTITUTION", "branch"),
        ("PROVIDER_CODE_INVALID", "provider"),
        ("HO_MODULE_HAS_NO_RESULT", "programme_code"),
        ("DIPLOMA_NUMBER_INVALID", "diploma_number"),
        ("DIPLOMA_DATE_IN_FUTURE", "diploma_date"),
    ]
    assert checked.registration is None and not checked.ok


@pytest.mark.parametrize("number", ["111222333", "123456789", "101222331", "111252333"])
def test_no_problem_carries_the_person_number(check, number: str) -> None:
    for checked in (
        check(bsn=number),
        check(bsn=None, onderwijsnummer=number),
        check(bsn=number, onderwijsnummer=number),
    ):
        for p in checked.errors + checked.warnings:
            assert number not in repr(p) and number[-6:] not in p.message


def test_repr_and_str_of_registration_and_checked_mask_the_person_number(check) -> None:
    checked = check(bsn="111 222 333")
    registration = assert_ok(checked)
    for text in (repr(registration), str(registration), repr(checked), str(checked), f"{checked}"):
        assert "111222333" not in text
        assert "******333" in text
    assert registration.person_number == "111222333"  # the value itself is intact


def test_registration_is_immutable(check) -> None:
    registration = assert_ok(check())
    with pytest.raises(dataclasses.FrozenInstanceError):
        registration.person_number = "123456782"  # type: ignore[misc]


# --- deletion -------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", DELETION_REASONS)
def test_every_deletion_reason_with_an_explanation_passes(reason: str) -> None:
    assert check_deletion(reason, "toelichting") == []


@pytest.mark.parametrize(
    "reason", ["ADMINISTRATIVE_ERROR", "EXTRA_COURSES_OR_GRADE_IMPROVEMENT", "WRONG_PERSON_OR_DATA"]
)
def test_deletion_reasons_without_explanation_need_none(reason: str) -> None:
    assert check_deletion(reason, None) == []


@pytest.mark.parametrize("reason", ["FRAUD", "OTHER"])
@pytest.mark.parametrize("explanation", [None, "", "   "])
def test_fraud_and_other_need_an_explanation(reason: str, explanation: str | None) -> None:
    assert [(p.code, p.field) for p in check_deletion(reason, explanation)] == [
        ("EXPLANATION_REQUIRED", "explanation")
    ]


@pytest.mark.parametrize("reason", ["fraud", "SPITE", "FRAUD "[:4]])
def test_deletion_reason_invalid(reason: str) -> None:
    assert [(p.code, p.field) for p in check_deletion(reason, "x")] == [("DELETION_REASON_INVALID", "reason")]


@pytest.mark.parametrize("reason", [None, "", "  "])
def test_deletion_reason_required(reason: str | None) -> None:
    assert [(p.code, p.field) for p in check_deletion(reason, "x")] == [("FIELD_REQUIRED", "reason")]


def test_deletion_values_of_the_wrong_type() -> None:
    assert [(p.code, p.field) for p in check_deletion(1, "x")] == [("FIELD_TYPE_INVALID", "reason")]
    assert [(p.code, p.field) for p in check_deletion("OTHER", 1)] == [("FIELD_TYPE_INVALID", "explanation")]


def test_deletion_reason_is_stripped() -> None:
    assert check_deletion(" FRAUD ", "bewezen fraude") == []


# --- the clock ------------------------------------------------------------------------------


def test_today_in_amsterdam() -> None:
    before = datetime.datetime.now(ZoneInfo("Europe/Amsterdam")).date()
    today = today_in_amsterdam()
    after = datetime.datetime.now(ZoneInfo("Europe/Amsterdam")).date()
    assert type(today) is datetime.date and before <= today <= after
