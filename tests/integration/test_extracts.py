"""Extracts (Mijn diploma's) end to end: a whole `rod up` as a subprocess on the session broker and
SQLite, an institution registering over the API, a portal issuing, an employer checking.

The chain under test: registration -> relay -> distributor -> rod.feed.extract.v1 -> the extract
service's tables -> lookup and issue -> rod.extracts.v1 -> the registrar's chain impact; and a
deletion -> withdrawal on the feed -> the verification turns `withdrawn`. The PDF is checked with
Debian's poppler tools and `rod extract verify`, the /verify page in Debian's headless chromium.

Every answer of the extract routes, the verifications, the page and the deletions is kept; none may
hold a full person number. Assertion messages never show one either: they count, never quote.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from services.audit.periods import Period
from services.kernel.broker import free_port
from services.kernel.codec import Codec
from tests import browser
from tests.integration.rodsystem import System, leaks, rod_up_system
from tests.support import read_topic, run_rod

ALICE = "111222333"  # two results
BOB = "123456782"  # one result
CAROL = "249566758"  # one result, on the page
EXTRACTS_TOPIC = "rod.extracts.v1"


def registration(bsn: str, programme_code: str, diploma_number: str) -> dict[str, Any]:
    """A valid HO registration for 25BE (documented person numbers and catalogue codes only)."""
    return {"person": {"bsn": bsn}, "institution": "25BE", "branch": "25BE01", "sector": "HO",
            "programme_code": programme_code, "diploma_number": diploma_number, "diploma_date": "2026-07-01"}


@pytest.fixture(scope="module")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One `rod up` for the module; each test works with persons of its own."""
    with rod_up_system(broker, tmp_path_factory.mktemp("extracts")) as made:
        yield made


def tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def tampered(pdf: bytes) -> bytes:
    """The same PDF with one byte changed inside the first page's content stream (inside the signed
    range: before the signature's /Contents)."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(BytesIO(pdf), strict=False)
    contents = reader.root["/Pages"]["/Kids"][0]["/Contents"]
    stream = (contents[0] if isinstance(contents, list) else contents).get_object()
    raw = stream.encoded_data
    position = pdf.index(raw) + len(raw) // 2
    assert position < pdf.index(b"/Contents <"), "the first content stream lies before the signature"
    return pdf[:position] + bytes([pdf[position] ^ 0x01]) + pdf[position + 1:]


def pdfsig_lines(path: Path) -> list[str]:
    done = tool("pdfsig", path)
    return [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def without_poppler(tool_name: str) -> None:
    """A part of the test that needs a Debian tool: said, not silently dropped."""
    warnings.warn(pytest.PytestWarning(f"{tool_name} (Debian poppler-utils) is not installed: "
                                       f"its part of the extract test was not run"), stacklevel=2)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def impact_names_the_extract(system: System, result_id: str, timeout: float = 30) -> dict[str, Any]:
    """The dry run's impact once it says an extract showed `result_id` (rod.extracts.v1 reaches the
    registrar's impact reader)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = system.delete(result_id, dry_run=True)
        assert answer.status_code == 200, answer.text
        impact = answer.json()["impact"]
        if impact["extract_issued"]:
            return impact
        assert time.monotonic() < deadline, f"no extract in the dry run's impact after {timeout} s"
        time.sleep(0.3)


