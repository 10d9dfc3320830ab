"""The masking processor: no call site can log a person number, and no id is mangled."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest

from services.kernel import logging as rod_logging
from services.kernel.identifiers import MASKED_PERSON_NUMBER, mask_person_number
from tests.support import LOG_SINK

# ids as the system makes them, some with a digit run that looks like a person number
IDS = [
    "43d63019-0bdc-4fee-92c0-a9ae12345399",
    "ffa6cebd-afef-4828-a123-456789985ec1",
    "12345678-1234-5123-8123-123456789012",
    "12345678-9abc-4def-8123-456789abcdef",  # starts with nine digits (8, a dash, 1)
    "91264990-38f2-4a1b-8c2d-3e4f5a6b7c8d",  # the batch of issue 14: first group all digits
    "019a2345-6789-7abc-8def-0123456789ab",  # a result id (UUIDv7) in a minute whose first group is digits
    "123456789abcdef0",  # an Avro fingerprint: nine digits, then hex
    "123456789ABCDEF0",
    "249566758a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5",  # a sha256 digest
]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Log into a buffer as JSON for one test, then back to the session's log scan."""
    out = io.StringIO()
    rod_logging.configure(stream=out, json=True)
    try:
        yield out
    finally:
        rod_logging.configure(stream=LOG_SINK, json=True)


def entries(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_person_numbers_are_masked_in_messages_values_and_exceptions(captured: io.StringIO) -> None:
    log = rod_logging.get_logger("test")
    try:
        raise ValueError("bad bsn 111222333")
    except ValueError:
        log.exception(
            "rejected 123456782", detail={"numbers": ["249 566 758", "1012.22.331"]}, position=123456789
        )
    line = captured.getvalue()
    for number in ("111222333", "123456782", "249 566 758", "1012.22.331"):
        assert number not in line
    [entry] = entries(captured)
    assert entry["event"] == "rejected ******782"
    assert entry["detail"]["numbers"] == ["******758", "******331"]
    assert "ValueError: bad bsn ******333" in entry["exception"]
    assert entry["position"] == 123456789  # integers are positions, offsets, counts: kept


def test_an_exception_as_a_value_and_deeply_nested_values_are_masked(captured: io.StringIO) -> None:
    log = rod_logging.get_logger("test")
    log.warning("failed", error=ValueError("onderwijsnummer 101222331 unknown"),
                nested={"a": [{"b": ("x 319072356",)}], "c": {"d": {"e": "012345672"}}})
    [entry] = entries(captured)
    assert entry["error"] == "ValueError('onderwijsnummer ******331 unknown')"
    assert entry["nested"] == {"a": [{"b": ["x ******356"]}], "c": {"d": {"e": "******672"}}}
    assert not [n for n in ("101222331", "319072356", "012345672") if n in captured.getvalue()]


@pytest.mark.parametrize("uid", IDS)
def test_ids_are_never_mangled(uid: str, captured: io.StringIO) -> None:
    assert rod_logging.mask_digits(f"batch {uid} done") == f"batch {uid} done"
    assert rod_logging.mask_digits(f"/v1/batches/{uid}/feedback") == f"/v1/batches/{uid}/feedback"
    rod_logging.get_logger("test").info(f"result {uid}", result_id=uid, ids=[uid], where={"batch_id": uid})
    [entry] = entries(captured)
    assert (entry["event"], entry["result_id"], entry["ids"], entry["where"]) == (
        f"result {uid}", uid, [uid], {"batch_id": uid})


@pytest.mark.parametrize("uid", IDS)
def test_a_person_number_beside_an_id_is_still_masked(uid: str) -> None:
    assert rod_logging.mask_digits(f"{uid} bsn 111222333") == f"{uid} bsn ******333"
    assert rod_logging.mask_digits(f"111222333,{uid}") == f"******333,{uid}"


def test_what_only_looks_like_an_id_is_masked() -> None:
    # not UUID form (nine digits in the first group), too short for a hex id, or glued to a word
    not_a_uuid = "-abcd-4bcd-8bcd-abcdefabcdef"
    assert rod_logging.mask_digits(f"123456789{not_a_uuid}") == f"******789{not_a_uuid}"
    assert rod_logging.mask_digits("111222333abc") == "******333abc"
    assert rod_logging.mask_digits("bsn111222333") == "bsn******333"
    assert rod_logging.mask_digits("111222333xyzxyzxyzxyz") == "******333xyzxyzxyzxyz"


def test_one_masked_form_everywhere() -> None:
    """The logs mask as the reports, extracts and `rod feed tail` do: mask_person_number."""
    for written in ("111222333", "111 222 333", "1112.22.333", "111-222-333"):
        masked = rod_logging.mask_digits(written)
        assert masked == mask_person_number(written) == "******333"
        assert MASKED_PERSON_NUMBER.fullmatch(masked)


MADE_AT_IMPORT = rod_logging.get_logger("imported")


def test_a_client_address_is_kept_whole_and_a_person_number_in_its_place_is_not(
    captured: io.StringIO,
) -> None:
    log = rod_logging.get_logger("test")
    log.warning("authentication_failed", client="192.168.100.200")
    log.warning("authentication_failed", client="111222333", note="from 192.168.100.200")
    first, second = entries(captured)
    assert first["client"] == "192.168.100.200"
    assert second["client"] == "******333"  # not an address: masked like any value
    assert second["note"] == "from ******100.200"  # only the `client` key is read as an address


def test_a_logger_made_before_configure_follows_it(captured: io.StringIO) -> None:
    MADE_AT_IMPORT.info("batch_started", bsn="111222333")
    [entry] = entries(captured)
    assert (entry["component"], entry["bsn"]) == ("imported", "******333")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", entry["timestamp"])  # not masked
