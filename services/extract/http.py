"""The extract service over HTTP: the portal's lookup, issue and download, and the public checks.

    router = extract_router(store, identity, public_url="https://rod.example.nl")
    realms = extract_realms(store)  # for the gate: portal tokens on /v1/extracts, the rest public

Portal routes (`/v1/extracts...`) run after the gate has resolved the portal token
(`request.state.portal`). The certificate, `GET /v1/verifications/{id}` and the `/verify` page
take no token; the last two share one limit of attempts per client address. A person number
arrives only in a request body and leaves only in the lookup's and the issue's own person's
answer, never in an error, a log line or an exception; their errors carry the field and code.
Database work runs on the blocking pool (`in_thread`), signing on a pool of its own, so a burst
of extracts never delays a verification.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from jinja2 import Environment, FileSystemLoader
from pydantic import Field

from services.extract import metrics
from services.extract.document import (
    AMSTERDAM,
    WORDS,
    ExtractDocument,
    ExtractResult,
    long_date,
    render,
    sign,
)
from services.extract.signing import SigningIdentity
from services.extract.store import ExtractStore, IssuedDraft, StandingResult, Verification
from services.kernel.blocking import in_thread
from services.kernel.codes import Problem, problem
from services.kernel.gate import Realm, error_body
from services.kernel.identifiers import is_valid_bsn, is_valid_onderwijsnummer, normalize_person_number
from services.kernel.logging import get_logger
from services.kernel.text import NOT_UNICODE, JsonBody
from services.kernel.throttle import AttemptLimit, client_address, retry_after

log = get_logger("extract.http")

TEMPLATES = Path(__file__).resolve().parent / "templates"
NO_STORE = {"cache-control": "no-store"}
PAGE_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
               "base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"content-security-policy": PAGE_POLICY, "x-content-type-options": "nosniff",
                "x-frame-options": "DENY", "referrer-policy": "no-referrer", **NO_STORE}
EXTRACT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RESULT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CODE_MAX = 64  # characters of a typed verification code (16 plus dashes and spaces)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
_FIELD_CODES = {"language": "LANGUAGE_INVALID"}


# --- request bodies ---------------------------------------------------------------------------


class PersonIn(JsonBody):
    bsn: str | None = Field(None, description="Burgerservicenummer, 9 digits (8 are padded).")
    onderwijsnummer: str | None = Field(None, description="DUO's onderwijsnummer; give one of the two.")


class LookupIn(JsonBody):
    person: PersonIn


class IssueIn(JsonBody):
    person: PersonIn
    result_ids: list[str] | None = Field(
        None, max_length=1000, description="Results from the lookup; omitted: all that stand.")
    language: Literal["nl", "en"] = Field("nl", description="The extract's language.")


# --- answers ----------------------------------------------------------------------------------


def _refused(status: int, code: str, field: str | None = None, headers: dict[str, str] | None = None
             ) -> JSONResponse:
    return JSONResponse(error_body([problem(code, field)]), status_code=status,
                        headers={**NO_STORE, **(headers or {})})


def _validation_problem(error: dict[str, Any]) -> Problem:
    """A body's validation error as field and code; a client's key shows only if it looks like one."""
    names = [part for part in error.get("loc", ()) if part != "body"]
    field = ".".join(str(n) if isinstance(n, int) or _NAME.fullmatch(str(n)) else "*" for n in names)
    kind = error.get("type", "")
    if kind in NOT_UNICODE:
        return problem("TEXT_NOT_UNICODE", field or None)
    if kind == "json_invalid" or not field:
        return problem("BODY_MALFORMED")
    code = {"missing": "FIELD_REQUIRED", "extra_forbidden": "FIELD_UNKNOWN"}.get(kind, "FIELD_TYPE_INVALID")
    return problem(_FIELD_CODES.get(field, code), field)


class _ProblemRoute(APIRoute):
    """Body validation answers in the register's error body whichever app includes the router, and
    never echoes the input (it may hold a person number)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                problems = [_validation_problem(e) for e in exc.errors()]
                malformed = [p for p in problems if p.code == "BODY_MALFORMED"]
                return JSONResponse(error_body(malformed[:1] or problems), headers=NO_STORE,
                                    status_code=400 if malformed else 422)

        return handle


