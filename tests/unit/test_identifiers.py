"""Person numbers: normalisation, the two eleven tests and masking (domain.md's examples only)."""

from __future__ import annotations

import pytest

from services.kernel.identifiers import (
    is_valid_bsn,
    is_valid_onderwijsnummer,
    mask_person_number,
    normalize_person_number,
)

VALID_BSN = ["111222333", "123456782", "249566758", "319072356", "012345672"]
INVALID_BSN = ["111252333", "123456789", "000000000", "1234567890", "12345678a"]
VALID_ONDERWIJSNUMMER = ["101222331", "106071665"]
INVALID_ONDERWIJSNUMMER = ["101222333", "211222337"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("111222333", "111222333"),
        ("111 222 333", "111222333"),
        ("111.222.333", "111222333"),
        ("111-222-333", "111222333"),
        (" 1112.22-333 ", "111222333"),
        ("12345672", "012345672"),  # an old 8-digit number gets its leading zero back
        ("1234.5672", "012345672"),
        ("1234567890", "1234567890"),  # too long: left for the check to refuse
        ("12345678a", "12345678a"),
        ("1234567a", "1234567a"),  # 8 characters but not 8 digits: not padded
        ("", ""),
    ],
)
def test_normalize_person_number(raw: str, expected: str) -> None:
    assert normalize_person_number(raw) == expected


@pytest.mark.parametrize("number", VALID_BSN)
def test_valid_bsn_passes(number: str) -> None:
    assert is_valid_bsn(number)


@pytest.mark.parametrize("number", INVALID_BSN)
def test_invalid_bsn_fails(number: str) -> None:
    assert not is_valid_bsn(normalize_person_number(number))


def test_eight_digit_bsn_is_valid_only_after_normalising() -> None:
    assert not is_valid_bsn("12345672")
    assert is_valid_bsn(normalize_person_number("12345672"))


def test_all_zeros_is_refused_although_its_sum_divides_by_eleven() -> None:
    assert not is_valid_bsn("000000000")


def test_non_ascii_digits_are_not_digits() -> None:
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in "111222333")
    assert arabic_indic.isdigit()  # what str.isdigit alone would accept
    assert not is_valid_bsn(arabic_indic)
    assert normalize_person_number(arabic_indic[:8]) == arabic_indic[:8]


@pytest.mark.parametrize("number", VALID_ONDERWIJSNUMMER)
def test_valid_onderwijsnummer_passes(number: str) -> None:
    assert is_valid_onderwijsnummer(number)


@pytest.mark.parametrize("number", INVALID_ONDERWIJSNUMMER)
def test_invalid_onderwijsnummer_fails(number: str) -> None:
    assert not is_valid_onderwijsnummer(number)


def test_onderwijsnummer_must_be_nine_digits() -> None:
    assert not is_valid_onderwijsnummer("10122233")
    assert not is_valid_onderwijsnummer("1012223310")


@pytest.mark.parametrize("number", VALID_BSN + VALID_ONDERWIJSNUMMER)
def test_no_number_passes_both_checks(number: str) -> None:
    assert is_valid_bsn(number) != is_valid_onderwijsnummer(number)


@pytest.mark.parametrize(
    ("number", "masked"),
    [("111222333", "******333"), ("101222331", "******331"), ("012345672", "******672")],
)
def test_mask_keeps_only_the_last_three_digits(number: str, masked: str) -> None:
    assert mask_person_number(number) == masked
    assert number not in mask_person_number(number)


def test_mask_has_a_fixed_width_and_never_shows_a_short_value() -> None:
    assert mask_person_number("1234567890") == "******890"
    assert mask_person_number("12") == "******"
