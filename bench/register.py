"""A realistic register for the benchmarks (issue 16): results over 2012-2026, streamed.

Deterministic from a seed and flat in memory however many results are asked for: the plan
splits N over the years, a year over its sectors and a sector over its institutions, one year
at a time (a few thousand counts, whatever N is), and each institution-year batch draws its
rows from its own seeded generator, so a batch can be generated alone (and in parallel) and
the same seed always gives the same rows.

The mix:
- sectors: VO, MBO and HO the bulk; PRO and VSO only from 2023 (diplomas of school year
  2021-2022 and earlier cannot be exchanged), each about 1.5% of a year;
- 1,800 institutions of very different sizes (Zipf-like within each kind): VO schools (some
  with PRO), PRO schools, VSO schools, MBO colleges (MBO only: they deliver XML), hogescholen
  and universities (a third of the HO institutions unfunded, so they get recognised
  programmes only); each with valid institution, branch and provider codes;
- programmes from the registrar's catalogue (diplomas only; the BIG profession comes with
  the programme, as the catalogue says);
- a BSN for most learners, an onderwijsnummer for about 1.5% (fewer in HO);
- BIG programmes weighted to a few percent of HO and MBO (BIG_SHARE);
- a summer peak: most diploma dates in June-August;
- about 1% of the results deleted later, with a mix of the reasons the register accepts.

Person numbers are synthetic: a BSN is "9" + seven drawn digits + the eleven-test check digit,
an onderwijsnummer "10" + six drawn digits + its check digit. They are made at run time and
written only to the files a benchmark asks for; never print or log them.

Python API (rows use the English field names `Registrar.register` and the bulk import read):

    >>> insts = institutions(seed=1)
    >>> for row in results(1_000_000, seed=1): ...
    >>> for d in deletions(1_000_000, seed=1): ...     # the ~1% of those results to delete

Script:

    .venv/bin/python bench/register.py --results 10000000 --seed 1 --write-csv DIR
    .venv/bin/python bench/register.py --results 1000000 --stats
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import csv
import datetime
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.registrar.bulk import FIELD_NAMES  # noqa: E402
from services.registrar.catalogue import Catalogue, Programme  # noqa: E402
from services.registrar.rules import DELETION_REASONS, PRO_VSO_FIRST_DATE  # noqa: E402

FIRST_YEAR = 2012
LAST_YEAR = 2026
# The last diploma date generated: no date after it, so a run in December 2026 or later
# never meets DIPLOMA_DATE_IN_FUTURE.
LAST_DATE = datetime.date(2026, 11, 30)
DEFAULT_RESULTS = 10_000_000
DEFAULT_SEED = 1
INSTITUTION_COUNT = 1800
DELETION_SHARE = 0.01
FILE_CHUNK = 100_000  # records per bulk file at most; a bigger batch is split in parts

# Share of a year's results per sector (PRO and VSO only from their first year).
SECTOR_SHARES: dict[str, float] = {"VO": 0.37, "MBO": 0.31, "HO": 0.29, "PRO": 0.015, "VSO": 0.015}
PRO_VSO_FIRST_YEAR = 2023
assert datetime.date(PRO_VSO_FIRST_YEAR, 1, 1) >= PRO_VSO_FIRST_DATE
# The register grows: each year a little more than the one before.
YEAR_GROWTH = 0.015

# Relative weight of each month (Jan..Dec) per sector: exams in June/July, HO also
# August/September and a winter round.
MONTH_WEIGHTS: dict[str, tuple[float, ...]] = {
    "VO": (0.5, 0.5, 0.5, 0.5, 1, 30, 55, 6, 0.5, 0.5, 0.5, 0.5),
    "PRO": (1, 1, 1, 1, 2, 30, 50, 5, 1, 1, 1, 1),
    "VSO": (1, 1, 1, 1, 2, 30, 50, 5, 1, 1, 1, 1),
    "MBO": (4, 3, 3, 3, 4, 25, 35, 10, 3, 3, 3, 4),
    "HO": (6, 4, 3, 3, 3, 8, 25, 25, 10, 5, 3, 5),
}

# Learners without a BSN get an onderwijsnummer (newcomers, mostly in VO and MBO).
ONDERWIJSNUMMER_SHARE: dict[str, float] = {"VO": 0.02, "PRO": 0.03, "VSO": 0.03, "MBO": 0.015, "HO": 0.003}

# Deletions: the avoidable reason (re-exam, extra courses) most, fraud rarely.
DELETION_MIX: dict[str, float] = {
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT": 0.45,
    "ADMINISTRATIVE_ERROR": 0.30,
    "WRONG_PERSON_OR_DATA": 0.15,
    "OTHER": 0.07,
    "FRAUD": 0.03,
}
assert set(DELETION_MIX) == set(DELETION_REASONS)
EXPLANATIONS = {"FRAUD": "Fraude vastgesteld door de examencommissie", "OTHER": "Anders, zie dossier"}

# The kinds of institution: (kind, count, sectors, Zipf exponent, name, share unfunded).
# The counts add up to INSTITUTION_COUNT; a sector's results are spread over the
# institutions that serve it by their size.
_KINDS: tuple[tuple[str, int, tuple[str, ...], float, str, float], ...] = (
    ("vo", 1010, ("VO",), 0.4, "Scholengemeenschap", 0.0),
    ("vo-pro", 150, ("PRO", "VO"), 0.4, "Scholengemeenschap", 0.0),
    ("pro", 60, ("PRO",), 0.4, "Praktijkschool", 0.0),
    ("vso", 320, ("VSO",), 0.4, "School voor voortgezet speciaal onderwijs", 0.0),
    ("mbo", 70, ("MBO",), 0.5, "ROC", 0.0),
    ("hbo", 140, ("HO",), 0.9, "Hogeschool", 1 / 3),
    ("wo", 50, ("HO",), 0.9, "Universiteit", 1 / 3),
)
# The share of a sector's results whose programme has a BIG profession (nurses, doctors,
# physiotherapists ...: a few percent); the shipped catalogue is small and lists them
# prominently, so without weights a quarter of all results would go to CIBG.
BIG_SHARE: dict[str, float] = {"HO": 0.07, "MBO": 0.035}
assert sum(k[1] for k in _KINDS) == INSTITUTION_COUNT
_BULK_COLUMNS = tuple(FIELD_NAMES)  # the registrar's bulk-file columns (Dutch names)
_REGISTER_COLUMNS = tuple(c for c in _BULK_COLUMNS if c not in ("reden", "toelichting"))
_DELETE_COLUMNS = ("actie", *_BULK_COLUMNS)
_DUTCH = {english: dutch for dutch, english in FIELD_NAMES.items()}
_FREE_TEXT = frozenset({"programme_code", "explanation"})  # from the catalogue or free text


@dataclass(frozen=True, slots=True)
class GeneratedInstitution:
    """An institution of the generated register: what `rod institution add` needs, and more."""

    code: str
    name: str
    sectors: tuple[str, ...]
    funded: bool
    branches: tuple[str, ...]
    provider: str
    size: float  # relative size within its kind (the largest of a kind is 1.0)
    kind: str


@dataclass(frozen=True, slots=True)
class Batch:
    """One institution's results of one year: what one bulk file (or a few parts) holds."""

    year: int
    institution: GeneratedInstitution
    counts: tuple[tuple[str, int], ...]  # (sector, results) in sector order

    @property
    def total(self) -> int:
        return sum(n for _s, n in self.counts)


