"""Report bodies: the same content as CSV, JSON and HTML, byte for byte the same every time.

CSV: one row per deletion (institution) or per institution (national), columns named like
the JSON keys, UTF-8, `\\r\\n` line ends as the csv module writes them, and a leading `'` on
text a spreadsheet would take for a formula (services/kernel/csv_cells.py). JSON: the whole
content, keys in a fixed order, two-space indent. HTML: one self-contained Dutch page (inline
CSS and SVG; no script, no external reference), for a person at the institution or at DUO.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.audit import svg
from services.audit.figures import REASONS
from services.kernel import csv_cells

REASON_LABELS = {
    "FRAUD": "Fraude",
    "ADMINISTRATIVE_ERROR": "Administratieve fout",
    "EXTRA_COURSES_OR_GRADE_IMPROVEMENT": "Extra vakken of cijferverbetering",
    "WRONG_PERSON_OR_DATA": "Verkeerde persoon of gegevens",
    "OTHER": "Anders",
}
CONSUMER_LABELS = {"cibg-big": "CIBG (BIG-register)", "mijnoverheid": "MijnOverheid",
                   "extract": "Uittrekseldienst"}
MONTHS = ("jan", "feb", "mrt", "apr", "mei", "jun", "jul", "aug", "sep", "okt", "nov", "dec")
MONTHS_LONG = ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september",
               "oktober", "november", "december")

DELETION_COLUMNS = ("result_id", "person_number", "diploma_number", "programme_code", "programme_name",
                    "sector", "diploma_date", "registered_at", "deleted_at", "reason", "received_by",
                    "confirmed_by", "extract_issued")
NATIONAL_COLUMNS = ("institution", "sectors", "registrations", "deletions", "deletion_rate",
                    *(f"reason_{r.lower()}" for r in REASONS), "reached_chain", "extract_issued")

_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def bodies(content: dict[str, Any], national: bool) -> dict[str, bytes]:
    """The three bodies of one report."""
    return {"csv": to_csv(content, national), "json": to_json(content), "html": to_html(content, national)}


def to_json(content: dict[str, Any]) -> bytes:
    return (json.dumps(content, ensure_ascii=False, indent=2) + "\n").encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return value  # numbers stay numbers; csv_cells guards the text


def to_csv(content: dict[str, Any], national: bool) -> bytes:
    out = io.StringIO()
    writer = csv_cells.writer(out)
    if national:
        writer.writerow(NATIONAL_COLUMNS)
        for line in content["institutions"]:
            flat = {**line, **{f"reason_{r.lower()}": n for r, n in line["by_reason"].items()}}
            writer.writerow([_cell(flat[c]) for c in NATIONAL_COLUMNS])
    else:
        writer.writerow(DELETION_COLUMNS)
        for row in content["deletions"]:
            writer.writerow([_cell(row[c]) for c in DELETION_COLUMNS])
    return out.getvalue().encode()


# --- HTML ----------------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    """A share or rate as a Dutch percentage with two decimals; a dash when there is none.

    >>> pct(0.015), pct(None), pct(1.0)
    ('1,50%', '–', '100,00%')
    """
    return "–" if value is None else f"{value * 100:.2f}%".replace(".", ",")


def day(iso: str) -> str:
    """`2024-11-01T00:00:00+01:00` → `1 november 2024`."""
    moment = datetime.fromisoformat(iso)
    return f"{moment.day} {MONTHS_LONG[moment.month - 1]} {moment.year}"


def when(iso: str) -> str:
    """`2025-04-30T23:30:00+02:00` → `30-04-2025 23:30` (the local time as recorded)."""
    moment = datetime.fromisoformat(iso)
    return f"{moment.day:02d}-{moment.month:02d}-{moment.year} {moment.hour:02d}:{moment.minute:02d}"


def month(key: str) -> str:
    """`2024-11` → `nov 2024`."""
    year, number = key.split("-")
    return f"{MONTHS[int(number) - 1]} {year}"


def _charts(content: dict[str, Any], national: bool) -> dict[str, Any]:
    reasons = [svg.Bar(REASON_LABELS.get(r, r), n, str(n)) for r, n in content["by_reason"].items()]
    months = [svg.Bar(month(m), n, str(n)) for m, n in content["by_month"].items()]
    impact = content["chain_impact"]
    reached = [svg.Bar(f"Ontvangen door {CONSUMER_LABELS.get(c, c)}", v["share"] or 0, pct(v["share"]))
               for c, v in impact["by_consumer"].items()]
    reached.append(svg.Bar("Uittreksel verstrekt", impact["extract_issued"]["share"] or 0,
                           pct(impact["extract_issued"]["share"])))
    reached.append(svg.Bar("Eén of meer hiervan", impact["any"]["share"] or 0, pct(impact["any"]["share"])))
    history = [svg.Bar(h["period"], h["deletion_rate"] or 0, pct(h["deletion_rate"]))
               for h in content["history"]]
    charts = {
        "reasons": svg.bars("Verwijderingen per reden", reasons),
        "months": svg.columns("Verwijderingen per maand", months),
        "impact": svg.bars("Aandeel van de verwijderingen dat de keten al had bereikt", reached, scale=1.0),
        "history": svg.columns("Verwijderpercentage per periode", history),
    }
    if national:
        charts["sectors"] = svg.bars("Mediaan verwijderpercentage per sector", [
            svg.Bar(s["sector"], s["median_rate"] or 0, pct(s["median_rate"])) for s in content["sectors"]])
    else:
        charts["sectors"] = svg.pairs("Verwijderpercentage tegenover de mediaan van de sector", [
            (s["sector"], svg.Bar("", s["deletion_rate"] or 0, pct(s["deletion_rate"])),
             svg.Bar("", s["sector_median_rate"] or 0, pct(s["sector_median_rate"])))
            for s in content["sectors"]], legend=("Uw instelling", "Mediaan sector"))
    return charts


def to_html(content: dict[str, Any], national: bool) -> bytes:
    template = _ENV.get_template("national.html" if national else "institution.html")
    last_day = (datetime.fromisoformat(content["until"]) - timedelta(days=1)).isoformat()
    page = template.render(r=content, charts=_charts(content, national),
                           first_day=day(content["from"]), last_day=day(last_day))
    return page.encode()


_ENV.filters["when"] = when
_ENV.globals.update(
    pct=pct, month=month,
    reason_label=lambda code: REASON_LABELS.get(code, code),
    consumer_label=lambda name: CONSUMER_LABELS.get(name, name),
)
