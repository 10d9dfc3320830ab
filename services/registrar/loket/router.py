"""Het Loket (`/loket`): the institutions' pages in a browser, server-rendered, no script.

Staff log in with their institution's token (`/loket/login`, field `token`) and get an
HttpOnly, SameSite=Strict session cookie; every POST carries the session's CSRF token and a
cross-site one is refused. Every action takes the API's own path (services/registrar/api.py:
`register_result`, `delete_result`, `import_upload`), so the rules, codes and events are the
API's. Another institution's result or batch answers 404, like an unknown one. Person numbers
never go in a URL and are shown masked.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser
from starlette.responses import StreamingResponse

from services.kernel.logging import get_logger
from services.kernel.throttle import FailedLogins
from services.kernel.web import (
    Refused,
    capped_body,
    check_text,
    csrf_matches,
    drop_private_cookie,
    read_form,
    same_origin,
    set_private_cookie,
)
from services.registrar.api import (
    UPLOAD_LIMIT,
    ApiError,
    _feedback_csv,
    delete_result,
    event_view,
    import_upload,
    register_result,
)
from services.registrar.api_models import DeletionIn, RegistrationIn
from services.registrar.batches import BatchStore
from services.registrar.commands import Registrar
from services.registrar.impact import ImpactStore
from services.registrar.loket import texts
from services.registrar.loket.pages import (
    COOKIE,
    FIELDS,
    FORM_LIMIT,
    LOGIN_REFUSALS,
    PAGE_SIZE,
    UPLOAD_TYPES,
    Loket,
    Shelf,
    form_errors,
)
from services.registrar.loket.sessions import SESSION_HOURS, Session
from services.registrar.rules import DELETION_REASONS, SECTORS
from services.registrar.tokens import TokenBook
from services.registrar.writer import RegistrationWriter

log = get_logger("registrar.loket")


def loket_router(
    registrar: Registrar, batch_store: BatchStore, impact_store: ImpactStore, writer: RegistrationWriter,
    tokens: TokenBook, is_other_token: Callable[[str], bool], failed_logins: FailedLogins, shelf: Shelf,
    upload_dir: Path, upload_limit: int = UPLOAD_LIMIT,
) -> APIRouter:
    """Every `/loket` page and action; failed logins count in `failed_logins` (shared with the gate)."""
    router = APIRouter(tags=["loket"], include_in_schema=False)
    upload_dir.mkdir(parents=True, exist_ok=True)
    loket = Loket(registrar, batch_store, impact_store, writer, tokens, is_other_token, failed_logins, shelf,
                  upload_dir, upload_limit)

    Work = Callable[[Session, dict[str, str] | None], Awaitable[Response]]

    async def guarded(request: Request, work: Work, form: str | None = None) -> Response:
        """Run `work` for the request's session: no session goes to the login page; a POST
        (`form` "urlencoded" or "multipart") must be same-origin and carry the session's CSRF token."""
        cookie = request.cookies.get(COOKIE)
        session = loket.sessions.remembered(cookie) or await run_in_threadpool(loket.sessions.find, cookie)
        if session is None:
            return RedirectResponse("/loket/login", status_code=303)
        request.state.institution = session.institution  # the access line names who asked
        try:
            fields = None
            if form is not None:
                same_origin(request)
                fields = await (read_upload(request) if form == "multipart"
                                else read_form(request, FORM_LIMIT))
                if not csrf_matches(session.csrf, fields.get("csrf")):
                    raise Refused(403, texts.pick(loket.lang(request), "Het formulier is verlopen: laad de "
                                                  "pagina opnieuw en probeer het nog eens.", "The form has "
                                                  "expired: reload the page and try again."))
            return await work(session, fields)
        except Refused as refusal:
            return loket.refused(request, refusal, session)

    async def read_upload(request: Request) -> dict[str, Any]:
        """The upload form's fields, the file among them (spooled by the parser, capped at the upload
        limit); nothing is imported before the caller has checked the CSRF token."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise Refused(415, "Send the form as multipart/form-data.")
        parser = MultiPartParser(request.headers, capped_body(request, loket.upload_limit + FORM_LIMIT),
                                 max_files=1, max_fields=5, max_part_size=FORM_LIMIT)
        try:
            parsed = await parser.parse()
        except Refused:
            raise Refused(413, texts.message("FILE_TOO_LARGE", loket.lang(request))) from None
        except Exception:  # noqa: BLE001 - the multipart parser's own errors: a form it cannot read
            raise Refused(400, "The form could not be read.") from None
        check_text({k: [v] for k, v in parsed.multi_items() if isinstance(v, str)})
        return {k: v for k, v in parsed.multi_items()}

    # --- logging in and out -----------------------------------------------------------------

    @router.get("/loket/login")
    def login_form(request: Request) -> Response:
        return loket.render(request, "login.html", None)

    @router.post("/loket/login")
    async def login(request: Request) -> Response:
        lang = loket.lang(request)
        try:
            same_origin(request)
            client = loket.unblocked_client(request)
            token = (await read_form(request, FORM_LIMIT)).get("token", "").strip()
            institution = (await run_in_threadpool(loket.tokens.lookup, token)
                           if token and len(token) <= 256 else None)
            if institution is None:
                other = bool(token) and len(token) <= 256 and await run_in_threadpool(
                    loket.is_other_token, token)
                outcome = "forbidden" if other else "invalid" if token else "missing"
                route = getattr(request.scope.get("route"), "path", "/loket/login")
                loket.failed_logins.failed(client, "loket", outcome, route)
                status, dutch, english = LOGIN_REFUSALS[outcome]
                raise Refused(status, texts.pick(lang, dutch, english))
        except Refused as refusal:
            if refusal.status in (401, 403, 429):
                response = loket.render(request, "login.html", None, refusal.status, error=refusal.message)
                response.headers.update(refusal.headers)
                return response
            return loket.refused(request, refusal)
        session_id = await run_in_threadpool(loket.sessions.start, institution, token)
        log.info("loket_logged_in", institution=institution)
        response = RedirectResponse("/loket", status_code=303)
        set_private_cookie(request, response, COOKIE, session_id, "/loket", SESSION_HOURS * 3600)
        return response

    @router.post("/loket/logout")
    async def logout(request: Request) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            await run_in_threadpool(loket.sessions.end, session)
            response = RedirectResponse("/loket/login", status_code=303)
            drop_private_cookie(response, COOKIE, "/loket")
            return response
        return await guarded(request, work, "urlencoded")

    @router.get("/loket")
    async def home(request: Request) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            return loket.render(request, "home.html", session)
        return await guarded(request, work)

    # --- Resultaat registreren ---------------------------------------------------------------

    def registration_page(request: Request, session: Session, status: int = 200, **values: Any) -> Response:
        return loket.render(request, "register.html", session, status, sectors=SECTORS, fields=FIELDS,
                            values=values.pop("values", {}), errors=values.pop("errors", {}),
                            general=values.pop("general", []), programme=values.pop("programme", None),
                            **values)

    @router.get("/loket/registreren")
    async def register_form(request: Request) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            return registration_page(request, session)
        return await guarded(request, work)

    @router.post("/loket/registreren")
    async def register(request: Request) -> Response:
        async def work(session: Session, form: dict[str, str] | None) -> Response:
            values = {name: (form or {}).get(name, "").strip() for name in FIELDS}
            body = RegistrationIn.model_validate({
                "person": {"bsn": values["bsn"] or None,
                           "onderwijsnummer": values["onderwijsnummer"] or None},
                "institution": session.institution, "branch": values["vestigingscode"],
                "provider": values["onderwijsaanbieder"] or None, "sector": values["sector"],
                "programme_code": values["opleidingscode"], "diploma_number": values["diplomavolgnummer"],
                "diploma_date": values["diplomadatum"]})
            try:
                status, answer = await register_result(loket.writer, body, session.institution)
            except ApiError as refused:
                errors, general = form_errors(refused.problems, loket.lang(request))
                found = registrar.catalogue.find(values["sector"], values["opleidingscode"])
                return registration_page(request, session, refused.status,
                                         values=values, errors=errors, general=general,
                                         programme=found.name if found else None)
            log.info("loket_registered", institution=session.institution, result_id=answer["result_id"],
                     outcome="accepted" if status == 201 else "duplicate")
            said = "nieuw" if status == 201 else "bekend"
            return RedirectResponse(f"/loket/resultaten/{answer['result_id']}?{said}=1", status_code=303)
        return await guarded(request, work, "urlencoded")

    # --- Resultaten ---------------------------------------------------------------------------

    @router.get("/loket/resultaten")
    async def results_list(request: Request, diplomavolgnummer: str = "", voor: str = "") -> Response:
        async def work(session: Session, _form: Any) -> Response:
            number = diplomavolgnummer.strip()[:20] or None
            before = voor if len(voor) == 36 else None
            rows = await run_in_threadpool(registrar.store.results_page, session.institution, number, before,
                                           PAGE_SIZE + 1)
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            latest = await run_in_threadpool(registrar.store.latest_registrations,
                                             [r.result_id for r in rows])
            shown = [{"row": r, "registration": event_view(loket.codec, latest[r.result_id])["registration"]
                      if r.result_id in latest else None} for r in rows]
            return loket.render(request, "results.html", session, rows=shown, number=number or "",
                                next_before=rows[-1].result_id if more else None, first=before is None)
        return await guarded(request, work)

    @router.get("/loket/resultaten/{result_id}")
    async def result_page(request: Request, result_id: str) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            state = await run_in_threadpool(loket.owned, result_id, session.institution,
                                           loket.lang(request))
            views = await run_in_threadpool(loket.views, result_id)
            latest = [v for v in views if v["registration"]][-1]["registration"]
            said = next((k for k in ("nieuw", "bekend", "verwijderd") if k in request.query_params), None)
            return loket.render(request, "result.html", session, state=state, events=views, latest=latest,
                                said=said)
        return await guarded(request, work)

    # --- Verwijderen ---------------------------------------------------------------------------

    def deletion_page(request: Request, session: Session, state: Any, impact: dict[str, Any], step: str,
                      status: int = 200, **values: Any) -> Response:
        lang = loket.lang(request)
        views = loket.views(state.result_id)
        latest = [v for v in views if v["registration"]][-1]["registration"]
        return loket.render(request, "delete.html", session, status, state=state, latest=latest, step=step,
                            impact=impact, sentences=texts.impact_sentences(impact, lang),
                            reasons=DELETION_REASONS, errors=values.pop("errors", {}),
                            general=values.pop("general", []), reden=values.pop("reden", ""),
                            toelichting=values.pop("toelichting", ""),
                            advice=texts.advice(values.get("chosen", ""), lang), **values)

    @router.get("/loket/resultaten/{result_id}/verwijderen")
    async def deletion_form(request: Request, result_id: str) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            state = await run_in_threadpool(loket.owned, result_id, session.institution,
                                           loket.lang(request))
            if state.status == "deleted":
                raise Refused(409, texts.message("RESULT_ALREADY_DELETED", loket.lang(request)))
            impact = loket.impact.impact(result_id, state.registered_event_id).as_dict()
            return await run_in_threadpool(deletion_page, request, session, state, impact, "reden")
        return await guarded(request, work)

    @router.post("/loket/resultaten/{result_id}/verwijderen")
    async def delete(request: Request, result_id: str) -> Response:
        async def work(session: Session, form: dict[str, str] | None) -> Response:
            return await run_in_threadpool(deletion_step, request, session, result_id, form or {})
        return await guarded(request, work, "urlencoded")

    def deletion_step(request: Request, session: Session, result_id: str, form: dict[str, str]) -> Response:
        """Step "reden" checks the reason (the API's dry run) and shows the confirmation; step
        "bevestigen" deletes, once the second confirmation is given where the result reached anyone."""
        lang = loket.lang(request)
        state = loket.owned(result_id, session.institution, lang)
        reason, explanation = form.get("reden", "").strip(), form.get("toelichting", "").strip()
        body = DeletionIn.model_validate({"reason": reason, "explanation": explanation or None})
        kept = {"reden": reason, "toelichting": explanation, "chosen": reason}
        try:
            _status, dry = delete_result(registrar, impact_store, state, body, dry_run=True)
        except ApiError as refused:
            errors, general = form_errors(refused.problems, lang)
            impact = loket.impact.impact(result_id, state.registered_event_id).as_dict()
            return deletion_page(request, session, state, impact, "reden", refused.status, errors=errors,
                                 general=general, **kept)
        impact = dry["impact"]
        if form.get("stap") != "bevestigen":
            return deletion_page(request, session, state, impact, "bevestigen", **kept)
        if impact["has_impact"] and form.get("bevestiging") != "ja":
            error = texts.pick(lang, "Bevestig dat u weet wie dit resultaat al heeft.",
                               "Confirm that you know who already has this result.")
            return deletion_page(request, session, state, impact, "bevestigen", 422,
                                 errors={"bevestiging": [error]}, **kept)
        try:
            _status, answer = delete_result(registrar, impact_store, state, body, dry_run=False)
        except ApiError as refused:
            errors, general = form_errors(refused.problems, lang)
            return deletion_page(request, session, state, impact, "reden", refused.status, errors=errors,
                                 general=general, **kept)
        log.info("loket_deleted", institution=session.institution, result_id=result_id,
                 event_id=answer["event_id"], reason=reason)
        return RedirectResponse(f"/loket/resultaten/{result_id}?verwijderd=1", status_code=303)

    # --- Bestand aanleveren ---------------------------------------------------------------------

    @router.get("/loket/aanleveren")
    async def upload_form(request: Request) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            return loket.render(request, "upload.html", session)
        return await guarded(request, work)

    @router.post("/loket/aanleveren")
    async def upload(request: Request) -> Response:
        async def work(session: Session, form: dict[str, Any] | None) -> Response:
            lang = loket.lang(request)
            part = (form or {}).get("bestand")
            name = getattr(part, "filename", None) or ""
            kind = UPLOAD_TYPES.get((getattr(part, "content_type", None) or "").lower()) or UPLOAD_TYPES.get(
                Path(name).suffix.lower())
            if part is None or isinstance(part, str) or not name:
                return loket.render(request, "upload.html", session, 422, error=texts.pick(
                    lang, "Kies een bestand om aan te leveren.", "Choose a file to upload."))
            if kind is None:
                return loket.render(request, "upload.html", session, 415, error=texts.pick(
                    lang, "Kies een CSV- of XML-bestand.", "Choose a CSV or XML file."))
            try:
                batch_id, _counts = await run_in_threadpool(spool_and_import, part, kind, session.institution)
            except ApiError as refused:
                problem = refused.problems[0]
                return loket.render(request, "upload.html", session, refused.status,
                                    error=problem.text(lang), code=problem.code,
                                    line=refused.line)
            log.info("loket_uploaded", institution=session.institution, batch_id=batch_id)
            return RedirectResponse(f"/loket/aanleveringen/{batch_id}", status_code=303)
        return await guarded(request, work, "multipart")

    def spool_and_import(part: Any, kind: str, institution: str) -> tuple[str, dict[str, int]]:
        suffix = ".xml" if kind == "application/xml" else ".csv"
        with tempfile.NamedTemporaryFile(dir=upload_dir, suffix=suffix, delete=False) as out:
            spool = Path(out.name)
            part.file.seek(0)
            shutil.copyfileobj(part.file, out)
        try:
            return import_upload(registrar, batch_store, spool, spool.stat().st_size, kind, institution)
        finally:
            spool.unlink(missing_ok=True)
            part.file.close()

    @router.get("/loket/aanleveringen/{batch_id}")
    async def batch_page(request: Request, batch_id: str, na: int = 0, afgekeurd: str = "") -> Response:
        async def work(session: Session, _form: Any) -> Response:
            batch = await run_in_threadpool(loket.owned_batch, batch_id, session.institution,
                                           loket.lang(request))
            only_rejected = afgekeurd == "1"
            rows = await run_in_threadpool(batch_store.page, batch, max(na, 0), PAGE_SIZE + 1, only_rejected)
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            return loket.render(request, "batch.html", session, batch=batch, rows=rows, after=na,
                                only_rejected=only_rejected, next_after=rows[-1][0] if more else None)
        return await guarded(request, work)

    @router.get("/loket/aanleveringen/{batch_id}/terugkoppeling.csv")
    async def batch_csv(request: Request, batch_id: str) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            batch = await run_in_threadpool(loket.owned_batch, batch_id, session.institution,
                                           loket.lang(request))
            return StreamingResponse(_feedback_csv(batch_store, batch), media_type="text/csv", headers={
                "content-disposition": f'attachment; filename="feedback-{batch_id}.csv"',
                "cache-control": "no-store", "x-content-type-options": "nosniff"})
        return await guarded(request, work)

    # --- Verwijderrapportages -------------------------------------------------------------------

    @router.get("/loket/rapportages")
    async def reports(request: Request) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            found = await run_in_threadpool(shelf.periods, session.institution)
            return loket.render(request, "reports.html", session, reports=found[::-1])
        return await guarded(request, work)

    @router.get("/loket/rapportages/{period}.{fmt}")
    async def report_file(request: Request, period: str, fmt: str) -> Response:
        async def work(session: Session, _form: Any) -> Response:
            body = await run_in_threadpool(shelf.read, session.institution, period, fmt)
            if body is None:
                raise Refused(404, texts.pick(loket.lang(request), "Deze rapportage bestaat niet.",
                                              "No such report."))
            return Response(body, headers=shelf.answer_headers(session.institution, period, fmt))
        return await guarded(request, work)

    router.loket = loket  # type: ignore[attr-defined]
    return router
