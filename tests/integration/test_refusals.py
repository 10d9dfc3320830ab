"""A bulk file refused as a whole names what to fix, alike over the API (`POST /v1/batches`
on the registrar's own server process), the CLI (`rod import` as a user runs it) and the
Loket's upload form: each kind of refusal its own code, the line, and the columns or element
concerned. Nothing is written, no feedback file is left, and no person number appears in any
answer."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from services.kernel.settings import Settings
from tests.integration.api_process import api_process
from tests.integration.apiserver import CATALOGUE
from tests.support import run_rod, settings_env

HEADER = "bsn,instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer,diplomadatum"
ROW = "111222333,25BE,25BE01,HO,56551,R-1,2026-07-01"
ROOT = '<?xml version="1.0" encoding="UTF-8"?>\n<aanlevering instellingscode="25BE">\n'
RECORD = ("<resultaat><bsn>111222333</bsn><vestigingscode>25BE01</vestigingscode><sector>HO</sector>"
          "<opleidingscode>56551</opleidingscode><diplomavolgnummer>R-1</diplomavolgnummer>"
          "<diplomadatum>2026-07-01</diplomadatum></resultaat>\n")
PERSON_NUMBERS = ("111222333", "123456782")


@dataclass(frozen=True)
class Refused:
    """A file, the code and line it is refused with, and what the message must name."""

    name: str
    content: bytes
    code: str
    line: int
    named: str

    @property
    def kind(self) -> str:
        return "xml" if "xml" in self.name else "csv"


def csv_file(header: str, *rows: str, encoding: str = "utf-8") -> bytes:
    return "".join(f"{line}\n" for line in (header, *rows)).encode(encoding)


def xml_file(*records: str, root: str = ROOT, prolog: str = "") -> bytes:
    return (root.replace("\n", f"\n{prolog}", 1) + "".join(records) + "</aanlevering>\n").encode()


WITHOUT_TWO = HEADER.replace(",sector", "").replace(",diplomadatum", "")
BROKEN_RECORD = RECORD.replace("</sector>", "</sectr>")
BARE_ROOT = ROOT.replace(' instellingscode="25BE"', "")
XSD = "aanlevering.xsd"

CASES = [
    Refused("columns-missing", csv_file(WITHOUT_TWO, ROW), "COLUMNS_MISSING", 1,
            "ontbreken verplichte kolommen: sector, diplomadatum."),
    Refused("no-person-column", csv_file("\n" + HEADER.replace("bsn,", ""), ROW), "COLUMNS_MISSING", 2,
            "ontbreken verplichte kolommen: bsn/onderwijsnummer."),
    Refused("columns-unknown", csv_file(HEADER + ",geboortedatum,x111222333", ROW + ",2000-01-01,1"),
            "COLUMNS_UNKNOWN", 1, "onbekende kolommen: geboortedatum, #9. Bekende kolommen zijn: "),
    Refused("columns-duplicate", csv_file(HEADER + ",BSN", ROW + ",111222333"), "COLUMNS_DUPLICATE", 1,
            "noemt deze kolommen meer dan eens: bsn."),
    Refused("empty", b"", "FILE_EMPTY", 1, "Het bestand is leeg"),
    Refused("blank-lines", b"\r\n \r\n", "FILE_EMPTY", 1, "Het bestand is leeg"),
    Refused("header-only", csv_file(HEADER, ""), "FILE_NO_RECORDS", 1, "geen resultaten: na regel 1"),
    Refused("utf16", csv_file(HEADER, ROW, encoding="utf-16"), "FILE_NOT_UTF8", 1,
            "geen UTF-8-tekst (regel 1); sla het op in de codering UTF-8"),
    Refused("header-not-utf8", csv_file("\n" + HEADER + ",tœlichting", ROW + ",x", encoding="cp1252"),
            "FILE_NOT_UTF8", 2, "geen UTF-8-tekst (regel 2)"),
    Refused("tab-separated", csv_file(HEADER, ROW).replace(b",", b"\t"), "SEPARATOR_INVALID", 1,
            "gescheiden door tab; gebruik een komma (,) of een puntkomma (;)"),
    Refused("no-header", csv_file(ROW, ROW), "HEADER_MISSING", 1,
            "Regel 1 is geen kopregel: geen van de kolomnamen is bekend."),
    Refused("xml-not-well-formed", xml_file(RECORD, BROKEN_RECORD), "XML_NOT_WELL_FORMED", 4,
            "niet goed gevormd (regel 4)"),
    Refused("xml-wrong-root", xml_file(RECORD).replace(b"aanlevering", b"levering"), "XML_SCHEMA_INVALID", 2,
            f"{XSD}: levering op regel 2. Verwacht is één <aanlevering instellingscode="),
    Refused("xml-root-without-instellingscode", xml_file(RECORD, root=BARE_ROOT), "XML_SCHEMA_INVALID", 2,
            f"{XSD}: aanlevering/@instellingscode op regel 2. Verwacht is "),
    Refused("xml-no-records", xml_file(), "FILE_NO_RECORDS", 2, "geen resultaten: na regel 2"),
    Refused("xml-dtd", xml_file(RECORD, prolog='<!DOCTYPE aanlevering SYSTEM "file:///etc/passwd">\n'),
            "FILE_MALFORMED", 2, "kan niet worden gelezen (regel 2)"),
]


@dataclass
class System:
    url: str
    env: dict[str, str]
    token: str
    registrar_db: str

    def events(self) -> int:
        engine = sqlalchemy.create_engine(self.registrar_db)
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT count(*) FROM registrar_events").scalar_one()
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The embedded default (each service its SQLite file in the data dir), one API process."""
    settings = Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path_factory.mktemp("refusals") / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.", "ROD_CATALOGUE": str(CATALOGUE),
    })
    env = settings_env(settings)
    env.pop("ROD_DATABASE_URL")
    token = run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO",
                    env=env, check=True).stdout.strip().splitlines()[-1]
    with api_process(env) as (_proc, url):
        yield System(url, env, token, settings.database_urls["registrar"])