def institutions(seed: int = DEFAULT_SEED) -> list[GeneratedInstitution]:
    """The ~1,800 institutions, deterministic from `seed`, in code order."""
    rng = random.Random(f"institutions/{seed}")
    codes = [f"{n // 676:02d}{chr(65 + n // 26 % 26)}{chr(65 + n % 26)}"
             for n in rng.sample(range(67_600), INSTITUTION_COUNT)]
    providers = rng.sample(range(1_000_000), INSTITUTION_COUNT)
    made: list[GeneratedInstitution] = []
    index = 0
    for kind, count, sectors, exponent, label, unfunded_share in _KINDS:
        ranks = list(range(1, count + 1))
        rng.shuffle(ranks)
        for number, rank in enumerate(ranks, 1):
            size = 1.0 / rank**exponent
            code = codes[index]
            provider_n = providers[index]
            index += 1
            branch_count = max(1, min(20, round(20 * size**0.5)))
            made.append(GeneratedInstitution(
                code=code,
                name=f"{label} {number:04d}",
                sectors=sectors,
                funded=rng.random() >= unfunded_share,
                branches=tuple(f"{code}{b:02d}" for b in range(1, branch_count + 1)),
                provider=f"{provider_n // 1000:03d}A{provider_n % 1000:03d}",
                size=size,
                kind=kind,
            ))
    made.sort(key=lambda inst: inst.code)
    return made


