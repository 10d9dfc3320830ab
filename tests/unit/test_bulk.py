"""The bulk-file parser: CSV and XML read record by record, unreadable files refused whole."""

from __future__ import annotations

import pickle
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest
from lxml import etree

from services.kernel.codes import problem
from services.registrar import bulk
from services.registrar.bulk import (
    FIELD_KEYS,
    BulkRecord,
    FileRefused,
    check_file,
    read_records,
    sniff_format,
)
from tests.fixtures.bulkfiles import sample_row, sample_rows, write_csv, write_xml

XSD = Path(__file__).resolve().parents[2] / "schemas" / "xml" / "aanlevering.xsd"
PERSON_NUMBERS = ("111222333", "123456782", "249566758", "319072356", "12345672", "101222331")


def records(path: Path, fmt: str) -> list[BulkRecord]:
    """What a caller does: the pre-pass, then the records."""
    check_file(path, fmt)
    return list(read_records(path, fmt))


def refused(path: Path, fmt: str) -> FileRefused:
    with pytest.raises(FileRefused) as info:
        check_file(path, fmt)
    assert info.value.code == "FILE_MALFORMED"
    assert info.value.problem.field == "file"
    assert info.value.problem.code == "FILE_MALFORMED"
    return info.value


def write_bytes(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


HEADER = "bsn,instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer,diplomadatum"


# --- CSV ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_csv_reads_records_with_either_delimiter(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "r.csv"
    rows = [
        sample_row(1),
        sample_row(2, bsn=None, onderwijsnummer="101222331", onderwijsaanbieder="  "),
        sample_row(3, bsn=" 123456782 ", opleidingscode="Praktijkonderwijs", sector="PRO"),
    ]
    columns = ["onderwijsnummer", *rows[0]]
    write_csv(path, rows, delimiter=delimiter, columns=columns)

    assert check_file(path, "csv") is None
    got = list(read_records(path, "csv"))

    assert [(r.record, r.line, r.action, r.problems) for r in got] == [
        (1, 2, "register", ()),
        (2, 3, "register", ()),
        (3, 4, "register", ()),
    ]
    assert got[0].fields == {
        "bsn": "111222333",
        "onderwijsnummer": None,
        "institution": "25BE",
        "branch": "25BE01",
        "provider": "110A133",
        "sector": "HO",
        "programme_code": "56551",
        "diploma_number": "D-1",
        "diploma_date": "2024-07-01",
        "reason": None,
        "explanation": None,
    }
    assert got[1].fields["bsn"] is None
    assert got[1].fields["onderwijsnummer"] == "101222331"
    assert got[1].fields["provider"] is None  # blank is absent
    assert got[2].fields["bsn"] == "123456782"  # stripped
    assert got[2].fields["programme_code"] == "Praktijkonderwijs"


def test_csv_bom_and_header_case_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    header = " BSN ; Instellingscode;VESTIGINGSCODE;sector;Opleidingscode;diplomavolgnummer;diplomadatum"
    row = "249566758;25BE;25BE01;HO;56551;A-1;2024-07-01"
    path.write_bytes(b"\xef\xbb\xbf" + f"{header}\r\n{row}\r\n".encode())

    (rec,) = records(path, "csv")

    assert rec.fields["bsn"] == "249566758"
    assert rec.fields["diploma_number"] == "A-1"
    assert rec.line == 2


def test_csv_written_with_bom_by_the_fixture(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_csv(path, [sample_row(1, bsn="12345672")], bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    (rec,) = records(path, "csv")
    assert rec.fields["bsn"] == "12345672"


def test_csv_line_is_where_a_multiline_record_starts(tmp_path: Path) -> None:
    header = HEADER + ",actie,reden,toelichting"
    lines = [
        header,
        "111222333,25BE,25BE01,HO,56551,A-1,2024-07-01,,,",
        "",  # blank: skipped, but counted
        '319072356,25BE,25BE01,HO,56551,A-2,2024-07-01,verwijderen,FRAUD,"Vervalst,',
        "tweede regel",
        'derde ""regel"""',
        ",,,,,,,,,",  # separators only: skipped too
        "123456782,25BE,25BE01,HO,56551,A-3,2024-07-01,,,",
    ]
    path = write_bytes(tmp_path, "r.csv", "\n".join(lines) + "\n")

    got = records(path, "csv")

    assert [(r.record, r.line) for r in got] == [(1, 2), (2, 4), (3, 8)]
    assert got[1].action == "delete"
    assert got[1].fields["reason"] == "FRAUD"
    assert got[1].fields["explanation"] == 'Vervalst,\ntweede regel\nderde "regel"'


def test_csv_wrong_column_count_is_one_malformed_record(tmp_path: Path) -> None:
    lines = [
        HEADER,
        "111222333,25BE,25BE01,HO,56551,A-1,2024-07-01",
        "123456782,25BE,25BE01,HO,56551,A-2",  # too few
        "249566758,25BE,25BE01,HO,56551,A-3,2024-07-01,extra",  # too many
        "319072356,25BE,25BE01,HO,56551,A-4,2024-07-01",
    ]
    path = write_bytes(tmp_path, "r.csv", "\n".join(lines))

    got = records(path, "csv")

    assert [r.record for r in got] == [1, 2, 3, 4]
    assert [[p.code for p in r.problems] for r in got] == [
        [],
        ["RECORD_MALFORMED"],
        ["RECORD_MALFORMED"],
        [],
    ]
    assert got[1].line == 3
    assert got[1].fields == dict.fromkeys(FIELD_KEYS)  # positions cannot be trusted
    assert got[3].fields["bsn"] == "319072356"


@pytest.mark.parametrize(
    "header",
    [
        "bsn,instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer",  # no date
        "instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer,diplomadatum",
        HEADER + ",geboortedatum",  # unknown column
        HEADER + ",",  # an empty column name
        HEADER + ",BSN",  # twice
    ],
    ids=["missing-required", "no-person-column", "unknown", "empty-name", "duplicate"],
)
def test_csv_bad_header_refuses_the_file(tmp_path: Path, header: str) -> None:
    path = write_bytes(tmp_path, "r.csv", f"\n\n{header}\n111222333,25BE\n")
    error = refused(path, "csv")
    assert error.line == 3
    with pytest.raises(FileRefused):
        next(read_records(path, "csv"))


def test_csv_empty_file_is_refused(tmp_path: Path) -> None:
    assert refused(write_bytes(tmp_path, "r.csv", ""), "csv").line == 1


def test_csv_invalid_utf8_costs_its_record_only(tmp_path: Path) -> None:
    good = "111222333,25BE,25BE01,HO,56551,A-{},2024-07-01\n"
    data = (HEADER + "\n").encode() + "".join(good.format(i) for i in range(5000)).encode()
    data += b"123456782,25BE,25BE01,HO,56551,\xff\xfe,2024-07-01\n" + good.format(9).encode()
    path = write_bytes(tmp_path, "r.csv", data)

    read = records(path, "csv")

    assert len(read) == 5002 and not any(r.problems for r in read if r.record != 5001)
    assert (read[5000].line, read[5000].problems) == (5002, (problem("TEXT_NOT_UNICODE", "diploma_number"),))


def test_csv_header_that_is_not_utf8_refuses_the_file(tmp_path: Path) -> None:
    data = HEADER.encode().replace(b"bsn", b"bs\xff") + b"\n111222333,25BE,25BE01,HO,56551,A-1,2024-07-01\n"
    assert refused(write_bytes(tmp_path, "r.csv", data), "csv").line == 1


def test_csv_field_over_the_csv_module_limit_refuses_the_file(tmp_path: Path) -> None:
    data = HEADER + "\n" + '111222333,25BE,25BE01,HO,56551,"' + "x" * 200_000 + "\n"
    error = refused(write_bytes(tmp_path, "r.csv", data), "csv")
    assert error.line is not None


def test_csv_line_without_end_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    good = "111222333,25BE,25BE01,HO,56551,A-1,2024-07-01\n"
    path = write_bytes(tmp_path, "r.csv", HEADER + "\n" + good * 3 + "1" * 8_000_000)

    tracemalloc.start()
    try:
        error = refused(path, "csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert error.line == 5
    assert peak < 4_000_000


# --- actie --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "xml"])
def test_actie_values(tmp_path: Path, fmt: str) -> None:
    rows = [
        sample_row(1),
        sample_row(2, actie=""),
        sample_row(3, actie=" Registreren "),
        sample_row(4, actie="verwijderen", reden="OTHER", toelichting="Dubbel aangeleverd"),
        sample_row(5, actie="Wissen"),
    ]
    path = tmp_path / f"r.{fmt}"
    if fmt == "csv":
        write_csv(path, rows, columns=[*rows[3]])
    else:
        write_xml(path, rows, "25BE")

    got = records(path, fmt)

    assert [r.action for r in got] == ["register", "register", "register", "delete", "wissen"]
    assert [r.problems for r in got[:4]] == [(), (), (), ()]
    assert got[3].fields["reason"] == "OTHER"
    assert got[3].fields["explanation"] == "Dubbel aangeleverd"
    (problem,) = got[4].problems
    assert (problem.code, problem.field) == ("ACTION_INVALID", "actie")


# --- XML ----------------------------------------------------------------------------------


def test_xml_reads_records_with_lines_and_root_institution(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    rows = [
        sample_row(1),
        sample_row(2, instellingscode=None, bsn=None, onderwijsnummer="106071665"),
        sample_row(3, instellingscode="30XY", toelichting='  A & B <c> "d"  '),
    ]
    write_xml(path, rows, "25BE")

    assert check_file(path, "xml") == "25BE"
    got = list(read_records(path, "xml"))

    assert [(r.record, r.line, r.action, r.problems) for r in got] == [
        (1, 3, "register", ()),
        (2, 13, "register", ()),
        (3, 22, "register", ()),
    ]
    assert got[0].fields == records_fields(rows[0])
    assert got[1].fields["institution"] == "25BE"  # from the root
    assert got[1].fields["onderwijsnummer"] == "106071665"
    assert got[2].fields["institution"] == "30XY"
    assert got[2].fields["explanation"] == 'A & B <c> "d"'


def records_fields(row: dict[str, str | None]) -> dict[str, str | None]:
    fields = dict.fromkeys(FIELD_KEYS)
    fields.update({bulk.FIELD_NAMES[k]: v for k, v in row.items() if k != "actie"})
    return fields


def test_xml_compact_layout_empty_elements_and_no_root_institution(tmp_path: Path) -> None:
    xml = (
        "<aanlevering>"
        "<resultaat><bsn> 111222333 </bsn><instellingscode/><sector></sector></resultaat>\n"
        "\n"
        '<resultaat actie="verwijderen"><bsn>123456782</bsn><reden>FRAUD</reden></resultaat>'
        "</aanlevering>"
    )
    path = write_bytes(tmp_path, "r.xml", xml)

    assert check_file(path, "xml") is None
    first, second = read_records(path, "xml")

    assert (first.line, first.fields["bsn"], first.fields["institution"]) == (1, "111222333", None)
    assert first.fields["sector"] is None
    assert (second.line, second.action, second.fields["reason"]) == (3, "delete", "FRAUD")


def test_xml_structure_problems_are_record_level(tmp_path: Path) -> None:
    xml = """<?xml version="1.0" encoding="UTF-8"?>
<aanlevering instellingscode="25BE">
  <!-- a comment and a processing instruction are ignored -->
  <?note x?>
  <resultaat><bsn>111222333</bsn><geboortedatum>2000-01-01</geboortedatum></resultaat>
  <resultaat><bsn>123456782</bsn><bsn>249566758</bsn></resultaat>
  <resultaat><bsn><nummer>319072356</nummer></bsn></resultaat>
  <iets>anders</iets>
  <resultaat><bsn>12345672</bsn><diplomavolgnummer>A-5</diplomavolgnummer></resultaat>
  <resultaat><resultaat><bsn>111222333</bsn></resultaat></resultaat>
</aanlevering>
"""
    path = write_bytes(tmp_path, "r.xml", xml)

    got = records(path, "xml")

    assert [(r.record, r.line, [p.code for p in r.problems]) for r in got] == [
        (1, 5, ["RECORD_MALFORMED"]),
        (2, 6, ["RECORD_MALFORMED"]),
        (3, 7, ["RECORD_MALFORMED"]),
        (4, 8, ["RECORD_MALFORMED"]),
        (5, 9, []),
        (6, 10, ["RECORD_MALFORMED"]),
    ]
    assert got[4].fields["diploma_number"] == "A-5"
    assert got[3].fields["institution"] == "25BE"


def test_xml_not_well_formed_refuses_the_file_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    write_xml(path, sample_rows(3), "25BE")
    lines = path.read_text().splitlines(keepends=True)
    broken = [i for i, line in enumerate(lines) if "<sector>" in line][1]
    lines[broken] = lines[broken].replace("</sector>", "</sectr>")
    path.write_text("".join(lines))

    assert refused(path, "xml").line == broken + 1


@pytest.mark.parametrize(
    ("xml", "line"),
    [
        ("", 1),
        ('<?xml version="1.0"?>\n\n<levering instellingscode="25BE"/>', 3),
        ('<aanlevering xmlns="urn:x" instellingscode="25BE"><resultaat/></aanlevering>', 1),
        ("<aanlevering>\n<resultaat>\n", 3),
        ("<aanlevering>\n<resultaat><bsn>&onbekend;</bsn></resultaat></aanlevering>", 2),
    ],
    ids=["empty", "wrong-root", "namespace", "unclosed", "undeclared-entity"],
)
def test_xml_unreadable_files_are_refused(tmp_path: Path, xml: str, line: int) -> None:
    assert refused(write_bytes(tmp_path, "r.xml", xml), "xml").line == line


def test_xml_invalid_utf8_costs_its_record_only(tmp_path: Path) -> None:
    xml = b'<aanlevering instellingscode="25BE">\n<resultaat>\n<bsn>\xff\xfe</bsn>\n</resultaat>\n'
    xml += b"<resultaat><bsn>111222333</bsn></resultaat>\n</aanlevering>"
    bad, good = records(write_bytes(tmp_path, "r.xml", xml), "xml")
    assert (bad.line, bad.problems) == (2, (problem("TEXT_NOT_UNICODE", "bsn"),))
    assert (good.line, good.problems, good.fields["bsn"]) == (5, (), "111222333")


@pytest.mark.parametrize("reference", ["&#xD800;", "&#xdfff;", "&#55296;", "&#057343;"])
def test_xml_reference_to_a_surrogate_costs_its_record_only(tmp_path: Path, reference: str) -> None:
    opening, record = '<aanlevering instellingscode="25BE">\n<!--', "-->\n<resultaat><diplomavolgnummer>A-"
    padding = "x" * (bulk._CHUNK - 3 - len(opening) - len(record))  # the reference straddles two chunks
    xml = opening + padding + record + reference + "</diplomavolgnummer></resultaat>\n"
    assert xml.index(reference) == bulk._CHUNK - 3
    xml += "<resultaat><diplomavolgnummer>A-&#x41;</diplomavolgnummer></resultaat>\n</aanlevering>"
    bad, good = records(write_bytes(tmp_path, "r.xml", xml), "xml")
    assert bad.problems == (problem("TEXT_NOT_UNICODE", "diploma_number"),)
    assert (good.problems, good.fields["diploma_number"]) == ((), "A-A")


def test_xml_record_with_absurd_structure_refuses_the_file(tmp_path: Path) -> None:
    xml = "<aanlevering>\n<resultaat>" + "<x/>" * 100_000 + "</resultaat></aanlevering>"
    assert refused(write_bytes(tmp_path, "r.xml", xml), "xml").line == 2


# --- XML safety ---------------------------------------------------------------------------

XXE = """<?xml version="1.0"?>
<!DOCTYPE aanlevering [
  <!ENTITY geheim SYSTEM "file:///etc/passwd">
]>
<aanlevering instellingscode="25BE">
  <resultaat><bsn>&geheim;</bsn><toelichting>&geheim;</toelichting></resultaat>
</aanlevering>
"""
PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE aanlevering [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<aanlevering instellingscode="25BE"/>
"""
EXTERNAL_DTD = """<?xml version="1.0"?>
<!-- a comment first -->
<!DOCTYPE aanlevering SYSTEM "file:///etc/passwd">
<aanlevering instellingscode="25BE"/>
"""
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE aanlevering [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10)
    )
    + ']>\n<aanlevering instellingscode="&lol9;">\n'
    + "<resultaat><toelichting>&lol9;</toelichting></resultaat>\n" * 100
    + "</aanlevering>\n"
)


@pytest.mark.parametrize(
    ("xml", "line"),
    [(XXE, 2), (PARAMETER_ENTITY, 2), (EXTERNAL_DTD, 3), (LAUGHS, 2)],
    ids=["xxe", "parameter-entity", "external-dtd", "billion-laughs"],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("byte_scan", [True, False], ids=["prolog-scan", "lxml-only"])
def test_xml_dtds_are_refused_without_expanding_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    xml: str,
    line: int,
    encoding: str,
    byte_scan: bool,
) -> None:
    path = write_bytes(tmp_path, "r.xml", xml.encode(encoding))
    if not byte_scan:  # the second line of defence alone must hold too
        monkeypatch.setattr(bulk, "_refuse_doctype", lambda _path: None)
    secret = Path("/etc/passwd").read_text()[:40] if Path("/etc/passwd").exists() else "root:"

    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = refused(path, "xml")
        with pytest.raises(FileRefused):
            list(read_records(path, "xml"))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000
    if byte_scan:
        assert error.line == line
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    for text in (str(error), repr(error), error.problem.message):
        assert secret not in text and "root:" not in text


# --- XSD ----------------------------------------------------------------------------------


def test_written_xml_validates_against_the_xsd(tmp_path: Path) -> None:
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    path = tmp_path / "r.xml"
    rows = [
        sample_row(1),
        sample_row(2, actie="registreren", instellingscode=None, bsn="12345672"),
        sample_row(3, actie="verwijderen", reden="FRAUD", toelichting="Vervalst <lijst> & zo"),
        sample_row(
            4, bsn=None, onderwijsnummer="101222331", sector="PRO", opleidingscode="Praktijkonderwijs"
        ),
    ]
    write_xml(path, rows, "25BE")

    assert schema.validate(etree.parse(str(path))), schema.error_log
    assert len(records(path, "xml")) == 4

    write_xml(path, [sample_row(1, diplomadatum="2024-13-01", actie="wissen")], "25be")
    assert not schema.validate(etree.parse(str(path)))
    assert len(schema.error_log) == 3


# --- sniffing, reprs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (b"<aanlevering/>", None, "xml"),
        (b"\xef\xbb\xbf \r\n <?xml version='1.0'?><aanlevering/>", None, "xml"),
        ("<aanlevering/>".encode("utf-16"), None, "xml"),
        (HEADER.encode(), None, "csv"),
        (b"", None, "csv"),
        (b"<aanlevering/>", "text/csv; charset=utf-8", "csv"),
        (HEADER.encode(), "application/xml", "xml"),
        (HEADER.encode(), "Text/XML", "xml"),
        (b"<aanlevering/>", "application/octet-stream", "xml"),
    ],
)
def test_sniff_format(tmp_path: Path, data: bytes, content_type: str | None, expected: str) -> None:
    assert sniff_format(write_bytes(tmp_path, "upload", data), content_type) == expected


def test_unknown_format_is_a_programming_error(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "r.json", "{}")
    with pytest.raises(ValueError):
        check_file(path, "json")
    with pytest.raises(ValueError):
        read_records(path, "json")


@pytest.mark.parametrize("fmt", ["csv", "xml"])
def test_reprs_carry_no_field_values(tmp_path: Path, fmt: str) -> None:
    rows = [sample_row(i, bsn=number) for i, number in enumerate(PERSON_NUMBERS)]
    rows.append(sample_row(9, actie="111252333"))  # a person number in the wrong column
    path = tmp_path / f"r.{fmt}"
    if fmt == "csv":
        write_csv(path, rows, columns=[*rows[-1]])
    else:
        write_xml(path, rows, "25BE")

    got = records(path, fmt)

    line = 2 if fmt == "csv" else 3
    assert repr(got[0]) == f"BulkRecord(record=1, line={line}, action='register')"
    for rec in got:
        shown = repr(rec) + str(rec) + repr([rec])
        for value in [*PERSON_NUMBERS, "111252333", "25BE01", "D-", "2024-07-01", "56551"]:
            assert value not in shown
    assert "<invalid>" in repr(got[-1])


def test_file_refused_shows_code_and_line_only() -> None:
    error = FileRefused("FILE_MALFORMED", 7)
    assert (str(error), error.code, error.line) == ("FILE_MALFORMED line 7", "FILE_MALFORMED", 7)
    assert str(FileRefused("FILE_MALFORMED")) == "FILE_MALFORMED"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.line, copy.problem) == (error.code, error.line, error.problem)


# --- volume -------------------------------------------------------------------------------

LARGE = 100_000  # tracemalloc slows every allocation; 100,000 records still pass line 65,535


@pytest.mark.parametrize("fmt", ["csv", "xml"])
def test_large_file_streams_with_flat_memory(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"large.{fmt}"
    rows = sample_rows(LARGE)
    written = write_csv(path, rows, delimiter=";") if fmt == "csv" else write_xml(path, rows, "25BE")
    assert written == LARGE
    size = path.stat().st_size
    process = psutil.Process()

    tracemalloc.start()
    try:
        check_file(path, fmt)
        _, check_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rss = [process.memory_info().rss]
        count, last = 0, None
        for rec in read_records(path, fmt):
            count, last = count + 1, rec
            if count % 50_000 == 0:
                rss.append(process.memory_info().rss)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == LARGE
    assert last is not None and last.fields["diploma_number"] == f"D-{LARGE - 1}"
    # the line is exact past libxml2's 16-bit line numbers too
    assert last.line == (LARGE + 1 if fmt == "csv" else 3 + 10 * (LARGE - 1))
    assert max(check_peak, read_peak) < size / 20
    assert max(rss) - rss[0] < 30_000_000  # libxml2's memory is not traced: watch the RSS