@pytest.fixture(scope="module")
def loket(system: System) -> Iterator[tuple[httpx.Client, str]]:
    """A browser logged in to the Loket as 25BE, and its session's CSRF token."""
    with httpx.Client(base_url=system.url, timeout=60) as client:
        answer = client.post("/loket/login", data={"token": system.token})
        assert answer.status_code == 303, answer.text
        found = re.search(r'name="csrf" value="([^"]+)"', client.get("/loket/aanleveren").text)
        assert found, "the upload form carries a CSRF token"
        yield client, found.group(1)


def no_person_number(text: str) -> None:
    for number in PERSON_NUMBERS:
        assert number not in text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_refused_upload_names_the_problem(system: System, case: Refused) -> None:
    content_type = "application/xml" if case.kind == "xml" else "text/csv"
    headers = {"Authorization": f"Bearer {system.token}", "Content-Type": content_type}
    before = system.events()
    answer = httpx.post(f"{system.url}/v1/batches", content=case.content, headers=headers, timeout=60)

    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert (error["field"], error["code"], error["line"]) == ("file", case.code, case.line)
    assert case.named in error["message"]
    no_person_number(answer.text)
    assert system.events() == before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rod_import_prints_the_refusal_and_leaves_no_feedback_file(
    system: System, case: Refused, tmp_path: Path
) -> None:
    file = tmp_path / f"{case.name}.{case.kind}"
    file.write_bytes(case.content)
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("record,line,outcome,result_id,codes\n1,2,accepted,,\n")  # an earlier run's
    before = system.events()

    imported = run_rod("import", str(file), "--institution", "25BE", "--feedback", str(feedback),
                       env=system.env)

    assert imported.returncode == 2, imported.stdout + imported.stderr
    [line] = imported.stdout.splitlines()
    assert line.startswith(f"file refused: {case.code} at line {case.line}: ")
    assert case.named in line
    assert "file refused" not in imported.stderr  # the result on stdout, logs on stderr
    no_person_number(imported.stdout + imported.stderr)
    assert not feedback.exists()
    assert system.events() == before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_loket_shows_the_refusal_with_what_to_fix(
    system: System, loket: tuple[httpx.Client, str], case: Refused
) -> None:
    client, csrf = loket
    content_type = "application/xml" if case.kind == "xml" else "text/csv"
    before = system.events()

    page = client.post("/loket/aanleveren", data={"csrf": csrf},
                       files={"bestand": (f"{case.name}.{case.kind}", case.content, content_type)})

    assert page.status_code == 422, page.text
    shown = html.unescape(page.text)
    assert f"<code>{case.code}</code>" in page.text
    assert case.named in shown and "Er is niets verwerkt." in shown
    assert shown.lower().count(f"regel {case.line}") == 1  # the line once: in the message, or after it
    assert "{" not in shown.split("<main", 1)[-1].split("</main>", 1)[0]  # every parameter filled in
    no_person_number(page.text)
    assert system.events() == before


def test_the_loket_in_english_names_the_problem_in_english(
    system: System, loket: tuple[httpx.Client, str]
) -> None:
    client, csrf = loket
    page = client.post("/loket/aanleveren?lang=en", data={"csrf": csrf},
                       files={"bestand": ("two-missing.csv", csv_file(WITHOUT_TWO, ROW), "text/csv")})
    assert page.status_code == 422, page.text
    assert "The header (line 1) lacks required columns: sector, diplomadatum." in html.unescape(page.text)


def test_a_record_that_is_not_utf8_costs_that_record_only(system: System, tmp_path: Path) -> None:
    """Issue 13's rule stands: bytes that are not UTF-8 in a record reject that record, not the file."""
    file = tmp_path / "one-bad.csv"
    file.write_bytes(f"{HEADER}\n{ROW.replace('R-1', 'U-1')}\n".encode()
                     + b"123456782,25BE,25BE01,HO,56551,U-\xff,2026-07-01\n")
    headers = {"Authorization": f"Bearer {system.token}", "Content-Type": "text/csv"}

    uploaded = httpx.post(f"{system.url}/v1/batches", content=file.read_bytes(), headers=headers, timeout=60)
    imported = run_rod("import", str(file), "--institution", "25BE", env=system.env)

    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["summary"] == {"accepted": 1, "duplicate": 0, "rejected": 1, "warnings": 0}
    assert imported.returncode == 1, imported.stdout + imported.stderr
    assert imported.stdout.splitlines()[0] == "record 2 (line 3): rejected TEXT_NOT_UNICODE"
    assert ": 0 accepted, 1 duplicate, 1 rejected" in imported.stdout