def plan(n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED,
         insts: list[GeneratedInstitution] | None = None) -> Iterator[Batch]:
    """The batches in order (year by year; within a year the institutions in a seeded order).

    `n` is split over the years, each year's count over its sectors, each sector's over the
    institutions serving it by size (largest remainder at each step): the counts add up to
    `n` exactly, the sector shares hold at any `n`, and only one year is planned at a time.
    """
    insts = institutions(seed) if insts is None else insts
    years = range(FIRST_YEAR, LAST_YEAR + 1)
    serving = {sector: [i for i, inst in enumerate(insts) if sector in inst.sectors]
               for sector in SECTOR_SHARES}
    sizes = {sector: [insts[i].size for i in members] for sector, members in serving.items()}
    for year, year_count in zip(years, _split(n, [(1 + YEAR_GROWTH) ** (y - FIRST_YEAR) for y in years]),
                                strict=True):
        sectors = [s for s in SECTOR_SHARES if s not in ("PRO", "VSO") or year >= PRO_VSO_FIRST_YEAR]
        by_institution: dict[int, list[tuple[str, int]]] = {}
        for sector, sector_count in zip(sectors, _split(year_count, [SECTOR_SHARES[s] for s in sectors]),
                                        strict=True):
            for i, count in zip(serving[sector], _split(sector_count, sizes[sector]), strict=True):
                if count:
                    by_institution.setdefault(i, []).append((sector, count))
        order = sorted(by_institution)
        random.Random(f"order/{seed}/{year}").shuffle(order)
        for i in order:
            yield Batch(year, insts[i], tuple(by_institution[i]))