def person_of(person: PersonIn) -> tuple[str, str] | Problem:
    """("BSN" | "ONDERWIJSNUMMER", the normalised number), or the problem with it (no number in it)."""
    if person.bsn is None and person.onderwijsnummer is None:
        return problem("PERSON_NUMBER_MISSING", "person")
    if person.bsn is not None and person.onderwijsnummer is not None:
        return problem("PERSON_NUMBER_AMBIGUOUS", "person")
    if person.bsn is not None:
        number = normalize_person_number(person.bsn)
        if is_valid_bsn(number):
            return "BSN", number
        return problem("BSN_IS_ONDERWIJSNUMMER" if is_valid_onderwijsnummer(number) else "BSN_INVALID",
                       "person.bsn")
    number = normalize_person_number(person.onderwijsnummer or "")
    if is_valid_onderwijsnummer(number):
        return "ONDERWIJSNUMMER", number
    return problem("ONDERWIJSNUMMER_IS_BSN" if is_valid_bsn(number) else "ONDERWIJSNUMMER_INVALID",
                   "person.onderwijsnummer")


def _result_view(r: StandingResult) -> dict[str, str]:
    return {"result_id": r.result_id, "institution": r.institution, "sector": r.sector,
            "programme_code": r.programme_code, "programme_name": r.programme_name,
            "diploma_number": r.diploma_number, "diploma_date": r.diploma_date.isoformat()}


