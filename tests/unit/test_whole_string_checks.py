"""Checks of names and codes match the whole text: `$` alone lets a trailing newline through."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.audit.periods import Period
from services.operations.identity import OperatorError, add_operator
from services.operations.store import OperationsStore


def test_a_trailing_newline_is_refused_in_periods_and_operator_names(tmp_path: Path) -> None:
    assert Period.parse("2025-05") == Period(2025, 5)
    with pytest.raises(ValueError, match="YYYY-05"):
        Period.parse("2025-05\n")
    store = OperationsStore(f"sqlite:///{tmp_path / 'operations.db'}")
    try:
        with pytest.raises(OperatorError):
            add_operator(store, "alice\n", "test")
        assert add_operator(store, "alice", "test")
    finally:
        store.dispose()
