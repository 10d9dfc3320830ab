"""The registrar's HTTP API (interfaces.md): thin endpoints over the same command handlers
as the CLI. Every 4xx and 5xx body is {"errors": [{"field", "code", "message"}]}.

    app.include_router(registrar_router(registrar, batch_store, impact_store, upload_dir=Path("var/uploads")))

The app itself (the gate, the error handlers, every service's router) is put together at the
top, in services/app.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.kernel import csv_cells
from services.kernel.codec import Codec
from services.kernel.codes import Problem, problem
from services.kernel.gate import error_body, note_refusal
from services.kernel.text import NOT_UNICODE
from services.registrar import metrics
from services.registrar.api_models import (
    BatchOut,
    DeletedOut,
    DeletionIn,
    DryRunOut,
    ErrorsOut,
    FeedbackOut,
    RegisteredOut,
    RegistrationIn,
    ResultOut,
)
from services.registrar.batches import BatchStore
from services.registrar.commands import FileRefused, Registrar
from services.registrar.impact import ImpactStore
from services.registrar.rules import check_deletion
from services.registrar.store import EventStore, StoredEvent, results
from services.registrar.writer import RegistrationWriter

UPLOAD_LIMIT = 100 * 1024 * 1024  # bytes of one bulk file
_UPLOAD_TYPES = {"text/csv": "csv", "application/xml": "xml", "text/xml": "xml"}
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
_PERSON_FIELDS = {"bsn": "person.bsn", "onderwijsnummer": "person.onderwijsnummer"}
_STATUS_BY_CODE = {
    "INSTITUTION_FORBIDDEN": 403, "RESULT_NOT_FOUND": 404, "BATCH_NOT_FOUND": 404,
    "RESULT_CONFLICT": 409, "RESULT_ALREADY_DELETED": 409, "FILE_TOO_LARGE": 413,
}


class ApiError(Exception):
    """An answer other than success: an HTTP status and the problems behind it."""

    def __init__(self, status: int, problems: list[Problem], line: int | None = None) -> None:
        super().__init__(status, [p.code for p in problems])
        self.status = status
        self.problems = problems
        self.line = line  # a bulk file refused as a whole: where


def refuse(problems: list[Problem]) -> ApiError:
    """The status the most telling problem calls for (403 before 404 before 409 ...), else 422."""
    statuses = [_STATUS_BY_CODE.get(p.code, 422) for p in problems]
    status = min(statuses, key=lambda s: (s == 422, s))
    chosen = [p for p, s in zip(problems, statuses, strict=True) if s == status]
    return ApiError(status, chosen)


_BEARER = HTTPBearer(auto_error=False, description="The institution's token from `rod institution add`.")


def _acting(request: Request, _credentials: Annotated[Any, Security(_BEARER)]) -> str:
    """The institution the request's token acts for (the gate has checked the token)."""
    return request.state.institution


Acting = Annotated[str, Depends(_acting)]
DryRun = Annotated[bool, Query(description="Only answer with the chain impact; delete nothing.")]
FeedbackFormat = Annotated[Literal["json", "csv"], Query(alias="format", description="json, or csv")]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorsOut} for status in (401, 422, *statuses)}


# --- the app -------------------------------------------------------------------------------------


