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


MADE_AT_IMPORT = rod_logging.get_logger("imported")


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
