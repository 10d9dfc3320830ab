"""The extract service over HTTP, as a portal and an employer use it: the gate with the extract's
realms, the router, a real ExtractStore on SQLite and PostgreSQL, a real signing identity.

Every response of every test is kept; none may carry a full person number, in its body or its
headers (the PDF shows the masked form only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio.from_thread
import html5lib
import httpx
import pytest
from fastapi import FastAPI

from services.extract.document import check_signature, read_reference
from services.extract.http import PAGE_POLICY, AttemptLimit, extract_realms, extract_router
from services.extract.signing import SigningIdentity, load_or_create
from services.extract.store import ExtractStore
from services.kernel.gate import Gate
from tests.support import LOG_SINK

ALICE = ("BSN", "111222333")
BOB = ("BSN", "123456782")
CAROL = ("ONDERWIJSNUMMER", "101222331")
NUMBERS = [ALICE[1], BOB[1], CAROL[1], "249566758"]
OPERATOR_TOKEN = "rodo_an-operator-token"
PUBLIC = "https://rod.example.nl"
AT = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
SEEN_ELSEWHERE: list[httpx.Response] = []
RESULT_FIELDS = {"result_id", "institution", "sector", "programme_code", "programme_name", "diploma_number",
                 "diploma_date"}


def delivery(n: int, person: tuple[str, str], diploma_date: date = date(2023, 7, 1)) -> dict[str, Any]:
    return {
        "delivery_id": f"d-{n}", "kind": "DELIVERY", "event_id": f"e-{n}", "result_id": f"r-{n}",
        "delivered_at": AT + timedelta(minutes=n), "withdraws": None,
        "person_kind": person[0], "person_number": person[1], "institution": "21XX", "branch": "01",
        "provider": None, "sector": "MBO", "programme_code": "25180", "programme_name": f"Programme <{n}>",
        "big_profession": None, "diploma_number": f"D-{n}", "diploma_date": diploma_date,
        "registered_at": AT - timedelta(days=1),
    }


def withdrawal(n: int, at: datetime) -> dict[str, Any]:
    envelope = dict.fromkeys(("person_kind", "person_number", "institution", "branch", "provider", "sector",
                              "programme_code", "programme_name", "big_profession", "diploma_number",
                              "diploma_date", "registered_at"))
    return {"delivery_id": f"w-{n}", "kind": "WITHDRAWAL", "event_id": f"x-{n}", "result_id": f"r-{n}",
            "delivered_at": at, "withdraws": f"d-{n}", **envelope}


class Client:
    """A synchronous client of an ASGI app in a thread of its own (one event loop for all requests)."""

    def __init__(self, app: FastAPI, address: tuple[str, int] = ("203.0.113.5", 50000)) -> None:
        self.seen: list[httpx.Response] = []
        self._stack = ExitStack()
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())

        async def keep(response: httpx.Response) -> None:
            await response.aread()
            self.seen.append(response)

        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app, client=address),
                                      base_url="http://testserver", event_hooks={"response": [keep]})

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        return self.portal.call(lambda: self.http.request(method, url, **options))

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def close(self) -> None:
        self.portal.call(self.http.aclose)
        self._stack.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    store: ExtractStore
    identity: SigningIdentity
    client: Client
    clock: Clock
    app: FastAPI
    portal: dict[str, str]  # name -> token

    def as_portal(self, name: str = "mijnduo") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.portal[name]}"}

    def post(self, path: str, body: dict[str, Any], name: str) -> httpx.Response:
        # json.dumps escapes a lone surrogate as JSON allows; httpx's own encoder would refuse it
        return self.client.post(path, content=json.dumps(body),
                                headers={**self.as_portal(name), "content-type": "application/json"})

    def lookup(self, person: dict[str, Any], name: str = "mijnduo") -> httpx.Response:
        return self.post("/v1/extracts/lookup", {"person": person}, name)

    def issue(self, person: dict[str, Any], name: str = "mijnduo", **body: Any) -> httpx.Response:
        return self.post("/v1/extracts", {"person": person, **body}, name)

    def verify(self, extract_id: str, code: str) -> httpx.Response:
        return self.client.get(f"/v1/verifications/{extract_id}", params={"code": code})


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> SigningIdentity:
    return load_or_create(tmp_path_factory.mktemp("data"))[0]


@pytest.fixture
def site(db_url: str, identity: SigningIdentity) -> Iterator[Site]:
    store = ExtractStore(db_url)
    store.apply([delivery(1, ALICE, date(2022, 7, 1)), delivery(2, ALICE), delivery(3, ALICE),
                 delivery(4, BOB), delivery(5, CAROL)], {}, [])
    store.apply([withdrawal(3, AT + timedelta(days=1))], {}, [])
    portal = {name: store.add_portal(name) for name in ("mijnduo", "other")}
    clock = Clock()
    app = FastAPI()
    app.add_middleware(Gate, realms=extract_realms(store),
                       other_tokens=[lambda token: "ops" if token == OPERATOR_TOKEN else None])
    app.include_router(extract_router(store, identity, PUBLIC, attempts=AttemptLimit(30, clock=clock)))
    made = Site(store, identity, Client(app), clock, app, portal)
    try:
        yield made
    finally:
        made.client.close()
        store.dispose()
    for response in made.client.seen + SEEN_ELSEWHERE:  # no full person number in any answer
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        for number in NUMBERS:
            assert number.encode() not in response.content, response.request.url
            assert number not in headers, response.request.url


def issued(site: Site, person: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    answer = site.issue(person or {"bsn": ALICE[1]}, **body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_portal_routes_take_a_portal_token_only(site: Site) -> None:
    calls = [("POST", "/v1/extracts/lookup", {"person": {"bsn": ALICE[1]}}),
             ("POST", "/v1/extracts", {"person": {"bsn": ALICE[1]}}),
             ("GET", "/v1/extracts/00000000-0000-4000-8000-000000000000/pdf", None)]
    for method, path, body in calls:
        bare = site.client.request(method, path, json=body)
        assert bare.status_code == 401 and bare.json()["errors"][0]["code"] == "TOKEN_MISSING"
        wrong = site.client.request(method, path, json=body, headers={"Authorization": "Bearer rodp_nope"})
        assert wrong.status_code == 401 and wrong.json()["errors"][0]["code"] == "TOKEN_INVALID"
        operator = site.client.request(method, path, json=body,
                                       headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert operator.status_code == 403 and operator.json()["errors"][0]["code"] == "TOKEN_FORBIDDEN"
    assert site.store.counts().extracts == 0
    beside = site.client.get("/v1/extracts/certificate/pdf")  # under the public prefix: opens nothing
    assert beside.status_code == 404 and beside.json()["errors"][0]["code"] == "EXTRACT_NOT_FOUND"
    chain = site.client.get("/v1/extracts/certificate")  # public
    assert chain.status_code == 200 and chain.content == site.identity.chain_pem
    assert chain.headers["content-type"].startswith("application/x-pem-file")


def test_lookup_shows_the_persons_standing_results_only(site: Site) -> None:
    answer = site.lookup({"bsn": "111 22 2333"})  # written as people do
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    results = answer.json()["results"]
    assert [r["result_id"] for r in results] == ["r-1", "r-2"]  # r-3 withdrawn, r-4 Bob's
    assert all(set(r) == RESULT_FIELDS for r in results)
    assert results[0] == {"result_id": "r-1", "institution": "21XX", "sector": "MBO",
                          "programme_code": "25180", "programme_name": "Programme <1>",
                          "diploma_number": "D-1", "diploma_date": "2022-07-01"}
    assert [r["result_id"] for r in site.lookup({"onderwijsnummer": CAROL[1]}).json()["results"]] == ["r-5"]
    assert site.lookup({"bsn": "249566758"}).json() == {"results": []}


BAD_PEOPLE = [
    ({"bsn": "111222334"}, "BSN_INVALID", "person.bsn"),
    ({"bsn": CAROL[1]}, "BSN_IS_ONDERWIJSNUMMER", "person.bsn"),
    ({"onderwijsnummer": BOB[1]}, "ONDERWIJSNUMMER_IS_BSN", "person.onderwijsnummer"),
    ({}, "PERSON_NUMBER_MISSING", "person"),
    ({"bsn": ALICE[1], "onderwijsnummer": CAROL[1]}, "PERSON_NUMBER_AMBIGUOUS", "person"),
    ({"bsn": int(ALICE[1])}, "FIELD_TYPE_INVALID", "person.bsn"),
    ({"bsn": ALICE[1] + "\ud800"}, "TEXT_NOT_UNICODE", "person.bsn"),
    ({ALICE[1]: "x"}, "FIELD_UNKNOWN", "person.*"),
]


def test_a_bad_person_is_named_by_field_and_code(site: Site) -> None:
    for person, code, where in BAD_PEOPLE:
        for answer in (site.lookup(person), site.issue(person)):
            assert answer.status_code == 422 and answer.headers["cache-control"] == "no-store"
            assert [(e["field"], e["code"]) for e in answer.json()["errors"]] == [(where, code)]
    assert site.store.counts().extracts == 0


def test_a_body_that_is_not_json_is_a_400(site: Site) -> None:
    answer = site.client.post("/v1/extracts/lookup", content=b"{bsn: 111222333", headers=site.as_portal())
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "BODY_MALFORMED"
    answer = site.issue({"bsn": ALICE[1]}, language="de")
    assert answer.status_code == 422 and answer.json()["errors"][0]["code"] == "LANGUAGE_INVALID"
    answer = site.issue({"bsn": ALICE[1]}, result_ids=["r-1", "r-\udc00"])
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "result_ids", "code": "TEXT_NOT_UNICODE",
                                        "message": answer.json()["errors"][0]["message"]}]
    answer = site.issue({"bsn": ALICE[1]}, result_ids="r-1")
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "result_ids"
    assert site.store.counts().extracts == 0


def test_an_issued_extract_is_signed_and_downloads_for_its_portal_only(site: Site) -> None:
    answer = site.issue({"bsn": ALICE[1]}, language="en")
    assert answer.status_code == 201 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"extract_id", "verification_code", "issued_at", "results", "pdf"}
    assert [r["result_id"] for r in body["results"]] == ["r-1", "r-2"]
    assert all(set(r) == RESULT_FIELDS for r in body["results"])
    assert body["pdf"] == f"/v1/extracts/{body['extract_id']}/pdf"
    assert datetime.fromisoformat(body["issued_at"]).tzinfo is not None
    pdf = site.client.get(body["pdf"], headers=site.as_portal())
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["cache-control"] == "no-store"
    assert pdf.headers["content-disposition"] == f'attachment; filename="uittreksel-{body["extract_id"]}.pdf"'
    assert pdf.content.startswith(b"%PDF")
    assert check_signature(pdf.content, site.identity.chain_pem).problem is None
    assert read_reference(pdf.content) == (body["extract_id"], body["verification_code"])
    for other in (site.client.get(body["pdf"], headers=site.as_portal("other")),
                  site.client.get("/v1/extracts/not-an-id/pdf", headers=site.as_portal())):
        assert other.status_code == 404 and other.json()["errors"][0]["code"] == "EXTRACT_NOT_FOUND"
    chosen = issued(site, result_ids=["r-2"])
    assert [r["result_id"] for r in chosen["results"]] == ["r-2"]
    assert site.store.counts().extracts == 2


def test_a_result_that_is_not_the_persons_standing_one_issues_nothing(site: Site) -> None:
    before = site.store.counts()
    for person, ids in [({"bsn": ALICE[1]}, ["r-1", "r-4"]),  # r-4 is Bob's
                        ({"bsn": ALICE[1]}, ["r-3"]),  # withdrawn
                        ({"bsn": ALICE[1]}, ["no such"]), ({"bsn": ALICE[1]}, []),
                        ({"bsn": "249566758"}, None)]:  # nothing stands
        answer = site.issue(person, **({"result_ids": ids} if ids is not None else {}))
        assert answer.status_code == 404, answer.text
        assert answer.json()["errors"][0]["code"] == "RESULT_NOT_STANDING"
    assert site.store.counts() == before


def test_verification_follows_a_withdrawal_and_gives_no_oracle(site: Site) -> None:
    extract = issued(site)
    valid = site.verify(extract["extract_id"], extract["verification_code"])
    assert valid.status_code == 200, valid.text
    body = valid.json()
    assert body["status"] == "valid" and body["withdrawn_at"] is None
    assert body["issued_at"] == extract["issued_at"]
    assert body["results"] == [
        {"programme_name": "Programme <1>", "institution": "21XX", "diploma_date": "2022-07-01",
         "status": "standing", "withdrawn_at": None},
        {"programme_name": "Programme <2>", "institution": "21XX", "diploma_date": "2023-07-01",
         "status": "standing", "withdrawn_at": None},
    ]
    typed = extract["verification_code"].replace("-", "").lower()  # as people type it
    assert site.verify(extract["extract_id"].upper(), typed).json() == body

    site.store.apply([withdrawal(2, AT + timedelta(days=30))], {}, [])
    gone = site.verify(extract["extract_id"], extract["verification_code"]).json()
    assert gone["status"] == "withdrawn"
    assert datetime.fromisoformat(gone["withdrawn_at"]) == AT + timedelta(days=30)
    assert [r["status"] for r in gone["results"]] == ["standing", "withdrawn"]
    assert datetime.fromisoformat(gone["results"][1]["withdrawn_at"]) == AT + timedelta(days=30)

    wrong = site.verify(extract["extract_id"], "0000-0000-0000-0000")
    unknown = site.verify("00000000-0000-4000-8000-000000000000", extract["verification_code"])
    odd = site.verify("not-an-id", "")
    assert wrong.status_code == unknown.status_code == odd.status_code == 404
    assert wrong.content == unknown.content == odd.content
    assert wrong.json()["errors"][0]["code"] == "VERIFICATION_NOT_FOUND"
    logged = "".join(LOG_SINK.parts)
    assert f'"extract_id": "{extract["extract_id"]}"' in logged  # ids are never mangled by the mask
    assert '"status": "withdrawn"' in logged
    assert extract["verification_code"] not in logged and typed not in logged


def test_the_31st_attempt_in_a_minute_is_refused(site: Site) -> None:
    extract = issued(site)
    for _ in range(29):
        assert site.verify(extract["extract_id"], "wrong").status_code == 404
    assert site.client.get("/verify", params={"id": extract["extract_id"], "code": "x"}).status_code == 404
    refused = site.verify(extract["extract_id"], extract["verification_code"])
    assert refused.status_code == 429 and refused.json()["errors"][0]["code"] == "VERIFICATION_THROTTLED"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    asked = {"id": extract["extract_id"], "code": extract["verification_code"]}
    page = site.client.get("/verify", params=asked)
    assert page.status_code == 429 and "retry-after" in page.headers
    elsewhere = Client(site.app, ("2001:db8::7", 4000))  # another client is not held up
    try:
        assert elsewhere.get(f"/v1/verifications/{extract['extract_id']}",
                             params={"code": extract["verification_code"]}).status_code == 200
    finally:
        elsewhere.close()
        SEEN_ELSEWHERE.extend(elsewhere.seen)
    site.clock.now += 61
    assert site.verify(extract["extract_id"], extract["verification_code"]).status_code == 200


def test_the_attempt_limit_forgets_idle_clients() -> None:
    clock = Clock()
    limit = AttemptLimit(per_minute=2, max_clients=100, clock=clock)
    for n in range(50):
        assert limit.check(f"198.51.100.{n}") is None
    clock.now += 61
    assert limit.check("203.0.113.1") is None and len(limit) == 1
    for n in range(500):
        limit.check(f"10.0.{n // 250}.{n % 250}")
    assert len(limit) <= 101


def parsed(html: str) -> Any:
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)


def test_the_verify_page_answers_in_dutch_and_english(site: Site) -> None:
    empty = site.client.get("/verify")
    assert empty.status_code == 200 and empty.headers["content-security-policy"] == PAGE_POLICY
    form = parsed(empty.text)
    assert form.get("lang") == "nl"
    labels = {label.get("for"): label.text for label in form.iter("label")}
    assert labels == {"id": "Uittrekselnummer", "code": "Controlecode"}
    assert form.find(".//form").get("method") == "get"
    assert not form.findall(".//script") and "http://" not in empty.text and "https://" not in empty.text
    style = site.client.get("/verify/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert [link.get("href") for link in form.iter("link")] == ["/verify/style.css"]

    extract = issued(site)
    asked = {"id": extract["extract_id"], "code": extract["verification_code"]}
    dutch = site.client.get("/verify", params=asked)
    assert dutch.status_code == 200 and "Dit uittreksel is geldig." in dutch.text
    assert "Programme &lt;1&gt;" in dutch.text and "1 juli 2022" in dutch.text
    assert "Programme <1>" not in dutch.text  # escaped
    parsed(dutch.text)
    english = site.client.get("/verify", params={**asked, "lang": "en"})
    assert "This extract is valid." in english.text and "1 July 2022" in english.text
    assert parsed(english.text).get("lang") == "en"
    assert {label.text for label in parsed(english.text).iter("label")} == {"Extract number",
                                                                             "Verification code"}
    assert "geldig" not in english.text

    site.store.apply([withdrawal(1, datetime(2024, 6, 3, 12, 15, tzinfo=UTC))], {}, [])
    withdrawn = site.client.get("/verify", params=asked)
    assert withdrawn.status_code == 200 and "Dit uittreksel is ingetrokken" in withdrawn.text
    assert "sinds 3 juni 2024, 14:15" in withdrawn.text and "is geldig" not in withdrawn.text
    assert withdrawn.headers["content-security-policy"] == PAGE_POLICY
    parsed(withdrawn.text)
    english = site.client.get("/verify", params={**asked, "lang": "en"})
    assert "This extract was withdrawn on 3 June 2024, 14:15" in english.text

    unknown = site.client.get("/verify", params={"id": "<script>alert(1)</script>", "code": "x"})
    assert unknown.status_code == 404 and "geen uittreksel gevonden" in unknown.text
    assert "<script>" not in unknown.text and "&lt;script&gt;" in unknown.text
    parsed(unknown.text)
    half = site.client.get("/verify", params={"id": extract["extract_id"]})
    assert "Vul het uittrekselnummer en de controlecode allebei in." in half.text


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_the_pdf_shows_the_public_verify_address_that_answers(site: Site, tmp_path: Path) -> None:
    extract = issued(site)
    path = tmp_path / "extract.pdf"
    path.write_bytes(site.client.get(extract["pdf"], headers=site.as_portal()).content)
    text = subprocess.run(["pdftotext", "-raw", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout
    query = urlencode({"id": extract["extract_id"], "code": extract["verification_code"]})
    assert f"{PUBLIC}/verify?{query}" in "".join(text.split())
    assert f"{PUBLIC}/verify" in text and "******333" in text
    assert "Dit uittreksel is geldig." in site.client.get(f"/verify?{query}").text
