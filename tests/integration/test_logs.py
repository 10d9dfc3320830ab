"""The server's logs tell the story (issue 14): one access line per request with the route
template, a line per registration, deletion, batch and refusal with its ids whole (also ids
that start with nine digits), and no person number anywhere; `rod` commands keep stderr quiet
unless asked."""

from __future__ import annotations

import io
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from services.kernel import logging as rod_logging
from services.kernel.settings import Settings
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from services.registrar import commands
from tests.fixtures.bulkfiles import write_csv
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.support import LOG_SINK, PERSON_NUMBERS, run_rod, settings_env

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
ROW = {"instellingscode": "25BE", "vestigingscode": "25BE01", "sector": "HO", "opleidingscode": "56551",
       "diplomadatum": "2026-07-01"}


class _Captured(io.TextIOBase):
    """What the process logs during one test (it still joins the session's person-number scan)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        LOG_SINK.write(text)
        return len(text)

    def isatty(self) -> bool:
        return False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def entries(self, event: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.text.splitlines() if line.strip()]
        return [e for e in found if event is None or e["event"] == event]

    def wait_for(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        """The access line is written once the answer went out: the client may be quicker."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, "the expected log lines never came"
            time.sleep(0.02)


@pytest.fixture
def captured() -> Iterator[_Captured]:
    out = _Captured()
    rod_logging.configure(stream=out, json=True)
    try:
        yield out
    finally:
        rod_logging.configure(stream=LOG_SINK, json=True)


@pytest.fixture
def nine_digit_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Result and batch ids whose first nine hex digits are all decimal digits, as UUIDv7 result
    ids are for minutes at a time (`12345678-9…`) and issue 14's batch was (`91264990-38f2-…`)."""
    made = commands.new_result_id
    monkeypatch.setattr(commands, "new_result_id", lambda: "12345678-9" + made()[10:])
    monkeypatch.setattr(commands, "uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(
        f"91264990-38f2-4{secrets.token_hex(2)[:3]}-8{secrets.token_hex(2)[:3]}-{secrets.token_hex(6)}")))


@pytest.fixture
def api(settings: Settings) -> Iterator[RunningApi]:
    with running_api(settings) as running:
        yield running


def _one(captured: _Captured, event: str, **where: Any) -> dict[str, Any]:
    found = [e for e in captured.entries(event) if all(e.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (event, where, captured.entries(event))
    return found[0]


def test_registration_deletion_batch_and_refusals_each_leave_their_line_with_ids_whole(
    api: RunningApi, captured: _Captured, nine_digit_ids: None, tmp_path: Path,
) -> None:
    answers: list[httpx.Response] = []
    with api.client() as client:
        registered = client.post("/v1/results", json=registration(diploma_number="LOG-1"))
        wrong_bsn = registration(person={"bsn": "123456789"}, diploma_number="LOG-2")
        refused = client.post("/v1/results", json=wrong_bsn)
        result_id = registered.json()["result_id"]
        looked_up = client.get(f"/v1/results/{result_id}", params={"bsn": "319072356"})  # query: not logged
        by_number = client.get("/v1/results/106071665")  # a person number in the path: never logged either
        deleted = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "WRONG_PERSON_OR_DATA"})
        again = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "WRONG_PERSON_OR_DATA"})
        file = tmp_path / "batch.csv"
        write_csv(file, [{"bsn": "249566758", **ROW, "diplomavolgnummer": "LOG-B1"},
                         {"bsn": "111252333", **ROW, "diplomavolgnummer": "LOG-B2"}])
        batch = client.post("/v1/batches", content=file.read_bytes(), headers={"content-type": "text/csv"})
        empty = client.post("/v1/batches", content=b"", headers={"content-type": "text/csv"})
        answers += [registered, refused, looked_up, by_number, deleted, again, batch, empty]
    with api.client(institution=None) as anonymous:
        answers.append(anonymous.get(f"/v1/results/{result_id}"))
    assert [a.status_code for a in answers[:7]] == [201, 422, 200, 404, 201, 409, 201], answers[1].text
    assert empty.status_code >= 400 and answers[-1].status_code == 401
    batch_id = batch.json()["batch_id"]
    assert result_id.startswith("12345678-9") and batch_id.startswith("91264990-38f2-")
    captured.wait_for(lambda: len(captured.entries("http_request")) >= len(answers))

    # the commands' lines, ids whole
    line = _one(captured, "result_registered", result_id=result_id)
    assert (line["event_id"], line["institution"], line["position"]) == (
        registered.json()["event_id"], "25BE", registered.json()["position"])
    assert _one(captured, "registration_refused", institution="25BE")["codes"] == [
        e["code"] for e in refused.json()["errors"]]
    line = _one(captured, "result_deleted", result_id=result_id)
    assert (line["event_id"], line["reason"]) == (deleted.json()["event_id"], "WRONG_PERSON_OR_DATA")
    assert _one(captured, "deletion_refused", result_id=result_id)["codes"] == ["RESULT_ALREADY_DELETED"]
    line = _one(captured, "batch_finished", batch_id=batch_id)
    assert (line["institution"], line["accepted"], line["rejected"]) == ("25BE", 1, 1)
    assert _one(captured, "batch_started", batch_id=batch_id)["format"] == "csv"
    assert _one(captured, "batch_refused", institution="25BE")["code"] == empty.json()["errors"][0]["code"]
    assert not captured.entries("result_registered")[1:]  # a batch's records: in its feedback

    # one access line per request, by route template, with its request id, principal and codes
    access = captured.entries("http_request")
    assert len(access) == len(answers)
    deletions = "/v1/results/{result_id}/deletions"
    expected = [("POST", "/v1/results", 201), ("POST", "/v1/results", 422),
                ("GET", "/v1/results/{result_id}", 200), ("GET", "/v1/results/{result_id}", 404),
                ("POST", deletions, 201), ("POST", deletions, 409),
                ("POST", "/v1/batches", 201), ("POST", "/v1/batches", empty.status_code),
                ("GET", "/v1/results/{result_id}", 401)]
    for answer, (method, route, status) in zip(answers, expected, strict=True):
        request_id = answer.headers["x-request-id"]
        [line] = [a for a in access if a["request_id"] == request_id]
        assert (line["method"], line["route"], line["status"]) == (method, route, status)
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        if status < 400:
            assert "codes" not in line
        elif status != 401:
            assert line["codes"] == [e["code"] for e in answer.json()["errors"]]
        assert line.get("institution") == (None if status == 401 else "25BE")
    assert _one(captured, "http_request", status=401)["codes"] == ["TOKEN_MISSING"]

    # the ids whole, no person number, no raw path or query anywhere
    text = captured.text
    assert text.count(result_id) >= 3 and text.count(batch_id) >= 2
    assert not [n for n in PERSON_NUMBERS if n in text]
    assert "bsn=" not in text and "/v1/results/******" not in text