def _moment(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def verification_view(found: Verification) -> dict[str, Any]:
    """The public answer about one extract: what it shows and whether it stands; no person number."""
    return {
        "status": found.status, "issued_at": _moment(found.issued_at),
        "withdrawn_at": _moment(found.withdrawn_at),
        "results": [{"programme_name": r.programme_name, "institution": r.institution,
                     "diploma_date": r.diploma_date.isoformat(), "status": r.status,
                     "withdrawn_at": _moment(r.withdrawn_at)} for r in found.results],
    }


def signed_document(identity: SigningIdentity, base_url: str, draft: IssuedDraft) -> bytes:
    """The extract's signed PDF; the store calls it before it writes anything."""
    doc = ExtractDocument(
        extract_id=draft.extract_id, verification_code=draft.code, issued_at=draft.issued_at,
        person_kind=draft.person_kind,  # type: ignore[arg-type]  # the store holds BSN | ONDERWIJSNUMMER
        person_number_masked=draft.person_number_masked,
        language=draft.language,  # type: ignore[arg-type]  # checked at the door
        results=[ExtractResult(r.result_id, r.institution, r.sector, r.programme_code, r.programme_name,
                               r.diploma_number, r.diploma_date) for r in draft.results],
        verify_url=f"{base_url}/verify?{urlencode({'id': draft.extract_id, 'code': draft.code})}",
    )
    return sign(render(doc), identity, reason=WORDS[draft.language]["title"])


# --- the realms and the router ----------------------------------------------------------------


def extract_realms(store: ExtractStore) -> list[Realm]:
    """The gate's realms: portal tokens on /v1/extracts, none for the certificate and verifications."""
    return [
        Realm("/v1/extracts/certificate", "public", None),
        Realm("/v1/verifications/", "public", None),
        Realm("/v1/extracts", "portal", store.portal_for, store.cached_portal),
    ]


_BEARER = HTTPBearer(auto_error=False, description="The portal's token from `rod portal add NAME`.")


def _portal(request: Request, _credentials: Annotated[Any, Security(_BEARER)]) -> str:
    """The portal the request's token acts for (the gate has checked the token); "" on a path the
    gate let through without one (`/v1/extracts/certificate/...`), which then finds nothing."""
    return getattr(request.state, "portal", "")


Portal = Annotated[str, Depends(_portal)]


def extract_router(
    store: ExtractStore, identity: SigningIdentity, public_url: Callable[[Request], str] | str,
    attempts: AttemptLimit | None = None,
) -> APIRouter:
    """The extract routes over `store`, signing with `identity`; `public_url` is the address the
    verify page is reached at from outside (a string, or worked out from the request)."""
    router = APIRouter(tags=["extracts"], route_class=_ProblemRoute)
    limit = attempts if attempts is not None else AttemptLimit()
    page = VerifyPage()

    def base_of(request: Request) -> str:
        return (public_url(request) if callable(public_url) else public_url).rstrip("/")

    async def verify(extract_id: str, code: str) -> Verification | None:
        """What the store says about this id and code; malformed ones are not asked about."""
        extract_id = extract_id.strip().lower()
        well_formed = EXTRACT_ID.fullmatch(extract_id) is not None
        found = None
        if well_formed and 0 < len(code) <= CODE_MAX and code.isprintable():
            found = await in_thread("extract", store.verification, extract_id, code)
        outcome = found.status if found else "not_found"
        log.info("extract_verified", extract_id=extract_id if well_formed else None, status=outcome)
        metrics.VERIFICATIONS.labels(outcome=outcome).inc()
        return found

    @router.post("/v1/extracts/lookup", responses={400: {}, 401: {}, 403: {}, 422: {}})
    async def lookup(body: LookupIn, portal: Portal) -> JSONResponse:
        """The person's results that stand now (withdrawn ones are gone)."""
        person = person_of(body.person)
        if isinstance(person, Problem):
            return JSONResponse(error_body([person]), status_code=422, headers=NO_STORE)
        found = await in_thread("extract", store.standing, *person)
        return JSONResponse({"results": [_result_view(r) for r in found]}, headers=NO_STORE)

    @router.post("/v1/extracts", status_code=201, responses={400: {}, 401: {}, 403: {}, 404: {}, 422: {}})
    async def issue(body: IssueIn, request: Request, portal: Portal) -> JSONResponse:
        """Issue a signed extract of the chosen standing results (all when `result_ids` is omitted)."""
        person = person_of(body.person)
        if isinstance(person, Problem):
            return JSONResponse(error_body([person]), status_code=422, headers=NO_STORE)
        ids = body.result_ids
        field = "person" if ids is None else "result_ids"
        if ids is not None and not all(RESULT_ID.fullmatch(i) for i in ids):
            return _refused(404, "RESULT_NOT_STANDING", field)  # no result has such an id
        make = partial(signed_document, identity, base_of(request))
        issued = await in_thread("extract-sign", store.issue, portal, *person, ids, body.language, make)
        if issued is None:
            return _refused(404, "RESULT_NOT_STANDING", field)
        log.info("extract_issued", extract_id=issued.extract_id, results=len(issued.results), portal=portal)
        metrics.ISSUED.inc()
        pdf = f"/v1/extracts/{issued.extract_id}/pdf"
        return JSONResponse(
            {"extract_id": issued.extract_id, "verification_code": issued.verification_code,
             "issued_at": _moment(issued.issued_at), "results": [_result_view(r) for r in issued.results],
             "pdf": pdf},
            status_code=201, headers={**NO_STORE, "location": pdf},
        )

    @router.get("/v1/extracts/certificate", response_class=Response,
                responses={200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}}}})
    async def certificate() -> Response:
        """The certificate chain (PEM) that signs extracts: signing certificate first, then its CAs."""
        return Response(identity.chain_pem, media_type="application/x-pem-file")

    @router.get("/v1/extracts/{extract_id}/pdf", response_class=Response, responses={
        200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}},
        401: {}, 403: {}, 404: {}})
    async def pdf(extract_id: str, portal: Portal) -> Response:
        """The signed extract, to the portal that issued it."""
        found = None
        if EXTRACT_ID.fullmatch(extract_id):
            found = await in_thread("extract", store.pdf, extract_id, portal)
        if found is None:
            return _refused(404, "EXTRACT_NOT_FOUND", "extract_id")
        disposition = f'attachment; filename="uittreksel-{extract_id}.pdf"'
        return Response(found, media_type="application/pdf",
                        headers={**NO_STORE, "content-disposition": disposition})

    @router.get("/v1/verifications/{extract_id}", responses={404: {}, 429: {}})
    async def verification(extract_id: str, request: Request) -> JSONResponse:
        """Whether an extract stands: `code` is its verification code. A wrong code and an unknown id
        answer the same 404; more than 30 attempts a minute from one client get 429."""
        wait = limit.check(client_address(request.scope))
        if wait is not None:
            metrics.VERIFICATIONS.labels(outcome="throttled").inc()
            return _refused(429, "VERIFICATION_THROTTLED", headers={"retry-after": retry_after(wait)})
        found = await verify(extract_id, request.query_params.get("code", ""))
        if found is None:
            return _refused(404, "VERIFICATION_NOT_FOUND")
        return JSONResponse(verification_view(found), headers=NO_STORE)

    @router.get("/verify", include_in_schema=False)
    async def verify_page(request: Request) -> HTMLResponse:
        query = request.query_params
        lang = query.get("lang", "nl") if query.get("lang") in WORDS else "nl"
        extract_id, code = query.get("id", "").strip()[:CODE_MAX], query.get("code", "").strip()[:CODE_MAX]
        if not (extract_id or code):
            return page.render(lang, extract_id, code)
        if not (extract_id and code):
            return page.render(lang, extract_id, code, "incomplete", status=422)
        wait = limit.check(client_address(request.scope))
        if wait is not None:
            metrics.VERIFICATIONS.labels(outcome="throttled").inc()
            return page.render(lang, extract_id, code, "throttled", status=429, retry_after=retry_after(wait))
        found = await verify(extract_id, code)
        if found is None:
            return page.render(lang, extract_id, code, "not_found", status=404)
        return page.render(lang, extract_id, code, found.status, found)

    @router.get("/verify/style.css", include_in_schema=False)
    async def verify_style() -> Response:
        headers = {"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"}
        return Response(page.css, media_type="text/css", headers=headers)

    return router


