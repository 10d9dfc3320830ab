"""The masking processor: no call site can log a person number."""

from __future__ import annotations

import io
import json
import re

from services.kernel import logging as rod_logging
from tests.support import LOG_SINK


def test_person_numbers_are_masked_in_messages_values_and_exceptions() -> None:
    out = io.StringIO()
    rod_logging.configure(stream=out, json=True)
    try:
        log = rod_logging.get_logger("test")
        try:
            raise ValueError("bad bsn 111222333")
        except ValueError:
            log.exception(
                "rejected 123456782", detail={"numbers": ["249 566 758", "1012.22.331"]}, position=123456789
            )
    finally:
        rod_logging.configure(stream=LOG_SINK, json=True)
    line = out.getvalue()
    for number in ("111222333", "123456782", "249 566 758", "1012.22.331"):
        assert number not in line
    entry = json.loads(line)
    assert entry["event"] == "rejected *****782"
    assert entry["detail"]["numbers"] == ["*****758", "*****331"]
    assert entry["position"] == 123456789  # integers are positions, offsets, counts: kept


def test_ids_are_never_mangled_and_numbers_beside_them_still_are() -> None:
    ids = ["43d63019-0bdc-4fee-92c0-a9ae12345399", "ffa6cebd-afef-4828-a123-456789985ec1",
           "12345678-1234-5123-8123-123456789012"]
    for uid in ids:
        assert rod_logging.mask_digits(f"batch {uid} done") == f"batch {uid} done"
    assert rod_logging.mask_digits(f"{ids[0]} bsn 111222333") == f"{ids[0]} bsn *****333"


MADE_AT_IMPORT = rod_logging.get_logger("imported")


def test_a_client_address_is_kept_whole_and_a_person_number_in_its_place_is_not() -> None:
    out = io.StringIO()
    rod_logging.configure(stream=out, json=True)
    try:
        log = rod_logging.get_logger("test")
        log.warning("authentication_failed", client="192.168.100.200")
        log.warning("authentication_failed", client="111222333", note="from 192.168.100.200")
    finally:
        rod_logging.configure(stream=LOG_SINK, json=True)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["client"] == "192.168.100.200"
    assert second["client"] == "*****333"  # not an address: masked like any value
    assert second["note"] == "from *****100.200"  # only the `client` key is read as an address


def test_a_logger_made_before_configure_follows_it() -> None:
    out = io.StringIO()
    rod_logging.configure(stream=out, json=True)
    try:
        MADE_AT_IMPORT.info("batch_started", bsn="111222333")
    finally:
        rod_logging.configure(stream=LOG_SINK, json=True)
    entry = json.loads(out.getvalue())
    assert (entry["component"], entry["bsn"]) == ("imported", "*****333")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", entry["timestamp"])  # not masked
