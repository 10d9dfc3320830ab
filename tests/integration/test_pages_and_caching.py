"""What the HTTP app shows a browser and lets it keep (real uvicorn, real SQLite): the interactive
docs are off so no page pulls a script from another host, and every answer that may carry a
person number says `Cache-Control: no-store`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kernel.settings import Settings
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from tests import browser
from tests.fixtures.bulkfiles import sample_row, write_csv
from tests.integration.apiserver import RunningApi, registration, running_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    settings = Settings.from_env({"ROD_DATA_DIR": str(tmp_path / "var"),
                                  "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'rod.db'}"})
    with running_api(settings) as running:
        yield running


def test_the_docs_load_nothing_from_another_host(api: RunningApi) -> None:
    statuses = {}
    with browser.chromium() as chromium, browser.visit(chromium, api.url) as tab:  # fails on another host
        for path in ("/docs", "/redoc", "/openapi.json"):
            answer = tab.page.goto(f"{api.url}{path}")
            tab.page.wait_for_load_state("networkidle")
            statuses[path] = answer.status if answer else None
    assert statuses == {"/docs": 404, "/redoc": 404, "/openapi.json": 200}  # the schema stays


def test_personal_answers_carry_no_store(api: RunningApi, tmp_path: Path) -> None:
    reports = api.settings.data_dir / "reports" / "2025-05"
    reports.mkdir(parents=True)
    (reports / "25BE.json").write_text(json.dumps({"provisional": False, "totals": {"deletions": 0}}))
    operations = OperationsStore(api.settings.database_urls["operations"])
    operator_token = add_operator(operations, "alice", "test")
    operations.dispose()
    bulk = tmp_path / "bulk.csv"
    write_csv(bulk, [sample_row(1)])
    answers = {}
    with api.client("25BE") as client:
        answers["register"] = client.post("/v1/results", json=registration())
        result = f"/v1/results/{answers['register'].json()['result_id']}"
        answers["result"] = client.get(result)  # the person number in clear
        answers["chain impact"] = client.post(f"{result}/deletions?dry_run=true",
                                              json={"reason": "ADMINISTRATIVE_ERROR"})
        answers["deletion"] = client.post(f"{result}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        answers["upload"] = client.post("/v1/batches", content=bulk.read_bytes(),
                                        headers={"content-type": "text/csv"})
        feedback = f"/v1/batches/{answers['upload'].json()['batch_id']}/feedback"
        answers["feedback"] = client.get(feedback)
        answers["feedback csv"] = client.get(feedback, params={"format": "csv"})
        answers["reports"] = client.get("/v1/reports")
        answers["report"] = client.get("/v1/reports/2025-05")
        answers["unknown result"] = client.get("/v1/results/00000000-0000-0000-0000-000000000000")
    with api.client(None) as anonymous:
        answers["feed, no token"] = anonymous.get("/v1/feeds/cibg-big/messages")
        answers["extract lookup, no token"] = anonymous.post("/v1/extracts/lookup", json={})
        answers["console login"] = anonymous.get("/ops/login")
        answers["console, no login"] = anonymous.get("/ops")
        answers["console"] = anonymous.get("/ops", headers={"Authorization": f"Bearer {operator_token}"})
    assert [a.status_code for a in answers.values()] == [
        201, 200, 200, 201, 201, 200, 200, 200, 200, 404, 401, 401, 200, 401, 200]
    assert {what: a.headers.get("cache-control") for what, a in answers.items()} == {
        what: "no-store" for what in answers}
    with api.client(None) as anonymous:  # not personal: left to the route
        assert "no-store" not in anonymous.get("/healthz").headers.get("cache-control", "")