@pytest.mark.slow
def test_an_extract_is_issued_signed_checked_and_withdrawn_with_its_result(
    system: System, tmp_path: Path
) -> None:
    alice_ids = system.register(registration(ALICE, "56551", "EXT-1"), registration(ALICE, "34560", "EXT-2"))
    (bob_id,) = system.register(registration(BOB, "50625", "EXT-3"))
    person = {"bsn": ALICE}

    # the portal sees Alice's two results once the feed has brought them
    looked_up = system.standing(ALICE, 2)
    assert sorted(r["result_id"] for r in looked_up) == sorted(alice_ids)
    assert {(r["programme_code"], r["programme_name"], r["diploma_number"], r["institution"], r["sector"])
            for r in looked_up} == {("56551", "B Geneeskunde", "EXT-1", "25BE", "HO"),
                                    ("34560", "B Verpleegkunde", "EXT-2", "25BE", "HO")}
    assert [r["result_id"] for r in system.standing(BOB, 1)] == [bob_id]

    # who may ask: a portal token only
    with system.client() as anonymous:
        answer = anonymous.post("/v1/extracts/lookup", json={"person": person})
        assert answer.status_code == 401 and answer.json()["errors"][0]["code"] == "TOKEN_MISSING"
        assert anonymous.post("/v1/extracts", json={"person": person}).status_code == 401
    with system.client(system.institution_token) as institution:
        assert institution.post("/v1/extracts/lookup", json={"person": person}).status_code == 403
        answer = institution.post("/v1/extracts", json={"person": person, "result_ids": alice_ids})
        assert answer.status_code == 403 and answer.json()["errors"][0]["code"] == "TOKEN_FORBIDDEN"

    with system.portal() as portal:
        # another person's result on Alice's extract: 404, and nothing is issued (the topic shows it below)
        answer = portal.post("/v1/extracts", json={"person": person, "result_ids": [alice_ids[0], bob_id]})
        assert answer.status_code == 404 and answer.json()["errors"][0]["code"] == "RESULT_NOT_STANDING"

        chosen = {"person": person, "result_ids": alice_ids, "language": "nl"}
        answer = portal.post("/v1/extracts", json=chosen)
        assert answer.status_code == 201, answer.text
        extract = answer.json()
        assert set(extract) == {"extract_id", "verification_code", "issued_at", "results", "pdf"}
        assert sorted(r["result_id"] for r in extract["results"]) == sorted(alice_ids)
        assert extract["pdf"] == f"/v1/extracts/{extract['extract_id']}/pdf"
        extract_id, code = extract["extract_id"], extract["verification_code"]
        pdf = portal.get(extract["pdf"])
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    document = tmp_path / "uittreksel.pdf"
    document.write_bytes(pdf.content)

    # one ExtractIssued per result, keyed by the result id, and nothing from the refused request
    records = read_topic(system.settings.kafka_bootstrap or "", system.settings.topic(EXTRACTS_TOPIC), 2)
    ours = {*alice_ids, bob_id}  # the page test's extract is another person's
    decoded = [(r.key.decode(), *Codec().decode(r.value)) for r in records if r.key.decode() in ours]
    assert sorted((key, name, rec["extract_id"], rec["result_id"], rec["institution"])
                  for key, name, rec in decoded) == sorted(
        (rid, "ExtractIssued", extract_id, rid, "25BE") for rid in alice_ids)

    # the document: one valid signature, the results and the code, the person number masked
    if shutil.which("pdfsig"):
        lines = pdfsig_lines(document)
        assert sum(line.startswith("Signature #") for line in lines) == 1, lines
        assert "- Signature Validation: Signature is Valid." in lines, lines
    else:
        without_poppler("pdfsig")
    if shutil.which("pdftotext"):
        text = tool("pdftotext", "-raw", document, "-").stdout
        assert leaks(text) + leaks("".join(text.split())) == 0, "the PDF's text holds a full person number"
        for shown in ("B Geneeskunde", "B Verpleegkunde", "EXT-1", "EXT-2", code):
            assert shown in text, f"{shown!r} is not in the PDF's text"
        assert "******333" in text
        assert f"{system.url}/verify" in text  # no ROD_PUBLIC_URL: the address it was reached at
    else:
        without_poppler("pdftotext")
    # `rod extract verify`: the document as issued, a copy with one byte changed inside the signed
    # range, and the document against a port where nothing listens
    changed = tmp_path / "uittreksel-changed.pdf"
    changed.write_bytes(tampered(pdf.content))
    found, refused, unreachable = system.verify(document, changed, (document, f"http://127.0.0.1:{free_port()}"))
    assert found.returncode == 0, found.stdout + found.stderr
    assert "verdict: valid" in found.stdout
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "signature: valid" not in refused.stdout and "verdict: not valid" in refused.stdout
    if shutil.which("pdfsig"):
        assert "- Signature Validation: Signature is Valid." not in pdfsig_lines(changed)
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "register: unreachable" in unreachable.stdout

    # the chain impact: a dry run of deleting either result names the extract
    for result_id in alice_ids:
        impact = impact_names_the_extract(system, result_id)
        assert "uittreksel" in impact["message"] and impact["has_impact"], impact
        assert [x["extract_id"] for x in impact["extracts"]] == [extract_id], impact
        issued_apart = abs(moment(impact["extracts"][0]["issued_at"]) - moment(extract["issued_at"]))
        assert issued_apart < timedelta(milliseconds=1), impact  # the wire keeps milliseconds

    employer = system.client(local_address="127.0.0.4")  # its attempts apart from the page test's
    valid = employer.get(f"/v1/verifications/{extract_id}", params={"code": code})
    assert valid.status_code == 200, valid.text
    assert valid.json()["status"] == "valid" and valid.json()["withdrawn_at"] is None
    assert moment(valid.json()["issued_at"]) == moment(extract["issued_at"])

    # the deletion turns the verification withdrawn within 10 s (polled from another client address)
    deleting = datetime.now(UTC)
    deleted = system.delete(alice_ids[0])
    started = time.monotonic()
    assert deleted.status_code == 201, deleted.text
    assert deleted.json()["impact"]["extract_issued"] is True
    with system.client(local_address="127.0.0.2") as poller:
        while (state := poller.get(f"/v1/verifications/{extract_id}", params={"code": code})
               ).json().get("status") != "withdrawn":
            assert state.status_code == 200, state.text
            assert time.monotonic() - started < 10, "the extract still counts as valid 10 s after deletion"
            time.sleep(0.1)
    took = time.monotonic() - started
    assert took < 10
    body = state.json()
    withdrawn_at = moment(body["withdrawn_at"])
    assert deleting - timedelta(seconds=2) <= withdrawn_at <= datetime.now(UTC) + timedelta(seconds=2), body
    assert sorted((r["programme_name"], r["status"]) for r in body["results"]) == [
        ("B Geneeskunde", "withdrawn"), ("B Verpleegkunde", "standing")]
    gone = [moment(r["withdrawn_at"]) for r in body["results"] if r["status"] == "withdrawn"]
    assert gone == [withdrawn_at]  # the extract's time is its withdrawn result's
    print(f"verification withdrawn {took:.2f} s after the deletion answered")
    (withdrawn,) = system.verify(document)
    assert withdrawn.returncode == 1, withdrawn.stdout + withdrawn.stderr
    assert "register: withdrawn" in withdrawn.stdout
    with system.portal() as portal:  # the lookup shows only what stands now
        after = portal.post("/v1/extracts/lookup", json={"person": person}).json()["results"]
    assert [r["result_id"] for r in after] == [alice_ids[1]]

    # the period's deletion report counts it among the deletions that had an extract
    period = Period.containing(datetime.now(UTC)).id
    run_rod("report", "--period", period, env=system.env, check=True, timeout=180)
    national = json.loads((system.settings.data_dir / "reports" / period / "national.json").read_text())
    assert national["chain_impact"]["extract_issued"]["count"] >= 1, national["chain_impact"]

    # no oracle: a wrong code and an unknown id answer alike
    wrong = employer.get(f"/v1/verifications/{extract_id}", params={"code": "AAAA-BBBB-CCCC-DDDD"})
    unknown = employer.get(f"/v1/verifications/{uuid.uuid4()}", params={"code": code})
    assert wrong.status_code == unknown.status_code == 404
    assert wrong.content == unknown.content
    assert wrong.json()["errors"][0]["code"] == "VERIFICATION_NOT_FOUND"

    # more than 30 attempts a minute from one client: 429 (another loopback address, its own count)
    with system.client(local_address="127.0.0.3") as guesser:
        answers = [guesser.get(f"/v1/verifications/{extract_id}", params={"code": f"GUESS-{n}"}).status_code
                   for n in range(31)]
    assert answers == [404] * 30 + [429]


