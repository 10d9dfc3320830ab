"""The one way the system writes CSV: no cell can be taken for a formula by a spreadsheet.

A spreadsheet program runs a cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage
return before one) as a formula, and diploma numbers may start with `-`. Following OWASP's
advice on CSV injection, such a text cell is written with a leading `'`, so it is shown as
text: `-A1-B1` becomes `'-A1-B1`. Numbers (int, float) are written as they are: a number is
never a formula, and a negative one stays a number.

    >>> import io
    >>> out = io.StringIO()
    >>> writer(out).writerow(["-A1-B1", "=1+1", "25BE", 3, -1])
    >>> out.getvalue()
    "'-A1-B1,'=1+1,25BE,3,-1\\r\\n"
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: Any) -> Any:
    """The cell, with a leading `'` if it is text a spreadsheet would take for a formula."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def writer(out: Any) -> CellWriter:
    """A `csv.writer(out)` whose rows pass through `neutralise`, cell by cell."""
    return CellWriter(csv.writer(out))


class CellWriter:
    def __init__(self, csv_writer: Any) -> None:
        self._writer = csv_writer

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([neutralise(cell) for cell in row])