def registrar_router(
    registrar: Registrar, batch_store: BatchStore, impact_store: ImpactStore, *,
    upload_dir: Path, upload_limit: int = UPLOAD_LIMIT, writer: RegistrationWriter | None = None,
) -> APIRouter:
    """The registrar's API over one registrar, its batch feedback and its chain-impact tables
    (`writer`: the registration writer it shares with the Loket, else one of its own)."""
    router = APIRouter()
    store = registrar.store
    codec = Codec()
    upload_dir.mkdir(parents=True, exist_ok=True)
    served_metrics = metrics.Metrics(store)
    writer = writer or RegistrationWriter(registrar)

    @router.post("/v1/results", status_code=201, response_model=RegisteredOut, tags=["results"],
              responses={200: {"model": RegisteredOut, "description": "Already registered, identical"},
                         **_errors(400, 403, 409, 413)})
    async def register(body: RegistrationIn, response: Response, institution: Acting) -> dict[str, Any]:
        """Register one result; an identical repeat answers 200 with the same body."""
        response.status_code, answer = await register_result(writer, body, institution)
        return answer

    @router.post("/v1/results/{result_id}/deletions", status_code=201, response_model=DeletedOut | DryRunOut,
              tags=["results"], responses={
                  200: {"model": DryRunOut, "description": "Dry run: nothing deleted"},
                  **_errors(400, 403, 404, 409, 413)})
    def delete(
        result_id: str, body: DeletionIn, response: Response, institution: Acting, dry_run: DryRun = False,
    ) -> dict[str, Any]:
        """Delete a result (a deletion event; nothing is removed), or show what it would touch."""
        state = owned_result(store, result_id, institution)
        response.status_code, answer = delete_result(registrar, impact_store, state, body, dry_run)
        return answer

    @router.get("/v1/results/{result_id}", response_model=ResultOut, tags=["results"],
             responses=_errors(403, 404))
    def get_result(result_id: str, institution: Acting) -> dict[str, Any]:
        """The result's current state and its full event history, oldest first."""
        stream = store.stream(result_id) if _ID.fullmatch(result_id) else []
        if not stream:
            raise ApiError(404, [problem("RESULT_NOT_FOUND", "result_id")])
        views = [event_view(codec, e) for e in stream]
        owner = views[0]["registration"]["institution"]
        if owner != institution:
            raise ApiError(403, [problem("INSTITUTION_FORBIDDEN", "result_id")])
        latest = [v for v in views if v["registration"]][-1]["registration"]
        return {"result_id": result_id, "institution": owner,
                "status": "deleted" if views[-1]["type"] == "ResultDeleted" else "registered",
                "version": views[-1]["version"], "registration": latest, "events": views}

    @router.post("/v1/batches", status_code=201, response_model=BatchOut, tags=["batches"],
              responses=_errors(403, 413, 415), openapi_extra={"requestBody": {"required": True, "content": {
                  "text/csv": {"schema": {"type": "string", "format": "binary"}},
                  "application/xml": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request, response: Response, institution: Acting) -> dict[str, Any]:
        """Upload a bulk file (CSV or XML); answers the batch id and the feedback summary."""
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in _UPLOAD_TYPES:
            raise ApiError(415, [problem("CONTENT_TYPE_UNSUPPORTED", "content-type")])
        path, size = await _spool(request, upload_dir, upload_limit, _UPLOAD_TYPES[content_type])
        try:
            batch_id, summary = await run_in_threadpool(
                import_upload, registrar, batch_store, path, size, content_type, institution)
        finally:
            path.unlink(missing_ok=True)
        response.headers["location"] = f"/v1/batches/{batch_id}/feedback"
        return {"batch_id": batch_id, "summary": summary, "feedback": f"/v1/batches/{batch_id}/feedback"}

    @router.get("/v1/batches/{batch_id}/feedback", tags=["batches"], response_model=None,
             responses={200: {"model": FeedbackOut, "content": {"text/csv": {"schema": {"type": "string"}}}},
                        **_errors(403, 404)})
    def feedback(
        batch_id: str, institution: Acting, fmt: FeedbackFormat = "json",
    ) -> StreamingResponse:
        """The per-record feedback of an upload, as JSON or as a CSV download."""
        batch = batch_store.find(batch_id) if _ID.fullmatch(batch_id) else None
        if batch is None:
            raise ApiError(404, [problem("BATCH_NOT_FOUND", "batch_id")])
        if batch.institution != institution:
            raise ApiError(403, [problem("INSTITUTION_FORBIDDEN", "batch_id")])
        if fmt == "csv":
            return StreamingResponse(
                _feedback_csv(batch_store, batch), media_type="text/csv",
                headers={"content-disposition": f'attachment; filename="feedback-{batch_id}.csv"'},
            )
        return StreamingResponse(_feedback_json(batch_store, batch), media_type="application/json")

    @router.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    if metrics.enabled():  # ROD_METRICS=off: no endpoint (the benchmark's baseline)
        @router.get("/metrics", tags=["operations"], response_class=Response,
                 responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
        async def get_metrics() -> Response:
            """Prometheus text format: every service in this process (rendered on the event loop:
            about a millisecond, and no hand-off to a busy thread pool under load)."""
            return Response(served_metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


async def register_result(
    writer: RegistrationWriter, body: RegistrationIn, institution: str
) -> tuple[int, dict[str, Any]]:
    """Register one result for `institution` (the API's and the Loket's one path): 201 or 200 (an
    identical repeat) and the answer; ApiError naming every problem of a rejected one."""
    outcome = await asyncio.wrap_future(writer.submit(body.raw(), institution))
    code = outcome.errors[0].code if outcome.errors else "none"
    if outcome.outcome == "rejected":
        problems = [_person_field(p) for p in outcome.errors]
        if any(p.code in ("INSTITUTION_FORBIDDEN", "INSTITUTION_UNKNOWN") and p.field == "institution"
               for p in problems):
            code, problems = "INSTITUTION_FORBIDDEN", [problem("INSTITUTION_FORBIDDEN", "institution")]
        metrics.REGISTRATIONS.labels(outcome="rejected", code=code).inc()
        raise refuse(problems)
    metrics.REGISTRATIONS.labels(outcome=outcome.outcome, code=code).inc()
    return 201 if outcome.outcome == "accepted" else 200, {
        "result_id": outcome.result_id, "event_id": outcome.event_id, "position": outcome.position,
        "warnings": [p.as_dict() for p in outcome.warnings]}


def owned_result(store: EventStore, result_id: str, institution: str) -> Any:
    """The current state row of `institution`'s result; ApiError 404 (unknown) or 403 (another's)."""
    row = None
    if _ID.fullmatch(result_id):
        with store.reading() as conn:
            row = conn.execute(select(results).where(results.c.result_id == result_id)).first()
    if row is None:
        raise ApiError(404, [problem("RESULT_NOT_FOUND", "result_id")])
    if row.institution != institution:
        raise ApiError(403, [problem("INSTITUTION_FORBIDDEN", "result_id")])
    return row


def delete_result(
    registrar: Registrar, impact_store: ImpactStore, state: Any, body: DeletionIn, dry_run: bool
) -> tuple[int, dict[str, Any]]:
    """Delete the result of `state` (from `owned_result`), or with `dry_run` only check the reason
    and tell the chain impact (the API's and the Loket's one path): status and answer, or ApiError."""
    result_id = state.result_id
    impact = impact_store.impact(result_id, state.registered_event_id)
    if dry_run:
        problems = check_deletion(body.reason, body.explanation)
        if not problems and state.status == "deleted":
            problems = [problem("RESULT_ALREADY_DELETED")]
        if problems:
            raise refuse(problems)
        return 200, {"dry_run": True, "result_id": result_id, "impact": impact.as_dict()}
    outcome = registrar.delete(result_id, body.reason, body.explanation, acting_institution=state.institution)
    if outcome.outcome != "accepted":
        raise refuse(outcome.errors)
    metrics.count_deletion(body.reason)
    assert outcome.event_id and outcome.position and outcome.version
    [stored] = [e for e in registrar.store.stream(result_id) if e.event_id == outcome.event_id]
    return 201, {"result_id": result_id, "event_id": outcome.event_id, "position": outcome.position,
                 "version": outcome.version, "event": event_view(Codec(), stored), "impact": impact.as_dict()}


def import_upload(
    registrar: Registrar, batch_store: BatchStore, path: Path, size: int, content_type: str, institution: str,
) -> tuple[str, dict[str, int]]:
    """Import the spooled bulk file at `path` with its feedback kept (the API's and the Loket's one
    path): the batch id and the summary counts; ApiError for a file refused as a whole."""
    writer = batch_store.start(institution, _UPLOAD_TYPES[content_type], size)
    try:
        summary = registrar.import_file(path, institution, content_type=content_type, on_record=writer)
    except FileRefused as refused:
        batch_store.close(writer, "refused")
        status = _STATUS_BY_CODE.get(refused.problem.code, 422)
        raise ApiError(status, [refused.problem], refused.line) from None
    except BaseException:
        batch_store.close(writer, "failed")
        raise
    batch_store.finish(writer, summary)
    counts = {"accepted": summary.accepted, "duplicate": summary.duplicate,
              "rejected": summary.rejected, "warnings": summary.warnings}
    metrics.BATCH_RECORDS.observe(summary.accepted + summary.duplicate + summary.rejected)
    for outcome in ("accepted", "duplicate", "rejected"):
        metrics.BATCH_OUTCOMES.labels(outcome=outcome).inc(counts[outcome])
    return summary.batch_id, counts


def document_the_gate(app: FastAPI) -> None:
    """The gate answers 401 on every /v1/ route, also on routers mounted later: say so in /openapi.json."""
    build = app.openapi
    unauthorised = {"description": "No valid bearer token",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorsOut"}}}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation.setdefault("responses", {}).setdefault("401", unauthorised)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Validation, routing and API errors all answer {"errors": [...]}."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        note_refusal(request.scope, [p.code for p in exc.problems])  # the access line names them
        body = error_body(exc.problems)
        if exc.line is not None:
            body["errors"][0]["line"] = exc.line
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_validation_problem(e) for e in exc.errors()]
        malformed = [p for p in problems if p.code == "BODY_MALFORMED"]
        note_refusal(request.scope, [p.code for p in malformed[:1] or problems])
        if malformed:
            return JSONResponse(error_body(malformed[:1]), status_code=400)
        return JSONResponse(error_body(problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}.get(exc.status_code)
        status = exc.status_code if code else 400
        note_refusal(request.scope, [code or "BODY_MALFORMED"])
        return JSONResponse(error_body([problem(code or "BODY_MALFORMED")]), status_code=status,
                            headers=getattr(exc, "headers", None))


def _validation_problem(error: dict[str, Any]) -> Problem:
    loc = [part for part in error.get("loc", ()) if part not in ("body",)]
    kind = error.get("type", "")
    where, names = (loc[0], loc[1:]) if loc and loc[0] in ("query", "path", "header") else ("body", loc)
    # A client's key is echoed only when it looks like a field name (never a number).
    field = ".".join(str(n) if isinstance(n, int) or _NAME.fullmatch(str(n)) else "*" for n in names) or None
    if kind in NOT_UNICODE:
        return problem("TEXT_NOT_UNICODE", field)
    if where == "body" and (kind == "json_invalid" or not names):
        return problem("BODY_MALFORMED")
    if where != "body":
        return problem("PARAMETER_INVALID", field)
    code = {"missing": "FIELD_REQUIRED", "extra_forbidden": "FIELD_UNKNOWN"}.get(kind, "FIELD_TYPE_INVALID")
    return problem(code, field)


def _person_field(p: Problem) -> Problem:
    """Name person-number problems by their place in the JSON body (person.bsn, person)."""
    if p.field in _PERSON_FIELDS:
        return Problem(_PERSON_FIELDS[p.field], p.code, p.message)
    if p.code in ("PERSON_NUMBER_MISSING", "PERSON_NUMBER_AMBIGUOUS"):
        return Problem("person", p.code, p.message)
    return p


def event_view(codec: Codec, stored: StoredEvent) -> dict[str, Any]:
    name, record = codec.decode(stored.payload)
    view: dict[str, Any] = {
        "event_id": record["event_id"], "type": name, "version": record["version"],
        "position": record["position"], "recorded_at": record["recorded_at"].isoformat(),
        "batch_id": record["batch_id"], "registration": None, "deletion": None,
        "prev_hash": record["prev_hash"].hex(), "hash": record["hash"].hex(),
    }
    if name == "ResultRegistered":
        view["registration"] = {
            "person": {record["person_kind"].lower(): record["person_number"]},
            **{k: record[k] for k in ("institution", "branch", "provider", "sector", "programme_code",
                                      "programme_name", "big_profession", "diploma_number", "warnings")},
            "diploma_date": record["diploma_date"].isoformat(),
        }
    else:
        view["deletion"] = {k: record[k] for k in ("reason", "explanation", "registered_event_id")}
    return view


async def _spool(request: Request, upload_dir: Path, limit: int, fmt: str) -> tuple[Path, int]:
    """Stream the body to a file on disk chunk by chunk; 413 FILE_TOO_LARGE past `limit`."""
    size = 0
    with tempfile.NamedTemporaryFile(dir=upload_dir, suffix=f".{fmt}", delete=False) as spool:
        path = Path(spool.name)
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    break
                spool.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    if size > limit:
        path.unlink(missing_ok=True)
        await _drain(request, size, limit)
        raise ApiError(413, [problem("FILE_TOO_LARGE", "file")])
    return path, size


async def _drain(request: Request, size: int, limit: int) -> None:
    """Read (and drop) a bounded rest of an oversized upload so the client sees the 413."""
    if size > 2 * limit:
        return
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > 2 * limit:
                return
    except Exception:
        return


def _feedback_pages(batch_store: BatchStore, batch: Any) -> Iterator[list[tuple[Any, ...]]]:
    page: list[tuple[Any, ...]] = []
    for row in batch_store.records(batch):
        page.append(row)
        if len(page) == 2000:
            yield page
            page = []
    if page:
        yield page


def _feedback_json(batch_store: BatchStore, batch: Any) -> Iterator[bytes]:
    yield (f'{{"batch_id": {json.dumps(batch.batch_id)}, "summary": {json.dumps(batch.summary())}, '
           '"records": [').encode()
    first = True
    for page in _feedback_pages(batch_store, batch):
        items = ",".join(
            json.dumps({"record": r, "line": line, "outcome": o, "result_id": rid, "codes": codes})
            for r, line, o, rid, codes in page
        )
        yield (items if first else "," + items).encode()
        first = False
    yield b"]}"


def _feedback_csv(batch_store: BatchStore, batch: Any) -> Iterator[bytes]:
    yield b"record,line,outcome,result_id,codes\r\n"
    for page in _feedback_pages(batch_store, batch):
        out = io.StringIO()
        writer = csv_cells.writer(out)
        for r, line, o, rid, codes in page:
            writer.writerow([r, line, o, rid or "", " ".join(codes)])
        yield out.getvalue().encode()
