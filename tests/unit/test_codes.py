"""The one table of codes: every message's parameters are documented and always filled in."""

from __future__ import annotations

import string

import pytest

from services.kernel.codes import CODES, problem


def placeholders(message: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(message) if name}


@pytest.mark.parametrize("code", sorted(CODES))
def test_the_english_line_takes_the_same_parameters_as_the_message(code: str) -> None:
    dutch, english = CODES[code]
    assert placeholders(dutch) == placeholders(english)


def test_parameters_fill_the_message_and_extra_ones_are_left_out() -> None:
    refused = problem("COLUMNS_MISSING", "file", line=3, columns="diplomadatum", element="x")
    assert refused.as_dict() == {
        "field": "file", "code": "COLUMNS_MISSING",
        "message": "In de kopregel (regel 3) ontbreken verplichte kolommen: diplomadatum.",
    }
    assert refused.text("en") == "The header (line 3) lacks required columns: diplomadatum."
    assert refused.text("nl") == refused.message
    assert problem("FILE_EMPTY", "file", line=1).message == CODES["FILE_EMPTY"][0]
    assert problem("BSN_INVALID", "bsn").text("en") == CODES["BSN_INVALID"][1]
    with pytest.raises(KeyError):
        problem("COLUMNS_MISSING", "file", line=3)  # a parameter forgotten is a programming error
