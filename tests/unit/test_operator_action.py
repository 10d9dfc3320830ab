"""The first OperatorAction sample still decodes with the current schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from services.kernel.codec import Codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avro"


def test_the_first_operator_action_sample_still_decodes() -> None:
    name, record = Codec().decode((FIXTURES / "OperatorAction.v1.bin").read_bytes())
    assert name == "OperatorAction"
    assert (record["operator"], record["via"], record["action"], record["target"]) == (
        "alice", "console", "subscription-pause", "cibg-big",
    )
    assert record["at"] == datetime(2026, 11, 23, 3, 12, tzinfo=UTC)