def _split(total: int, weights: list[float]) -> list[int]:
    """`total` in whole parts proportional to `weights` (largest remainder; ties to the first)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    for k in sorted(range(len(weights)), key=lambda k: counts[k] - exact[k])[: total - sum(counts)]:
        counts[k] += 1
    return counts


def results(n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED) -> Iterator[dict[str, str | None]]:
    """`n` registration records (English field names, text values), streamed in plan order."""
    generator = _Generator(seed)
    for batch in plan(n, seed, generator.institutions):
        for row, _reason in generator.batch(batch):
            yield row


def deletions(n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED) -> Iterator[dict[str, str | None]]:
    """The deletions of the register `results(n, seed)`: about 1% of its results.

    Each is the result's record plus `reason` and `explanation` (None unless the reason needs
    one), so it serves a bulk deletion (identity fields + reason) and, with the result id the
    registration answered, `Registrar.delete`. Streams by regenerating the results.
    """
    generator = _Generator(seed)
    for batch in plan(n, seed, generator.institutions):
        for row, reason in generator.batch(batch):
            if reason is not None:
                yield {**row, "reason": reason, "explanation": EXPLANATIONS.get(reason)}


Pair = tuple[dict[str, str | None], str | None]  # a record and its deletion reason (or None)


def records(n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED) -> Iterator[tuple[Batch, Iterator[Pair]]]:
    """Per batch: the batch and its (record, deletion reason or None) pairs, one pass for both."""
    generator = _Generator(seed)
    for batch in plan(n, seed, generator.institutions):
        yield batch, generator.batch(batch)


class _Generator:
    """Draws the rows of a batch; all lookup tables built once."""

    def __init__(self, seed: int, catalogue: Catalogue | None = None) -> None:
        self.seed = seed
        self.institutions = institutions(seed)
        catalogue = catalogue or Catalogue.load(None)
        # Per (sector, funded): the programme codes and their cumulative weights.
        self.programmes: dict[tuple[str, bool], tuple[list[str], list[float]]] = {}
        for sector in SECTOR_SHARES:
            diplomas = [p for p in catalogue if p.sector == sector and p.kind == "diploma"]
            for funded in (True, False):
                allowed = diplomas if funded else [p for p in diplomas if p.recognised]
                if not allowed:
                    raise ValueError(f"the catalogue has no programme an institution of {sector} may deliver")
                self.programmes[(sector, funded)] = _programme_weights(allowed, BIG_SHARE.get(sector))
        self._days: dict[tuple[int, str], tuple[list[str], list[float]]] = {}
        reasons = list(DELETION_MIX)
        self._reasons = reasons
        self._reason_cum = list(itertools.accumulate(DELETION_MIX[r] for r in reasons))

    def dates(self, year: int, sector: str) -> tuple[list[str], list[float]]:
        """Every allowed date of the year as text, with cumulative weights (cached)."""
        key = (year, sector)
        if key not in self._days:
            days: list[str] = []
            weights: list[float] = []
            for month, month_weight in enumerate(MONTH_WEIGHTS[sector], 1):
                length = calendar.monthrange(year, month)[1]
                for day in range(1, length + 1):
                    date = datetime.date(year, month, day)
                    if date > LAST_DATE or (sector in ("PRO", "VSO") and date < PRO_VSO_FIRST_DATE):
                        continue
                    days.append(date.isoformat())
                    weights.append(month_weight / length)
            self._days[key] = (days, list(itertools.accumulate(weights)))
        return self._days[key]

    def batch(self, batch: Batch) -> Iterator[Pair]:
        inst = batch.institution
        rng = random.Random(f"batch/{self.seed}/{batch.year}/{inst.code}")
        random_ = rng.random
        branches = inst.branches
        branch_count = len(branches)
        for sector, count in batch.counts:
            programmes, programme_cum = self.programmes[(sector, inst.funded)]
            programme_top = programme_cum[-1]
            days, cum = self.dates(batch.year, sector)
            top = cum[-1]
            onr_share = ONDERWIJSNUMMER_SHARE[sector]
            provider = inst.provider if sector in ("PRO", "VSO") or random_() < 0.5 else None
            prefix = f"{batch.year}-{sector}-"
            for seq in range(1, count + 1):
                if random_() < onr_share:
                    bsn, onr = None, _onderwijsnummer(random_)
                else:
                    bsn, onr = _bsn(random_), None
                row: dict[str, str | None] = {
                    "bsn": bsn,
                    "onderwijsnummer": onr,
                    "institution": inst.code,
                    "branch": branches[int(random_() * branch_count)],
                    "provider": provider,
                    "sector": sector,
                    "programme_code": programmes[bisect.bisect(programme_cum, random_() * programme_top)],
                    "diploma_number": f"{prefix}{seq}",
                    "diploma_date": days[bisect.bisect(cum, random_() * top)],
                }
                reason = None
                if random_() < DELETION_SHARE:
                    reason = self._reasons[bisect.bisect(self._reason_cum, random_() * self._reason_cum[-1])]
                yield row, reason


def _programme_weights(programmes: list[Programme], big_share: float | None) -> tuple[list[str], list[float]]:
    """Codes and cumulative weights: BIG programmes together `big_share`, the rest evenly."""
    big = [p for p in programmes if p.big_profession]
    if big_share is None or not big or len(big) == len(programmes):
        weights = [1.0] * len(programmes)
    else:
        other = (1 - big_share) / (len(programmes) - len(big))
        weights = [big_share / len(big) if p.big_profession else other for p in programmes]
    return [p.code for p in programmes], list(itertools.accumulate(weights))


def _weights(weights: tuple[int, ...]) -> list[int]:
    """The weighted digit sum of every number of len(weights) digits (a lookup table)."""
    width = len(weights)
    return [sum(w * int(d) for w, d in zip(weights, f"{n:0{width}d}", strict=True)) for n in range(10**width)]


# Weights 9, 8, ..., 2 over the first eight digits, split so a sum is two table lookups.
_BSN_HIGH, _BSN_LOW = _weights((8, 7, 6)), _weights((5, 4, 3, 2))  # after the leading "9"
_ONR_HIGH, _ONR_LOW = _weights((7, 6, 5)), _weights((4, 3, 2))  # after the leading "10"


def _bsn(random_: Callable[[], float]) -> str:
    """A BSN: "9", seven drawn digits and the check digit (weights 9..2, -1; sum % 11 == 0)."""
    while True:
        body = int(random_() * 10_000_000)
        check = (81 + _BSN_HIGH[body // 10_000] + _BSN_LOW[body % 10_000]) % 11
        if check < 10:
            return f"9{body:07d}{check}"


def _onderwijsnummer(random_: Callable[[], float]) -> str:
    """An onderwijsnummer: "10", six drawn digits and the check digit (sum % 11 == 5)."""
    while True:
        body = int(random_() * 1_000_000)
        check = (9 + _ONR_HIGH[body // 1000] + _ONR_LOW[body % 1000] - 5) % 11
        if check < 10:
            return f"10{body:06d}{check}"


# --- files ---------------------------------------------------------------------------------


def write_files(directory: str | os.PathLike[str], n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED,
                chunk: int = FILE_CHUNK) -> dict[str, object]:
    """Write the register as bulk files under `directory` and return the manifest.

    One file per institution-year batch (split into parts of at most `chunk` records), CSV
    for institutions without MBO and XML for MBO colleges (the register refuses their CSV:
    FILE_FORMAT_NOT_ALLOWED); then one deletion file per batch with deletions (`actie`
    verwijderen, `reden`, `toelichting`). Also `institutions.csv` (code,name,sectors,funded)
    for `rod institution add` and `manifest.json` listing the files in import order.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    insts = institutions(seed)
    with (out / "institutions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("code", "name", "sectors", "funded"))
        for inst in insts:
            funded = "true" if inst.funded else "false"
            writer.writerow((inst.code, inst.name, ",".join(inst.sectors), funded))
    register_files: list[dict[str, object]] = []
    deletion_files: list[dict[str, object]] = []
    for batch, rows in records(n, seed):
        inst = batch.institution
        fmt = "xml" if "MBO" in inst.sectors else "csv"
        pending: list[dict[str, str | None]] = []  # at most one batch's ~1%
        part_rows: Iterator[Pair] = iter(rows)
        for part in itertools.count(1):
            piece = list(itertools.islice(part_rows, chunk))
            if not piece:
                break
            name = f"{batch.year}/{inst.code}-{part:02d}.{fmt}"
            _write(out / name, fmt, inst.code, (row for row, _r in piece), deleting=False)
            register_files.append({"path": name, "institution": inst.code, "year": batch.year,
                                   "format": fmt, "action": "register", "records": len(piece)})
            pending.extend({**row, "reason": r, "explanation": EXPLANATIONS.get(r)} for row, r in piece if r)
        if pending:
            name = f"deletions/{batch.year}/{inst.code}.{fmt}"
            _write(out / name, fmt, inst.code, pending, deleting=True)
            deletion_files.append({"path": name, "institution": inst.code, "year": batch.year,
                                   "format": fmt, "action": "delete", "records": len(pending)})
    manifest: dict[str, object] = {
        "seed": seed,
        "results": n,
        "deletions": sum(int(f["records"]) for f in deletion_files),  # type: ignore[call-overload]
        "institutions": [{"code": i.code, "name": i.name, "sectors": list(i.sectors), "funded": i.funded}
                         for i in insts],
        "files": register_files + deletion_files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest) + "\n", encoding="utf-8")
    return manifest