def test_a_command_prints_its_result_and_logs_only_when_asked(settings: Settings, tmp_path: Path) -> None:
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE)}
    added = run_rod("institution", "add", "25BE", "--name", "Test", "--sectors", "HO", env=env, check=True)
    assert "institution 25BE added" in added.stdout and len(added.stdout.splitlines()[-1]) >= 40
    assert added.stderr == ""
    file = tmp_path / "one.csv"
    write_csv(file, [{"bsn": "249566758", **ROW, "diplomavolgnummer": "CLI-LOG-1"}])
    quiet = run_rod("import", str(file), "--institution", "25BE", env=env, check=True)
    assert "1 accepted" in quiet.stdout and quiet.stderr == ""

    verbose = run_rod("-v", "institution", "add", "30XX", "--name", "Other", "--sectors", "HO", env=env,
                      check=True)
    assert "institution 30XX added" in verbose.stdout
    [line] = [json.loads(x) for x in verbose.stderr.splitlines()]
    assert (line["event"], line["level"], line["institution"]) == ("institution_added", "info", "30XX")
    write_csv(file, [{"bsn": "249566758", **ROW, "diplomavolgnummer": "CLI-LOG-2"}])
    told = run_rod("-v", "import", str(file), "--institution", "25BE", env=env, check=True)
    assert "1 accepted" in told.stdout
    events = [json.loads(x) for x in told.stderr.splitlines()]
    assert {"batch_started", "batch_finished"} <= {e["event"] for e in events}
    assert not [n for n in PERSON_NUMBERS if n in told.stdout + told.stderr]


def test_the_access_line_names_the_operator_and_the_loket_session_s_institution(
    settings: Settings, broker: str, captured: _Captured,
) -> None:
    operations = OperationsStore(settings.database_urls["operations"])
    operator_token = add_operator(operations, "alice", "test")
    operations.dispose()
    with running_api(settings, bootstrap=broker) as running, running.client(institution=None) as client:
        console = client.get("/ops", headers={"Authorization": f"Bearer {operator_token}"})
        login = client.post("/loket/login", data={"token": running.tokens["25BE"]})
        page = client.get("/loket")
    assert (console.status_code, login.status_code, page.status_code) == (200, 303, 200)
    captured.wait_for(lambda: len(captured.entries("http_request")) >= 3)
    lines = {line["request_id"]: line for line in captured.entries("http_request")}
    assert lines[console.headers["x-request-id"]]["operator"] == "alice"
    assert lines[console.headers["x-request-id"]]["route"] == "/ops"
    assert lines[page.headers["x-request-id"]]["institution"] == "25BE"
    assert running.tokens["25BE"] not in captured.text and operator_token not in captured.text
