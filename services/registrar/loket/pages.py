"""What every Loket page shares: the stores and templates (`Loket`), the page's language and
session (`Page`), the words of a refused login, and the API's problems placed at the form's fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.kernel.codec import Codec
from services.kernel.identifiers import mask_person_number
from services.kernel.throttle import FailedLogins, client_address, retry_after
from services.kernel.web import Refused, page_headers, page_policy, set_private_cookie
from services.registrar.api import ApiError, event_view, owned_result
from services.registrar.batches import BatchStore
from services.registrar.commands import Registrar
from services.registrar.impact import ImpactStore
from services.registrar.loket import texts
from services.registrar.loket.sessions import Session, SessionBook
from services.registrar.tokens import TokenBook
from services.registrar.writer import RegistrationWriter

TEMPLATES = Path(__file__).resolve().parent / "templates"
COOKIE = "rod_loket_session"
LANG_COOKIE = "rod_loket_lang"
FORM_LIMIT = 16 * 1024
PAGE_SIZE = 50  # rows of a feedback or results page
FIELDS = ("bsn", "onderwijsnummer", "vestigingscode", "onderwijsaanbieder", "sector", "opleidingscode",
          "diplomavolgnummer", "diplomadatum")
# the API's problem fields -> the form's (bulk file column) names
FORM_FIELD = {"person.bsn": "bsn", "person.onderwijsnummer": "onderwijsnummer", "person": "bsn",
              "bsn": "bsn", "onderwijsnummer": "onderwijsnummer", "branch": "vestigingscode",
              "provider": "onderwijsaanbieder", "sector": "sector", "programme_code": "opleidingscode",
              "diploma_number": "diplomavolgnummer", "diploma_date": "diplomadatum",
              "reason": "reden", "explanation": "toelichting"}
UPLOAD_TYPES = {"text/csv": "text/csv", "application/xml": "application/xml", "text/xml": "application/xml",
                ".csv": "text/csv", ".xml": "application/xml"}
LOGIN_REFUSALS = {  # a failed login's outcome -> status, Dutch and English message
    "missing": (401, "Vul het token van uw instelling in.", "Enter your institution's token."),
    "invalid": (401, "Dit token is niet bekend of niet meer geldig.",
                "This token is unknown or no longer valid."),
    "forbidden": (403, "Dit is geen token van een onderwijsinstelling: het Loket is voor instellingen.",
                  "This is not an institution's token: the Loket is for institutions."),
}


class Shelf(Protocol):
    """The audit's reports of an institution (services/audit/http.py ReportShelf, passed in)."""

    def periods(self, institution: str) -> list[dict[str, Any]]: ...
    def read(self, institution: str, period: str, fmt: str) -> bytes | None: ...
    def answer_headers(self, institution: str, period: str, fmt: str) -> dict[str, str]: ...


@dataclass
class Page:
    """What every page's template gets besides its own values."""

    lang: str
    session: Session | None
    path: str
    query: tuple[tuple[str, str], ...] = ()

    def tr(self, dutch: str, english: str) -> str:
        return texts.pick(self.lang, dutch, english)

    def in_language(self, lang: str) -> str:
        """This page in `lang`: the same path and query (search, paging, filter), only `lang` set."""
        return f"{self.path}?{urlencode([*((k, v) for k, v in self.query if k != 'lang'), ('lang', lang)])}"


def environment() -> Environment:
    """The Loket's templates with the helpers they call."""
    templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    templates.globals.update(mask=mask_person_number, long_date=texts.long_date, moment=texts.moment,
                             message=texts.message, reason_name=texts.reason_name)
    return templates


class Loket:
    """The Loket's stores, templates and checks."""

    def __init__(self, registrar: Registrar, batch_store: BatchStore, impact_store: ImpactStore,
                 writer: RegistrationWriter, tokens: TokenBook, is_other_token: Callable[[str], bool],
                 failed_logins: FailedLogins, shelf: Shelf, upload_dir: Path, upload_limit: int) -> None:
        self.registrar = registrar
        self.batches = batch_store
        self.impact = impact_store
        self.writer = writer
        self.tokens = tokens
        self.is_other_token = is_other_token
        self.failed_logins = failed_logins
        self.failed_logins.watch(["loket"])
        self.shelf = shelf
        self.upload_dir = upload_dir
        self.upload_limit = upload_limit
        self.sessions = SessionBook(registrar.store.engine, tokens.marks)
        self.codec = Codec()
        self.templates = environment()
        self.css = (TEMPLATES / "loket.css").read_text()
        self.policy = page_policy(self.css)

    def lang(self, request: Request) -> str:
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        return chosen if chosen in texts.LANGUAGES else "nl"

    def render(self, request: Request, name: str, session: Session | None, status: int = 200,
               **values: Any) -> HTMLResponse:
        page = Page(self.lang(request), session, request.url.path, tuple(request.query_params.multi_items()))
        html = self.templates.get_template(name).render(css=self.css, page=page, tr=page.tr, lang=page.lang,
                                                        **values)
        response = HTMLResponse(html, status_code=status, headers=page_headers(self.policy))
        asked = request.query_params.get("lang")
        if asked in texts.LANGUAGES:  # the choice is kept for the next pages and forms
            set_private_cookie(request, response, LANG_COOKIE, asked, "/loket", 365 * 86400)
        return response

    def refused(self, request: Request, refusal: Refused, session: Session | None = None) -> Response:
        response = self.render(request, "refused.html", session, refusal.status, message=refusal.message)
        response.headers.update(refusal.headers)
        return response

    def unblocked_client(self, request: Request) -> str:
        client = client_address(request.scope)
        wait = self.failed_logins.blocked(client, "loket")
        if wait is not None:
            said = texts.pick(self.lang(request), "Te veel mislukte inlogpogingen vanaf uw adres: probeer "
                              "het later opnieuw.", "Too many failed logins from your address: try "
                              "again later.")
            raise Refused(429, said, {"retry-after": retry_after(wait)})
        return client

    def owned(self, result_id: str, institution: str, lang: str) -> Any:
        """`institution`'s result state; Refused(404) for an unknown one and another's alike."""
        try:
            return owned_result(self.registrar.store, result_id, institution)
        except ApiError:
            raise Refused(404, texts.message("RESULT_NOT_FOUND", lang)) from None

    def owned_batch(self, batch_id: str, institution: str, lang: str) -> Any:
        """`institution`'s finished upload; Refused(404) for an unknown one and another's alike."""
        batch = self.batches.find(batch_id) if len(batch_id) == 36 else None
        if batch is None or batch.institution != institution:
            raise Refused(404, texts.message("BATCH_NOT_FOUND", lang))
        return batch

    def views(self, result_id: str) -> list[dict[str, Any]]:
        return [event_view(self.codec, e) for e in self.registrar.store.stream(result_id)]


def form_errors(problems: list[Any], lang: str) -> tuple[dict[str, list[str]], list[str]]:
    """The API's problems by form field, and those that belong to no field (shown on top)."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for problem in problems:
        field = FORM_FIELD.get(problem.field or "")
        text = problem.text(lang)  # the message with its parameters (columns, line)
        if field:
            by_field.setdefault(field, []).append(text)
        else:
            general.append(text)
    return by_field, general
