"""The reports over the registrar's HTTP API (real uvicorn, real tokens): each institution reads
only its own; and the HTML, served that way, renders in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.audit.periods import Period
from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.audit.reports import ReportWriter
from services.kernel.settings import Settings
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.audit_support import Year, scripted_year
from tests.integration.test_audit import AFTER_BOTH

CHROMIUM = os.environ.get("ROD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def reported(tmp_path: Path, broker: str) -> Iterator[tuple[RunningApi, Year]]:
    """The scripted year's 2025-05 reports on disk, and the API serving them."""
    settings = Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'rod.db'}",
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
    })
    year = scripted_year()
    year.log.produce(settings, broker)
    projection = Projection(settings.database_urls["audit"])
    AuditReader(projection, settings, broker).catch_up()
    ReportWriter(projection, settings, None).write(Period.parse("2025-05"), AFTER_BOTH)
    projection.dispose()
    with running_api(settings) as api:
        yield api, year


def test_an_institution_token_reads_only_its_own_reports(reported: tuple[RunningApi, Year]) -> None:
    api, year = reported
    mine, theirs = year.deleted_in["2025-05"]["25BE"], year.deleted_in["2025-05"]["30XX"]
    with api.client("25BE") as client:
        listed = client.get("/v1/reports").json()
        assert listed == {"institution": "25BE", "reports": [{
            "period": "2025-05", "provisional": False, "deletions": len(mine),
            "files": {f: f"/v1/reports/2025-05?format={f}" for f in ("json", "csv", "html")}}]}
        as_json = client.get("/v1/reports/2025-05")
        assert as_json.headers["content-type"] == "application/json"
        assert sorted(r["result_id"] for r in as_json.json()["deletions"]) == sorted(mine)
        as_csv = client.get("/v1/reports/2025-05", params={"format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        as_html = client.get("/v1/reports/2025-05", params={"format": "html"})
        assert as_html.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in as_html.headers["content-security-policy"]
        for body in (as_json.text, as_csv.text):
            assert all(r in body for r in mine) and not any(r in body for r in theirs)
        diplomas = {e["result_id"]: f"<td>{e['diploma_number']}</td>" for e in year.log.events
                    if e["name"] == "ResultRegistered"}  # the page shows diploma numbers, not result ids
        assert all(diplomas[r] in as_html.text for r in mine)
        assert not any(diplomas[r] in as_html.text for r in theirs)
        for path, status, code in (
            ("/v1/reports/2025-11", 404, "NOT_FOUND"),  # not made yet
            ("/v1/reports/2025-06", 422, "PARAMETER_INVALID"),
            ("/v1/reports/2025-05?format=pdf", 422, "PARAMETER_INVALID"),
            ("/v1/reports/..%2F2025-05", 404, "NOT_FOUND"),  # no route: never a path outside
        ):
            answer = client.get(path)
            assert (answer.status_code, answer.json()["errors"][0]["code"]) == (status, code), path
    with api.client("30XX") as client:
        assert client.get("/v1/reports").json()["reports"][0]["deletions"] == len(theirs)
        body = client.get("/v1/reports/2025-05", params={"format": "csv"}).text
        assert all(r in body for r in theirs) and not any(r in body for r in mine)
    with api.client("40MB") as client:  # its report holds none of the others' rows either
        body = client.get("/v1/reports/2025-05").text
        assert not any(r in body for r in mine + theirs)
    with api.client(None) as client:
        assert client.get("/v1/reports").status_code == 401
        answer = client.get("/v1/reports/2025-05", headers={"Authorization": "Bearer not-a-token"})
        assert (answer.status_code, answer.json()["errors"][0]["code"]) == (401, "TOKEN_INVALID")


def test_the_html_report_renders_in_headless_chromium_with_its_totals_visible(
    reported: tuple[RunningApi, Year],
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); no browser is downloaded")
    sync_api = pytest.importorskip("playwright.sync_api")
    api, year = reported
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(extra_http_headers={"Authorization": f"Bearer {api.tokens['25BE']}"})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console",
                    lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            response = page.goto(f"{api.url}/v1/reports/2025-05?format=html")
            assert response is not None and response.status == 200
            total = page.locator("#total-deletions")
            assert total.is_visible()
            assert total.inner_text() == str(len(year.deleted_in["2025-05"]["25BE"]))
            assert page.locator("#deletion-rate").is_visible()
            charts = page.locator("svg.chart")
            assert charts.count() >= 5
            assert all(charts.nth(i).bounding_box()["height"] > 20 for i in range(charts.count()))
            assert page.get_by_text("Verwijderingen per reden").first.is_visible()
            assert page.evaluate("document.scripts.length") == 0
            assert json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('resource'))")) == []
        finally:
            browser.close()
    assert requests == [f"{api.url}/v1/reports/2025-05?format=html"]  # nothing else was fetched
    assert problems == []  # no script errors, no blocked load (the page asks for nothing)