@pytest.mark.slow
def test_the_verify_page_in_headless_chromium_turns_from_geldig_to_ingetrokken(system: System) -> None:
    browser.sync_api()  # skips before any registration when there is no browser
    (result_id,) = system.register(registration(CAROL, "56551", "EXT-PAGE-1"))
    system.standing(CAROL, 1)
    with system.portal() as portal:
        answer = portal.post("/v1/extracts", json={"person": {"bsn": CAROL}})
        assert answer.status_code == 201, answer.text
    extract_id, code = answer.json()["extract_id"], answer.json()["verification_code"]

    shown_pages: list[str] = []  # every page the browser showed, for the person-number scan
    # without JavaScript: the page works without it; nothing requested from any other host
    with browser.chromium() as chromium, browser.visit(chromium, system.url, javascript=False) as tab:
        page = tab.page
        page.goto(f"{system.url}/verify")
        page.get_by_label("Uittrekselnummer").fill(extract_id)
        page.get_by_label("Controlecode").fill(code)
        page.get_by_role("button", name="Controleren").click()
        page.wait_for_url(re.compile(r".*/verify\?.*id=.*"))
        outcome = page.locator("#outcome")
        assert "geldig" in outcome.inner_text(), outcome.inner_text()
        assert "B Geneeskunde" in page.locator("#extract").inner_text()
        shots = [tab.screenshot("extract-verify-valid")]
        shown_pages.append(page.content())

        page.locator("#language").click()  # English
        page.wait_for_url(re.compile(r".*lang=en.*"))
        assert "This extract is valid." in page.locator("#outcome").inner_text()
        page.locator("#language").click()  # back to Dutch
        page.wait_for_url(re.compile(r".*lang=nl.*"))
        assert "geldig" in page.locator("#outcome").inner_text()

        deleted = system.delete(result_id)
        assert deleted.status_code == 201, deleted.text
        started = time.monotonic()
        while "ingetrokken" not in (shown := page.locator("#outcome").inner_text()):
            assert "geldig" in shown, shown
            assert time.monotonic() - started < 10, "the page still says geldig 10 s after the deletion"
            time.sleep(0.5)  # with the other checks well under the page's 30 attempts a minute
            page.reload()
        assert "sinds" in shown  # and since when
        rows = page.locator("#extract td.state-withdrawn")
        assert rows.count() == 1 and "Ingetrokken op" in rows.inner_text()
        shots.append(tab.screenshot("extract-verify-withdrawn"))
        shown_pages.append(page.content())
        page.locator("#language").click()
        page.wait_for_url(re.compile(r".*lang=en.*"))
        assert "This extract was withdrawn on" in page.locator("#outcome").inner_text()
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    assert sum(leaks(html) for html in shown_pages) == 0, "a full person number on the verify page"