def _write(
    path: Path, fmt: str, institution: str, rows: Iterable[dict[str, str | None]], *, deleting: bool
) -> None:
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
    fields = tuple(FIELD_NAMES.values()) if deleting else tuple(FIELD_NAMES[c] for c in _REGISTER_COLUMNS)
    with path.open("w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(_DELETE_COLUMNS if deleting else _REGISTER_COLUMNS)
            lead = ("verwijderen",) if deleting else ()
            writer.writerows((*lead, *(row[k] or "" for k in fields)) for row in rows)
            return
        f.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<aanlevering instellingscode="{institution}">\n')
        head = '  <resultaat actie="verwijderen">\n' if deleting else "  <resultaat>\n"
        for row in rows:
            parts = [head]
            for k in fields:
                value = row.get(k)
                if value is not None:
                    if k in _FREE_TEXT:  # the rest are digits, codes and dates: nothing to escape
                        value = escape(value)
                    parts.append(f"    <{_DUTCH[k]}>{value}</{_DUTCH[k]}>\n")
            parts.append("  </resultaat>\n")
            f.write("".join(parts))
        f.write("</aanlevering>\n")


# --- stats ---------------------------------------------------------------------------------


def stats(n: int = DEFAULT_RESULTS, seed: int = DEFAULT_SEED) -> dict[str, object]:
    """The mix one register holds: counts per sector, year, month, reason; institution sizes."""
    sector: Counter[str] = Counter()
    year: Counter[str] = Counter()
    month: Counter[str] = Counter()
    reason: Counter[str] = Counter()
    person: Counter[str] = Counter()
    per_institution: Counter[str] = Counter()
    big = 0
    catalogue = Catalogue.load(None)
    professions = {(p.sector, p.code) for p in catalogue if p.big_profession}
    for _batch, rows in records(n, seed):
        for row, why in rows:
            sector[row["sector"]] += 1  # type: ignore[index]
            date = row["diploma_date"]
            assert date is not None
            year[date[:4]] += 1
            month[date[5:7]] += 1
            person["bsn" if row["bsn"] else "onderwijsnummer"] += 1
            per_institution[row["institution"]] += 1  # type: ignore[index]
            if (row["sector"], row["programme_code"]) in professions:
                big += 1
            if why:
                reason[why] += 1
    for inst in institutions(seed):
        per_institution.setdefault(inst.code, 0)
    sizes = sorted(per_institution.values())
    quantiles = {}
    if sizes:
        for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0):
            quantiles[f"p{round(q * 100)}"] = sizes[min(len(sizes) - 1, int(q * len(sizes)))]
    return {
        "results": n,
        "seed": seed,
        "sector": dict(sorted(sector.items())),
        "year": dict(sorted(year.items())),
        "month": dict(sorted(month.items())),
        "person_number": dict(person),
        "big_profession": big,
        "institutions_with_results": sum(1 for s in sizes if s),
        "results_per_institution": quantiles,
        "deletions": dict(reason.most_common()),
    }


