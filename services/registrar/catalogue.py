"""The programme catalogue: which programme codes exist, in which sector, with which properties.

Reference data, replaceable as a whole (``ROD_CATALOGUE=path.csv``). The CSV has the columns
``code,name,sector,kind,recognised,big_profession``; further columns (the shipped default has
``source``) are ignored. Codes compare without regard to case; each entry keeps its own
spelling, which is what a registration records.

A malformed file is an error naming the line, never a silently skipped row: a register that
quietly forgets programmes would reject valid results.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources

SECTORS = ("VO", "PRO", "VSO", "MBO", "HO")
KINDS = ("diploma", "module")
COLUMNS = ("code", "name", "sector", "kind", "recognised", "big_profession")
_BOOLEANS = {"true": True, "false": False}
_DEFAULT_RESOURCE = "catalogue.csv"


@dataclass(frozen=True, slots=True)
class Programme:
    """One catalogue entry: a programme code as known in one sector."""

    code: str
    name: str
    sector: str
    kind: str  # "diploma" | "module"
    recognised: bool
    big_profession: str | None


class Catalogue:
    """Programmes by (sector, code); lookups are single dict hits."""

    __slots__ = ("_by_key", "_sectors_by_code", "source")

    def __init__(self, programmes: Iterable[Programme], source: str = "<memory>") -> None:
        self.source = source
        self._by_key: dict[tuple[str, str], Programme] = {}
        sectors: dict[str, set[str]] = {}
        for programme in programmes:
            key = (programme.sector, programme.code.casefold())
            if key in self._by_key:
                raise ValueError(f"{source}: programme code listed twice in sector {programme.sector}")
            self._by_key[key] = programme
            sectors.setdefault(key[1], set()).add(programme.sector)
        self._sectors_by_code = {code: frozenset(s) for code, s in sectors.items()}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Catalogue:
        """Read a catalogue CSV; ``None`` reads the packaged default ``catalogue.csv``."""
        if path is None:
            text = resources.files(__package__).joinpath(_DEFAULT_RESOURCE).read_text("utf-8-sig")
            return cls.parse(text, source=f"{__package__}/{_DEFAULT_RESOURCE}")
        with open(path, encoding="utf-8-sig", newline="") as f:
            return cls.parse(f.read(), source=os.fspath(path))

    @classmethod
    def parse(cls, text: str, source: str = "<text>") -> Catalogue:
        """Build a catalogue from CSV text; raise ValueError naming the line of any fault."""
        return cls(_read_rows(text, source), source=source)

    def find(self, sector: str, code: str) -> Programme | None:
        """The entry for ``code`` in ``sector`` (code compared without case), or None."""
        return self._by_key.get((sector, code.casefold()))

    def sectors_of(self, code: str) -> set[str]:
        """The sectors whose catalogue lists ``code`` (empty when none does)."""
        return set(self._sectors_by_code.get(code.casefold(), ()))

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Programme]:
        return iter(self._by_key.values())

    def __repr__(self) -> str:
        return f"Catalogue(source={self.source!r}, programmes={len(self)})"


def _read_rows(text: str, source: str) -> Iterator[Programme]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{source}: line 1: empty file, expected a header row")
        header = [name.strip() for name in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{source}: line 1: header lacks column(s) {', '.join(missing)}")
        index = {c: header.index(c) for c in COLUMNS}
        seen: set[tuple[str, str]] = set()
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{source}: line {line}: {len(row)} fields, the header has {len(header)}")
            programme = _programme(row, index, f"{source}: line {line}")
            key = (programme.sector, programme.code.casefold())
            if key in seen:
                raise ValueError(f"{source}: line {line}: code listed twice in sector {key[0]}")
            seen.add(key)
            yield programme
    except csv.Error as exc:
        raise ValueError(f"{source}: line {reader.line_num}: unreadable CSV ({exc})") from None


def _programme(row: list[str], index: dict[str, int], where: str) -> Programme:
    def cell(column: str) -> str:
        return row[index[column]].strip()

    code, name = cell("code"), cell("name")
    if not code:
        raise ValueError(f"{where}: column code is empty")
    if not name:
        raise ValueError(f"{where}: column name is empty")
    sector = cell("sector").upper()
    if sector not in SECTORS:
        raise ValueError(f"{where}: column sector must be one of {', '.join(SECTORS)}")
    kind = cell("kind").lower()
    if kind not in KINDS:
        raise ValueError(f"{where}: column kind must be diploma or module")
    recognised = _BOOLEANS.get(cell("recognised").lower())
    if recognised is None:
        raise ValueError(f"{where}: column recognised must be true or false")
    return Programme(
        code=code,
        name=name,
        sector=sector,
        kind=kind,
        recognised=recognised,
        big_profession=cell("big_profession") or None,
    )