# --- the verify page --------------------------------------------------------------------------

PAGE_WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Uittreksel controleren", "switch": "English", "register": WORDS["nl"]["register"],
        "valid": "Dit uittreksel is geldig.",
        "valid_more": "Alle diploma's erop staan nog zo in het register.",
        "withdrawn": "Dit uittreksel is ingetrokken: sinds {when} staat er minstens één diploma op dat niet "
                     "meer in het register staat.",
        "not_found": "Er is geen uittreksel gevonden bij dit uittrekselnummer en deze controlecode. "
                     "Controleer of u beide goed hebt overgenomen.",
        "incomplete": "Vul het uittrekselnummer en de controlecode allebei in.",
        "throttled": "U hebt te veel pogingen gedaan. Probeer het over een minuut opnieuw.",
        "extract": "Het uittreksel", "issued": "Afgegeven op", "check": "Een uittreksel controleren",
        "intro": "Hebt u een uittreksel uit het Register Onderwijsdeelnemers gekregen? Vul het "
                 "uittrekselnummer en de controlecode in die op het uittreksel staan. U ziet dan of het "
                 "echt is en of de diploma's erop nog in het register staan.",
        "extract_id": "Uittrekselnummer", "code": "Controlecode", "submit": "Controleren",
        "programme": "Opleiding", "institution": "Onderwijsinstelling", "diploma_date": "Diplomadatum",
        "status": "Status", "standing": "Geregistreerd", "gone": "Ingetrokken op {when}",
        "signature": "Het uittreksel is ook digitaal ondertekend; een PDF-lezer controleert die handtekening "
                     "met",
        "certificate": "het certificaat van het register.",
    },
    "en": {
        "title": "Check an extract", "switch": "Nederlands", "register": WORDS["en"]["register"],
        "valid": "This extract is valid.",
        "valid_more": "Every diploma on it still stands in the register as shown.",
        "withdrawn": "This extract was withdrawn on {when}: at least one diploma on it is no longer in "
                     "the register.",
        "not_found": "No extract was found for this extract number and verification code. Check that you "
                     "copied both correctly.",
        "incomplete": "Fill in both the extract number and the verification code.",
        "throttled": "Too many attempts. Please try again in a minute.",
        "extract": "The extract", "issued": "Issued on", "check": "Check an extract",
        "intro": "Were you given an extract from the Register of Education Participants? Enter the extract "
                 "number and the verification code printed on it to see whether it is genuine and whether "
                 "its diplomas are still in the register.",
        "extract_id": "Extract number", "code": "Verification code", "submit": "Check",
        "programme": "Programme", "institution": "Institution", "diploma_date": "Diploma date",
        "status": "Status", "standing": "Registered", "gone": "Withdrawn on {when}",
        "signature": "The extract is also digitally signed; a PDF reader checks that signature with",
        "certificate": "the register's certificate.",
    },
}


def _when(moment: datetime, lang: str) -> str:
    local = moment.astimezone(AMSTERDAM)
    return f"{long_date(local.date(), lang)}, {local:%H:%M} ({WORDS[lang]['local_time']})"


class VerifyPage:
    """The /verify page: one template, Dutch or English, autoescaped, no script, its own stylesheet."""

    def __init__(self) -> None:
        self.templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
        self.css = (TEMPLATES / "verify.css").read_text()

    def render(
        self, lang: str, extract_id: str, code: str, outcome: str | None = None,
        found: Verification | None = None, status: int = 200, retry_after: str | None = None,
    ) -> HTMLResponse:
        t = PAGE_WORDS[lang]
        other = "en" if lang == "nl" else "nl"
        asked = {"id": extract_id, "code": code} if extract_id or code else {}
        values: dict[str, Any] = {
            "lang": lang, "other": other, "t": t, "outcome": outcome, "verification": found,
            "extract_id": extract_id, "code": code,
            "switch_href": "/verify?" + urlencode({**asked, "lang": other}),
        }
        if found is not None:
            values["issued_at"] = _when(found.issued_at, lang)
            if found.withdrawn_at is not None:
                values["withdrawn_text"] = t["withdrawn"].format(when=_when(found.withdrawn_at, lang))
            values["results"] = [
                {"programme_name": r.programme_name, "institution": r.institution,
                 "diploma_date": long_date(r.diploma_date, lang), "status": r.status,
                 "status_text": t["gone"].format(when=_when(r.withdrawn_at, lang)) if r.withdrawn_at
                 else t["standing"]}
                for r in found.results
            ]
        html = self.templates.get_template("verify.html").render(**values)
        headers = {**PAGE_HEADERS, **({"retry-after": retry_after} if retry_after else {})}
        return HTMLResponse(html, status_code=status, headers=headers)