def _print_stats(report: dict[str, object]) -> None:
    total = int(report["results"])  # type: ignore[call-overload]

    def table(title: str, counts: dict[str, int]) -> None:
        print(f"\n{title}")
        for key, value in counts.items():
            print(f"  {key:<36} {value:>11,}  {100 * value / max(total, 1):6.2f}%")

    print(f"results {total:,}  seed {report['seed']}")
    table("per sector", report["sector"])  # type: ignore[arg-type]
    table("per year", report["year"])  # type: ignore[arg-type]
    table("per month (diploma date)", report["month"])  # type: ignore[arg-type]
    table("person number", report["person_number"])  # type: ignore[arg-type]
    table("deletions per reason", report["deletions"])  # type: ignore[arg-type]
    print(f"\nBIG profession programmes: {report['big_profession']:,}")
    print(f"institutions with results: {report['institutions_with_results']:,}")
    print("results per institution: " + ", ".join(
        f"{k} {v:,}" for k, v in report["results_per_institution"].items()))  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=DEFAULT_RESULTS,
                        help="how many results (default 10,000,000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--write-csv", metavar="DIR", help="write the bulk files and manifest to DIR")
    parser.add_argument("--chunk", type=int, default=FILE_CHUNK, help="records per bulk file at most")
    parser.add_argument("--stats", action="store_true", help="print the mix the register holds")
    parser.add_argument("--rate", action="store_true", help="time generating the results (no output)")
    args = parser.parse_args(argv)
    if args.rate or not (args.write_csv or args.stats):
        start = time.perf_counter()
        count = sum(1 for _ in results(args.results, args.seed))
        elapsed = time.perf_counter() - start
        print(f"generated {count:,} results in {elapsed:.1f} s: {count / elapsed:,.0f} results/s")
    if args.write_csv:
        start = time.perf_counter()
        manifest = write_files(args.write_csv, args.results, args.seed, args.chunk)
        elapsed = time.perf_counter() - start
        files = manifest["files"]
        print(f"wrote {args.results:,} results and {manifest['deletions']:,} deletions in "
              f"{len(files):,} files in {elapsed:.1f} s ({args.results / elapsed:,.0f} results/s)")  # type: ignore[arg-type]
    if args.stats:
        _print_stats(stats(args.results, args.seed))


if __name__ == "__main__":
    main()
