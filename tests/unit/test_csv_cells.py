"""Finding 3 of issue 13: no CSV the system writes has a cell a spreadsheet takes for a formula.
The helper with OWASP's cases, and a look at the source: every CSV writer goes through it."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.kernel import csv_cells
from services.kernel.csv_cells import neutralise
from services.registrar.api import _feedback_csv

SERVICES = Path(__file__).resolve().parents[2] / "services"

# OWASP "CSV Injection": cells that start with = + - @, tab or carriage return
FORMULAS = ["=1+1", "-A1-B1", "+1", "-1", "@SUM(1+1)*cmd|' /C calc'!A0", "=HYPERLINK(\"http://x\",\"y\")",
            "\t=1+1", "\r=1+1", "-2+3+cmd|' /C calc'!A0", "==", "+", "-", "@"]
PLAIN = ["25BE", "A-1", "", "0,5", "true", "ADMINISTRATIVE_ERROR", "019a2f64-fe61-709d-b1c0-d5c7399faf0b",
         "2025-05-01T00:00:00+02:00", " =1", "a=b", "'quoted", "10 000"]


def _written(*cells: object) -> list[str]:
    out = io.StringIO()
    csv_cells.writer(out).writerow(cells)
    return next(csv.reader(io.StringIO(out.getvalue())))


@pytest.mark.parametrize("cell", FORMULAS)
def test_a_formula_cell_is_read_back_with_a_leading_quote(cell: str) -> None:
    assert neutralise(cell) == "'" + cell
    assert _written(cell) == ["'" + cell]


@pytest.mark.parametrize("cell", PLAIN)
def test_other_text_is_written_unchanged(cell: str) -> None:
    assert neutralise(cell) == cell
    assert _written(cell) == [cell]


def test_numbers_stay_numbers_also_negative_ones() -> None:
    assert [neutralise(n) for n in (3, -1, 0.25, -0.5)] == [3, -1, 0.25, -0.5]
    assert _written(3, -1, 0.25, -0.5) == ["3", "-1", "0.25", "-0.5"]


def test_no_csv_writer_bypasses_the_helper() -> None:
    """Every CSV the system writes goes through services/kernel/csv_cells.py."""
    writers = re.compile(r"csv\.(writer|DictWriter)\(")
    bypassing = [str(p.relative_to(SERVICES)) for p in SERVICES.rglob("*.py")
                 if p.name != "csv_cells.py" and writers.search(p.read_text())]
    assert bypassing == []


def test_the_feedback_csv_neutralises_its_cells() -> None:
    result_id = "019a2f64-fe61-709d-b1c0-d5c7399faf0b"
    rows = [(1, 2, "accepted", result_id, []), (2, 3, "=1+1", None, ["-A1", "X"])]
    store = SimpleNamespace(records=lambda _batch: iter(rows))
    text = b"".join(_feedback_csv(store, SimpleNamespace())).decode()  # type: ignore[arg-type]
    assert list(csv.reader(io.StringIO(text)))[1:] == [
        ["1", "2", "accepted", result_id, ""], ["2", "3", "'=1+1", "", "'-A1 X"]]
