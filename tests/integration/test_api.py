"""The registrar's HTTP API as an institution's administration system uses it: every endpoint
and status code of interfaces.md, against the real server and database (SQLite, PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from services.kernel.settings import Settings
from services.registrar.verify import verify
from tests.fixtures.bulkfiles import sample_row, write_csv, write_xml
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.support import LOG_SINK, PERSON_NUMBERS


@pytest.fixture
def api(settings: Settings) -> Iterator[RunningApi]:
    with running_api(settings) as running:
        yield running


def errors(response) -> list[tuple[str | None, str]]:  # noqa: ANN001
    body = response.json()
    assert set(body) >= {"errors"}, body
    assert all(set(e) >= {"field", "code", "message"} and e["message"] for e in body["errors"]), body
    return [(e["field"], e["code"]) for e in body["errors"]]


# --- registering ----------------------------------------------------------------------------------


def test_a_registration_is_201_and_an_identical_retry_200_with_the_same_body(api: RunningApi) -> None:
    with api.client() as client:
        first = client.post("/v1/results", json=registration())
        again = client.post("/v1/results", json=registration(diploma_date="2026-07-01"))
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) >= {"result_id", "event_id", "position"} and body["position"] == 1
    assert (again.status_code, again.json()) == (200, body)
    assert api.events() == 1


def test_the_same_key_with_other_data_is_a_409_conflict_and_writes_nothing(api: RunningApi) -> None:
    with api.client() as client:
        assert client.post("/v1/results", json=registration()).status_code == 201
        conflict = client.post("/v1/results", json=registration(diploma_date="2026-06-30"))
    assert conflict.status_code == 409
    assert errors(conflict) == [(None, "RESULT_CONFLICT")]
    assert api.events() == 1


def test_a_registration_breaking_rules_is_422_naming_every_problem(api: RunningApi) -> None:
    with api.client() as client:
        response = client.post("/v1/results", json=registration(
            person={"bsn": "123456789"}, sector="XX", diploma_number="GEEN GELDIG NUMMER"))
        both = client.post("/v1/results", json=registration(
            person={"bsn": "111222333", "onderwijsnummer": "101222331"}))
    assert response.status_code == 422
    assert set(errors(response)) >= {("person.bsn", "BSN_INVALID"), ("sector", "SECTOR_INVALID"),
                                     ("diploma_number", "DIPLOMA_NUMBER_INVALID")}
    assert errors(both) == [("person", "PERSON_NUMBER_AMBIGUOUS")]
    assert "123456789" not in response.text
    assert api.events() == 0


@pytest.mark.parametrize(
    ("content", "status", "expected"),
    [
        (b'{"person": {"bsn": "111222333"}, ', 400, (None, "BODY_MALFORMED")),
        (b"[1, 2, 3]", 400, (None, "BODY_MALFORMED")),
        (b"", 400, (None, "BODY_MALFORMED")),
        (json.dumps(registration(sector=5)).encode(), 422, ("sector", "FIELD_TYPE_INVALID")),
        (json.dumps(registration(person="111222333")).encode(), 422, ("person", "FIELD_TYPE_INVALID")),
        (json.dumps(registration(colour="blue")).encode(), 422, ("colour", "FIELD_UNKNOWN")),
        (json.dumps(registration(person={"bsn": "111222333", "extra": 1})).encode(), 422,
         ("person.extra", "FIELD_UNKNOWN")),
        (json.dumps({k: v for k, v in registration().items() if k != "branch"}).encode(), 422,
         ("branch", "FIELD_REQUIRED")),
        (json.dumps({**registration(), "111222333": "x"}).encode(), 422, ("*", "FIELD_UNKNOWN")),
        (json.dumps(registration(explanation="x" * 100_000)).encode(), 413, (None, "BODY_TOO_LARGE")),
    ],
    ids=["truncated", "array", "empty", "number-for-text", "text-for-object", "unknown-field",
         "unknown-nested-field", "missing-field", "person-number-as-key", "too-large"],
)
def test_malformed_bodies_are_4xx_with_a_code_never_500(
    api: RunningApi, content: bytes, status: int, expected: tuple[str | None, str]
) -> None:
    with api.client() as client:
        response = client.post("/v1/results", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert expected in errors(response)
    assert "111222333" not in response.text
    assert api.events() == 0


# --- tokens ---------------------------------------------------------------------------------------

SOME_ID = "00000000-0000-4000-8000-000000000000"
ENDPOINTS = [
    ("POST", "/v1/results", {"json": registration()}),
    ("POST", f"/v1/results/{SOME_ID}/deletions", {"json": {"reason": "ADMINISTRATIVE_ERROR"}}),
    ("POST", f"/v1/results/{SOME_ID}/deletions?dry_run=true", {"json": {"reason": "ADMINISTRATIVE_ERROR"}}),
    ("GET", f"/v1/results/{SOME_ID}", {}),
    ("POST", "/v1/batches", {"content": b"bsn\n", "headers": {"content-type": "text/csv"}}),
    ("GET", f"/v1/batches/{SOME_ID}/feedback", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_every_institution_endpoint_is_401_without_a_valid_token(
    api: RunningApi, method: str, path: str, kwargs: dict, authorization: str | None
) -> None:
    headers = {**kwargs.get("headers", {}), **({"Authorization": authorization} if authorization else {})}
    with api.client(None) as client:
        response = client.request(method, path, **{**kwargs, "headers": headers})
    assert response.status_code == 401, response.text
    assert errors(response)[0][1] in ("TOKEN_MISSING", "TOKEN_INVALID")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.events() == 0


def test_one_institutions_token_cannot_touch_anything_of_another(api: RunningApi, tmp_path: Path) -> None:
    theirs = api.client("30XX")
    ours = api.client("25BE")
    registered = theirs.post("/v1/results", json=registration(institution="30XX", branch="30XX01"))
    assert registered.status_code == 201
    result_id = registered.json()["result_id"]
    file = tmp_path / "theirs.csv"
    write_csv(file, [sample_row(1, instellingscode="30XX", vestigingscode="30XX01")])
    batch = theirs.post("/v1/batches", content=file.read_bytes(), headers={"content-type": "text/csv"})
    assert batch.status_code == 201 and batch.json()["summary"]["accepted"] == 1
    before = api.events()

    attempts = {
        "register for them": ours.post("/v1/results", json=registration(institution="30XX", branch="30XX01")),
        "register for an unknown one": ours.post("/v1/results", json=registration(institution="99ZZ",
                                                                                  branch="99ZZ01")),
        "read": ours.get(f"/v1/results/{result_id}"),
        "delete": ours.post(f"/v1/results/{result_id}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"}),
        "dry run": ours.post(f"/v1/results/{result_id}/deletions?dry_run=true",
                             json={"reason": "ADMINISTRATIVE_ERROR"}),
        "feedback": ours.get(f"/v1/batches/{batch.json()['batch_id']}/feedback"),
        "feedback csv": ours.get(f"/v1/batches/{batch.json()['batch_id']}/feedback?format=csv"),
    }
    xml = tmp_path / "theirs.xml"
    write_xml(xml, [sample_row(2, instellingscode="30XX", vestigingscode="30XX01")], "30XX")
    attempts["upload their file"] = ours.post("/v1/batches", content=xml.read_bytes(),
                                              headers={"content-type": "application/xml"})
    for what, response in attempts.items():
        assert response.status_code == 403, (what, response.text)
        assert [code for _, code in errors(response)] == ["INSTITUTION_FORBIDDEN"], what
    assert api.events() == before
    assert theirs.get(f"/v1/results/{result_id}").json()["status"] == "registered"
    theirs.close()
    ours.close()


def test_the_database_holds_no_token_in_clear(api: RunningApi) -> None:
    engine = sqlalchemy.create_engine(api.settings.database_urls["registrar"])
    with engine.connect() as conn:
        stored = list(conn.exec_driver_sql("SELECT token_hash, institution FROM registrar_tokens"))
        dumped = " ".join(str(v) for table in ("registrar_tokens", "registrar_institutions")
                          for row in conn.exec_driver_sql(f"SELECT * FROM {table}") for v in row)
    engine.dispose()
    assert len(stored) == len(api.tokens)
    for token in api.tokens.values():
        assert token not in dumped
    with api.client() as client:
        assert client.get(f"/v1/results/{SOME_ID}").status_code == 404  # the token itself works


# --- reading and deleting -------------------------------------------------------------------------


def test_a_result_reads_back_with_its_state_and_full_history(api: RunningApi) -> None:
    with api.client() as client:
        result_id = client.post("/v1/results", json=registration()).json()["result_id"]
        client.post(f"/v1/results/{result_id}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        again = client.post("/v1/results", json=registration(diploma_date="2026-06-30"))
        response = client.get(f"/v1/results/{result_id}")
        missing = client.get(f"/v1/results/{uuid.uuid4()}")
        garbage = client.get("/v1/results/not-an-id")
    assert again.status_code == 201 and again.json()["result_id"] == result_id
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["version"], body["institution"]) == ("registered", 3, "25BE")
    assert body["registration"]["diploma_date"] == "2026-06-30"
    assert body["registration"]["person"] == {"bsn": "111222333"}
    assert [(e["type"], e["version"]) for e in body["events"]] == [
        ("ResultRegistered", 1), ("ResultDeleted", 2), ("ResultRegistered", 3)]
    assert body["events"][1]["deletion"]["reason"] == "ADMINISTRATIVE_ERROR"
    assert body["events"][1]["prev_hash"] == body["events"][0]["hash"]
    assert missing.status_code == garbage.status_code == 404
    assert errors(missing) == [("result_id", "RESULT_NOT_FOUND")]


def test_a_deletion_is_201_with_its_event_and_impact_then_409(api: RunningApi) -> None:
    with api.client() as client:
        result_id = client.post("/v1/results", json=registration()).json()["result_id"]
        no_reason = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "VERVEELD"})
        no_explanation = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "FRAUD"})
        deleted = client.post(f"/v1/results/{result_id}/deletions",
                              json={"reason": "FRAUD", "explanation": "Diploma vervalst"})
        twice = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        dry_twice = client.post(f"/v1/results/{result_id}/deletions?dry_run=true",
                                json={"reason": "ADMINISTRATIVE_ERROR"})
        unknown = client.post(f"/v1/results/{uuid.uuid4()}/deletions",
                              json={"reason": "ADMINISTRATIVE_ERROR"})
    assert (no_reason.status_code, errors(no_reason)) == (422, [("reason", "DELETION_REASON_INVALID")])
    assert no_explanation.status_code == 422
    assert errors(no_explanation) == [("explanation", "EXPLANATION_REQUIRED")]
    assert deleted.status_code == 201, deleted.text
    body = deleted.json()
    assert (body["result_id"], body["version"], body["position"]) == (result_id, 2, 2)
    assert body["event"]["type"] == "ResultDeleted" and body["event"]["deletion"]["reason"] == "FRAUD"
    assert body["impact"] == {"consumers": [], "acknowledged": [], "deliveries": [], "extract_issued": False,
                              "extracts": [], "has_impact": False, "message": body["impact"]["message"]}
    assert body["impact"]["message"].startswith("Dit resultaat is nog niet")
    assert (twice.status_code, errors(twice)) == (409, [(None, "RESULT_ALREADY_DELETED")])
    assert dry_twice.status_code == 409
    assert (unknown.status_code, errors(unknown)) == (404, [("result_id", "RESULT_NOT_FOUND")])
    assert api.events() == 2
    assert verify(api.api.registrar.store).ok


def test_a_dry_run_answers_the_impact_and_writes_nothing(api: RunningApi) -> None:
    with api.client() as client:
        result_id = client.post("/v1/results", json=registration()).json()["result_id"]
        dry = client.post(f"/v1/results/{result_id}/deletions?dry_run=true",
                          json={"reason": "ADMINISTRATIVE_ERROR"})
        bad_flag = client.post(f"/v1/results/{result_id}/deletions?dry_run=perhaps",
                               json={"reason": "ADMINISTRATIVE_ERROR"})
        state = client.get(f"/v1/results/{result_id}").json()
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True and dry.json()["impact"]["consumers"] == []
    assert (bad_flag.status_code, errors(bad_flag)) == (422, [("dry_run", "PARAMETER_INVALID")])
    assert state["status"] == "registered" and len(state["events"]) == 1
    assert api.events() == 1


# --- bulk upload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "xml"])
def test_an_uploaded_file_answers_its_summary_and_the_feedback_can_be_fetched_again(
    api: RunningApi, tmp_path: Path, fmt: str
) -> None:
    rows = [sample_row(i, diplomadatum="2026-07-01") for i in range(5)]
    rows[2]["bsn"] = "123456789"  # BSN_INVALID
    rows[4]["sector"] = "XX"  # SECTOR_INVALID
    file = tmp_path / f"bulk.{fmt}"
    write_csv(file, rows) if fmt == "csv" else write_xml(file, rows, "25BE")
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/xml"
    with api.client() as client:
        uploaded = client.post("/v1/batches", content=file.read_bytes(),
                               headers={"content-type": content_type})
        assert uploaded.status_code == 201, uploaded.text
        batch_id = uploaded.json()["batch_id"]
        feedback = client.get(f"/v1/batches/{batch_id}/feedback")
        as_csv = client.get(f"/v1/batches/{batch_id}/feedback", params={"format": "csv"})
        unknown = client.get(f"/v1/batches/{uuid.uuid4()}/feedback")
    summary = {"accepted": 3, "duplicate": 0, "rejected": 2, "warnings": 0}
    assert uploaded.json()["summary"] == summary
    assert uploaded.headers["location"] == f"/v1/batches/{batch_id}/feedback"
    body = feedback.json()
    assert (body["batch_id"], body["summary"]) == (batch_id, summary)
    assert [(r["record"], r["outcome"], r["codes"]) for r in body["records"]] == [
        (1, "accepted", []), (2, "accepted", []), (3, "rejected", ["BSN_INVALID"]), (4, "accepted", []),
        (5, "rejected", ["SECTOR_INVALID"])]
    if fmt == "csv":
        assert [r["line"] for r in body["records"]] == [2, 3, 4, 5, 6]
    assert all(r["result_id"] for r in body["records"] if r["outcome"] == "accepted")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(int(r["record"]), r["outcome"], r["codes"]) for r in table] == [
        (r["record"], r["outcome"], " ".join(r["codes"])) for r in body["records"]]
    assert (unknown.status_code, errors(unknown)) == (404, [("batch_id", "BATCH_NOT_FOUND")])
    assert api.events() == 3


def test_files_refused_as_a_whole_write_nothing(api: RunningApi, tmp_path: Path) -> None:
    mbo = tmp_path / "mbo.csv"
    write_csv(mbo, [sample_row(1, instellingscode="40MB", vestigingscode="40MB01", sector="MBO",
                               opleidingscode="25655")])
    with api.client() as ours, api.client("40MB") as college:
        broken = ours.post("/v1/batches", content=b'<?xml version="1.0"?><aanlevering instellingscode="25BE">'
                           b"<resultaat>",
                           headers={"content-type": "application/xml"})
        wrong_type = ours.post("/v1/batches", content=b"{}", headers={"content-type": "application/json"})
        csv_from_mbo = college.post("/v1/batches", content=mbo.read_bytes(),
                                    headers={"content-type": "text/csv"})
    assert broken.status_code == 422 and errors(broken)[0][1] == "XML_NOT_WELL_FORMED"
    assert "line" in broken.json()["errors"][0]
    assert wrong_type.status_code == 415
    assert errors(wrong_type) == [("content-type", "CONTENT_TYPE_UNSUPPORTED")]
    assert (csv_from_mbo.status_code, errors(csv_from_mbo)) == (422, [("file", "FILE_FORMAT_NOT_ALLOWED")])
    assert api.events() == 0


def test_an_upload_over_the_limit_is_413_and_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    file = tmp_path / "big.csv"
    write_csv(file, (sample_row(i) for i in range(20_000)))
    assert file.stat().st_size > 1_000_000
    with running_api(settings, upload_limit=1_000_000) as api, api.client() as client:
        response = client.post("/v1/batches", content=file.read_bytes(), headers={"content-type": "text/csv"})
        assert (response.status_code, errors(response)) == (413, [("file", "FILE_TOO_LARGE")])
        assert api.events() == 0
        assert list((api.settings.data_dir / "uploads").iterdir()) == []


# --- concurrency ----------------------------------------------------------------------------------


def test_eight_clients_registering_one_key_at_once_make_exactly_one_event(api: RunningApi) -> None:
    barrier = threading.Barrier(8)
    answers: list[tuple[int, dict]] = []

    def register(i: int) -> None:
        body = registration(diploma_date="2026-07-01" if i % 2 else "2026-06-30")
        with api.client() as client:
            barrier.wait()
            response = client.post("/v1/results", json=body)
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(status for status, _ in answers)
    assert len(statuses) == 8 and statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}
    assert api.events() == 1
    [created] = [body for status, body in answers if status == 201]
    assert all(body == created for status, body in answers if status == 200)


# --- operations -----------------------------------------------------------------------------------


def test_health_metrics_and_the_openapi_document(api: RunningApi) -> None:
    with api.client() as client:
        result_id = client.post("/v1/results", json=registration()).json()["result_id"]
        client.post("/v1/results", json=registration(person={"bsn": "123456789"}))
        client.get(f"/v1/results/{result_id}")
        client.post(f"/v1/results/{result_id}/deletions", json={"reason": "WRONG_PERSON_OR_DATA"})
        health = client.get("/healthz")
        scraped = client.get("/metrics")
        document = client.get("/openapi.json").json()
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    text = scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    for line in (
        'rod_registrations_total{code="none",outcome="accepted"}',
        'rod_registrations_total{code="BSN_INVALID",outcome="rejected"}',
        'rod_deletions_total{reason="WRONG_PERSON_OR_DATA"}',
        'route="/v1/results/{result_id}",status="200"',
        "rod_relay_published_position 0.0",
        "rod_relay_lag_events 2.0",
        "rod_batch_records_bucket",
    ):
        assert line in text, line
    assert result_id not in text
    assert not any(number in text for number in PERSON_NUMBERS)
    assert set(document["paths"]) >= {
        "/v1/results", "/v1/results/{result_id}/deletions", "/v1/results/{result_id}",
        "/v1/batches", "/v1/batches/{batch_id}/feedback", "/healthz", "/metrics"}
    body_schema = document["components"]["schemas"]["RegistrationIn"]
    assert body_schema["additionalProperties"] is False


def test_an_unexpected_error_is_a_500_with_a_correlation_id_and_no_personal_data(api: RunningApi) -> None:
    engine = sqlalchemy.create_engine(api.settings.database_urls["registrar"])
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE registrar_results RENAME TO registrar_results_away")
    try:
        with api.client() as client:
            response = client.post("/v1/results", json=registration(person={"bsn": "249566758"}))
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE registrar_results_away RENAME TO registrar_results")
        engine.dispose()
    assert response.status_code == 500
    body = response.json()
    assert errors(response) == [(None, "INTERNAL_ERROR")]
    assert len(body["correlation_id"]) == 32
    assert "249566758" not in response.text and "registrar_results" not in response.text
    logged = [json.loads(line) for line in "".join(LOG_SINK.parts).splitlines()
              if body["correlation_id"] in line]
    assert logged and logged[0]["event"] == "request_failed" and logged[0]["route"] == "/v1/results"
