"""Finding 2 of issue 13: text that is not Unicode (a lone surrogate, or bytes that are not
UTF-8) is refused with TEXT_NOT_UNICODE and its field wherever it enters, never a 500: JSON
bodies, bulk CSV and XML files (the record only: the good ones are stored), the console's
forms and `rod` arguments. Against a real running API (uvicorn, database, broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from services.distributor.feed import FeedStore
from services.distributor.ledger import Ledger
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.support import LOG_SINK, settings_env

# What an attacker sends: the escape as JSON text (json.dumps writes "\ud800" just so).
DELETION = '{"reason": "OTHER", "explanation": "\\ud800"}'
NOT_UTF8 = b"\xed\xa0\x80"  # a surrogate spelled in UTF-8 bytes: not UTF-8 at all
BAD = "TEXT_NOT_UNICODE"
CSV_HEADER = b"bsn,instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer,diplomadatum\n"


def _post(client: httpx.Client, path: str, text: str, **params: object) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return client.post(path, content=text.encode(), params=params, headers=headers)


def _refused(answer: httpx.Response) -> list[tuple[str | None, str]]:
    assert answer.status_code == 422, (answer.status_code, answer.text)
    return [(e["field"], e["code"]) for e in answer.json()["errors"]]


def _csv_row(bsn: str, diploma: bytes) -> bytes:
    return bsn.encode() + b",25BE,25BE01,HO,56551," + diploma + b",2026-07-01\n"


def _xml_record(bsn: str, diploma: bytes) -> bytes:
    return (b"<resultaat><bsn>" + bsn.encode() + b"</bsn><vestigingscode>25BE01</vestigingscode>"
            b"<sector>HO</sector><opleidingscode>56551</opleidingscode><diplomavolgnummer>" + diploma
            + b"</diplomavolgnummer><diplomadatum>2026-07-01</diplomadatum></resultaat>\n")


def _upload(api: RunningApi, content_type: str, body: bytes) -> list[tuple[int, str, list[str]]]:
    """Upload a bulk file; (line, outcome, codes) per record from its feedback."""
    with api.client() as client:
        answer = client.post("/v1/batches", content=body, headers={"content-type": content_type})
        assert answer.status_code == 201, answer.text
        feedback = client.get(answer.json()["feedback"]).json()["records"]
    return [(r["line"], r["outcome"], r["codes"]) for r in feedback]


def _rod(env: dict[str, str], *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """`rod` with raw argument bytes, as a shell passes them."""
    rod = Path(sys.executable).with_name("rod")
    proc = subprocess.run([str(rod), *args], env=env, capture_output=True, timeout=120)
    LOG_SINK.write((proc.stdout + proc.stderr).decode(errors="replace"))
    return proc


def test_a_lone_surrogate_is_a_422_on_every_entry_point(settings) -> None:  # type: ignore[no-untyped-def]
    with running_api(settings) as api, api.client() as client:
        result_id = client.post("/v1/results", json=registration()).json()["result_id"]
        before = api.events()

        # JSON: the deletion (dry run and real), the registration, nested and top-level fields
        path = f"/v1/results/{result_id}/deletions"
        assert _refused(_post(client, path, DELETION, dry_run="true")) == [("explanation", BAD)]
        assert _refused(_post(client, path, DELETION)) == [("explanation", BAD)]
        for body, field in ((registration(diploma_number="A-\ud800"), "diploma_number"),
                            (registration(person={"bsn": "\udc00"}), "person.bsn")):
            assert _refused(_post(client, "/v1/results", json.dumps(body))) == [(field, BAD)]
        for body, field in (({**registration(), "\udc00": "x"}, None),  # a key: its object is named
                            (registration(person={"bsn": "111222333", "\udc00": "x"}), "person")):
            assert _refused(_post(client, "/v1/results", json.dumps(body))) == [(field, BAD)]
        assert api.events() == before

        # bulk files: only the record with the broken text is refused, the others are stored
        csv = CSV_HEADER + _csv_row("123456782", b"U-1") + _csv_row("249566758", b"U-" + NOT_UTF8)
        csv += _csv_row("319072356", b"U-3")
        assert _upload(api, "text/csv", csv) == [
            (2, "accepted", []), (3, "rejected", [BAD]), (4, "accepted", [])]
        xml = b'<?xml version="1.0" encoding="UTF-8"?>\n<aanlevering instellingscode="25BE">\n'
        xml += _xml_record("123456782", b"X-1") + _xml_record("249566758", b"X-&#xD800;")
        xml += _xml_record("319072356", b"X-" + NOT_UTF8) + _xml_record("319072356", b"X-4")
        xml += b"</aanlevering>\n"
        assert _upload(api, "application/xml", xml) == [
            (3, "accepted", []), (4, "rejected", [BAD]), (5, "rejected", [BAD]),
            (6, "accepted", [])]
        assert api.events() == before + 4

        # the extract portal and a consumer's feed
        portal = api.api.extract.store.add_portal("mijnduo")
        lookup = '{"person": {"bsn": "\\ud800"}}'
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {portal}"}) as mijnduo:
            assert _refused(_post(mijnduo, "/v1/extracts/lookup", lookup)) == [("person.bsn", BAD)]
        ledger = Ledger(settings.database_urls["distributor"])
        consumer = FeedStore(ledger).add_consumer("cibg", "cibg-big", {"cibg-big"})
        ledger.dispose()
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {consumer}"}) as cibg:
            answer = _post(cibg, "/v1/feeds/cibg-big/acknowledgements", '{"cursor": "\\udfff"}')
            assert _refused(answer) == [("cursor", BAD)]

        # the console's reason form: percent-escaped and raw bytes that are not UTF-8
        operations = OperationsStore(settings.database_urls["operations"])
        operator = add_operator(operations, "alice", "test")
        operations.dispose()
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {operator}"}) as ops:
            for form in (b"reason=%ED%A0%80", b"reason=maintenance+" + NOT_UTF8):
                answer = ops.post("/ops/subscriptions/cibg-big/pause", content=form,
                                  headers={"content-type": "application/x-www-form-urlencoded"})
                assert answer.status_code == 422 and BAD in answer.text
                assert "form field reason" in answer.text

        # a valid pair (an emoji as JSON escapes) is text and goes through
        answer = _post(client, path, '{"reason": "OTHER", "explanation": "fraude \\ud83d\\ude00"}')
        assert answer.status_code == 201, answer.text
        assert answer.json()["event"]["deletion"]["explanation"] == "fraude \U0001f600"

    # `rod`: an argument that is not UTF-8 stops before any command runs (nothing recorded)
    after = _rod(settings_env(settings), "delete", result_id, "--reason", "OTHER", "--explanation", NOT_UTF8)
    assert after.returncode == 2 and b"TEXT_NOT_UNICODE: argument 6" in after.stderr, after.stderr[-2000:]
    assert b"Traceback" not in after.stderr
