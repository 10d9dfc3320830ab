"""Bulk import of 10,000 records with 5% bad records of every kind, as CSV and as XML.

Every good record is accepted, every bad one reported with its record number, line and
code, and nothing else is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.registrar.catalogue import Catalogue
from services.registrar.commands import FileRefused, RecordFeedback, Registrar
from services.registrar.store import EventStore
from services.registrar.verify import verify
from tests.fixtures.bulkfiles import COLUMNS, write_csv, write_xml

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
RECORDS = 10_000
PEOPLE = ["111222333", "123456782", "249566758", "319072356"]
PRO = {"sector": "PRO", "opleidingscode": "Praktijkonderwijs", "onderwijsaanbieder": "110A133"}
DELETE = {"actie": "verwijderen", "reden": "ADMINISTRATIVE_ERROR"}

# (expected code, changes to a good row); every rejection a bulk file can carry
BAD_KINDS: list[tuple[str, dict[str, str]]] = [
    ("PERSON_NUMBER_MISSING", {"bsn": ""}),
    ("PERSON_NUMBER_AMBIGUOUS", {"onderwijsnummer": "101222331"}),
    ("BSN_INVALID", {"bsn": "123456789"}),
    ("ONDERWIJSNUMMER_INVALID", {"bsn": "", "onderwijsnummer": "101222333"}),
    ("BSN_IS_ONDERWIJSNUMMER", {"bsn": "106071665"}),
    ("ONDERWIJSNUMMER_IS_BSN", {"bsn": "", "onderwijsnummer": "319072356"}),
    ("INSTITUTION_CODE_INVALID", {"instellingscode": "25be"}),
    ("INSTITUTION_UNKNOWN", {"instellingscode": "99ZZ", "vestigingscode": "99ZZ01"}),
    ("INSTITUTION_FORBIDDEN", {"instellingscode": "30XX", "vestigingscode": "30XX01"}),
    ("BRANCH_CODE_INVALID", {"vestigingscode": "25BE1"}),
    ("BRANCH_NOT_OF_INSTITUTION", {"vestigingscode": "30XX01"}),
    ("PROVIDER_CODE_INVALID", {"onderwijsaanbieder": "100B490"}),
    ("SECTOR_INVALID", {"sector": "XX"}),
    ("SECTOR_NOT_OF_INSTITUTION", {"sector": "MBO", "opleidingscode": "25655"}),
    ("VERVOLGONDERWIJS_USES_EXAM_RESULTS", {**PRO, "opleidingscode": "Vervolgonderwijs"}),
    ("PROGRAMME_UNKNOWN", {"opleidingscode": "99999"}),
    ("PROGRAMME_SECTOR_MISMATCH", {"opleidingscode": "25655"}),
    ("HO_MODULE_HAS_NO_RESULT", {"opleidingscode": "70001"}),
    ("DIPLOMA_DATE_INVALID", {"diplomadatum": "2026-02-30"}),
    ("DIPLOMA_DATE_IN_FUTURE", {"diplomadatum": "2999-01-01"}),
    ("PRO_VSO_SCHOOL_YEAR_CLOSED", {**PRO, "diplomadatum": "2022-07-31"}),
    ("DIPLOMA_NUMBER_INVALID", {"diplomavolgnummer": "GEEN GELDIG NUMMER"}),
    ("FIELD_REQUIRED", {"diplomadatum": ""}),
    ("ACTION_INVALID", {"actie": "wijzigen"}),
    ("RESULT_CONFLICT", {}),  # the key of an earlier good record, other data
    ("RESULT_NOT_FOUND", {**DELETE, "diplomavolgnummer": "NOOIT-GEREGISTREERD"}),
    ("DELETION_REASON_INVALID", {**DELETE, "reden": "VERVEELD"}),
    ("EXPLANATION_REQUIRED", {**DELETE, "reden": "FRAUD"}),
    ("RECORD_MALFORMED", {}),  # CSV: one column too many
]


def good_row(i: int) -> dict[str, str]:
    row = {
        "bsn": PEOPLE[i % 4], "instellingscode": "25BE", "vestigingscode": "25BE01", "sector": "HO",
        "opleidingscode": "56551", "diplomavolgnummer": f"G{i}", "diplomadatum": "2026-07-01",
    }
    if i % 100 == 3:
        row.update(PRO)
    if i % 100 == 5:
        row["diplomadatum"] = "2024-01-15"  # LATE_DELIVERY: a warning, still accepted
    return row


def build(fmt: str) -> tuple[list[dict[str, str]], dict[int, str]]:
    """The file's rows and, per bad record number, the code it must get."""
    kinds = [k for k in BAD_KINDS if not (fmt == "xml" and k[0] == "RECORD_MALFORMED")]
    rows: list[dict[str, str]] = []
    expected: dict[int, str] = {}
    for i in range(RECORDS):
        if i % 20 == 19:  # 5% bad
            code, changes = kinds[(i // 20) % len(kinds)]
            row = {**good_row(i), **changes}
            if code == "RESULT_CONFLICT":
                row = {**good_row(i - 2), "diplomadatum": "2026-06-30"}
            elif code == "RECORD_MALFORMED":
                row["toelichting"] = "EXTRA"  # marks the row the writer below breaks
            expected[i + 1] = code
        elif i % 20 == 10:  # delete the result registered just before
            row = {**good_row(i - 1), **DELETE}
        else:
            row = good_row(i)
        rows.append(row)
    return rows, expected


def write(fmt: str, rows: list[dict[str, str]], path: Path) -> list[int]:
    """Write the file; returns the line on which each record starts."""
    if fmt == "xml":
        write_xml(path, rows, "25BE")
        return [n for n, text in enumerate(path.read_text().splitlines(), 1) if "<resultaat" in text]
    lines = [",".join(COLUMNS)]
    for row in rows:
        cells = [row.get(c) or "" for c in COLUMNS]
        if row.get("toelichting") == "EXTRA":
            cells[-1] = ""
            cells.append("one too many")
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return list(range(2, len(rows) + 2))


@pytest.fixture
def registrar(db_url: str) -> Registrar:
    registrar = Registrar(EventStore(db_url), Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Universiteit Test", ["HO", "VO", "PRO", "VSO"])
    registrar.add_institution("30XX", "Hogeschool Ander", ["HO"])
    registrar.add_institution("40MB", "Mbo College", ["MBO"])
    return registrar


@pytest.mark.parametrize("fmt", ["csv", "xml"])
def test_good_records_are_accepted_and_every_bad_one_reported(
    registrar: Registrar, tmp_path: Path, fmt: str
) -> None:
    rows, expected = build(fmt)
    path = tmp_path / f"bulk.{fmt}"
    lines = write(fmt, rows, path)
    feedback: list[RecordFeedback] = []
    summary = registrar.import_file(path, "25BE", on_record=feedback.append)

    assert [f.record for f in feedback] == list(range(1, RECORDS + 1))
    assert [f.line for f in feedback] == lines
    rejected = {f.record: f for f in feedback if f.outcome == "rejected"}
    assert set(rejected) == set(expected)
    for record, code in expected.items():
        assert code in rejected[record].codes, (record, code, rejected[record].codes)
    assert {code for _, code in expected.items()} == {k[0] for k in BAD_KINDS} - (
        {"RECORD_MALFORMED"} if fmt == "xml" else set()
    )
    good = RECORDS - len(expected)
    assert (summary.accepted, summary.rejected, summary.duplicate) == (good, len(expected), 0)
    assert summary.warnings == sum(1 for i in range(RECORDS) if i % 100 == 5)
    # nothing else written: one event per accepted record, and the chain is intact
    assert registrar.store.last_position() == good
    assert verify(registrar.store).ok

    # The same file again: registrations still standing are idempotent; the deleted ones are
    # registered anew (a new version) and deleted again, as the file says.
    again = registrar.import_file(path, "25BE")
    deleted = RECORDS // 20
    assert (again.accepted, again.duplicate) == (2 * deleted, good - 2 * deleted)
    assert registrar.store.last_position() == good + 2 * deleted


def test_an_mbo_institution_may_not_deliver_csv(registrar: Registrar, tmp_path: Path) -> None:
    path = tmp_path / "mbo.csv"
    write_csv(path, [{**good_row(1), "instellingscode": "40MB", "vestigingscode": "40MB01",
                      "sector": "MBO", "opleidingscode": "25655"}])
    with pytest.raises(FileRefused) as refused:
        registrar.import_file(path, "40MB")
    assert refused.value.problem.code == "FILE_FORMAT_NOT_ALLOWED"
    xml = tmp_path / "mbo.xml"
    write_xml(xml, [{**good_row(1), "instellingscode": "40MB", "vestigingscode": "40MB01",
                     "sector": "MBO", "opleidingscode": "25655"}], "40MB")
    assert registrar.import_file(xml, "40MB").accepted == 1


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE aanlevering [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE aanlevering [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    ],
    ids=["external-entity", "entity-expansion"],
)
def test_xml_with_entities_is_refused_unresolved(registrar: Registrar, tmp_path: Path, prolog: str) -> None:
    path = tmp_path / "evil.xml"
    path.write_text(
        f'<?xml version="1.0"?>\n{prolog}\n<aanlevering instellingscode="25BE"><resultaat>'
        "<bsn>111222333</bsn><instellingscode>25BE</instellingscode><vestigingscode>25BE01</vestigingscode>"
        "<sector>HO</sector><opleidingscode>56551</opleidingscode><diplomavolgnummer>&xxe;&d;</diplomavolgnummer>"
        "<diplomadatum>2026-07-01</diplomadatum></resultaat></aanlevering>\n"
    )
    with pytest.raises(FileRefused) as refused:
        registrar.import_file(path, "25BE")
    assert refused.value.problem.code == "FILE_MALFORMED"
    assert "root:" not in str(refused.value)
    assert registrar.store.last_position() == 0
