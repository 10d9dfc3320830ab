"""`GET /v1/reports` and `GET /v1/reports/{period}`: an institution's own deletion reports.

An APIRouter over the report files (<data dir>/reports/<period>/<instellingscode>.*), to be
mounted in the registrar's app, whose gate has already resolved the bearer token to an
institution. A token only ever reaches the files named by its own institution's code; a
missing report is a 404 like any unknown address, so nobody learns which reports exist.
"""


import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.security import HTTPBearer

PERIOD_PATTERN = r"^\d{4}-(05|11)$"
_PERIOD = re.compile(PERIOD_PATTERN)
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
               "html": "text/html; charset=utf-8"}
# The HTML is self-contained: inline CSS and SVG, nothing else may load or run.
HTML_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
               "form-action 'none'")

_BEARER = HTTPBearer(auto_error=False, description="The institution's token from `rod institution add`.")


def institution_from_gate(request: Request, _credentials: Annotated[Any, Security(_BEARER)]) -> str:
    """The institution the registrar's gate resolved the request's bearer token to."""
    institution = getattr(request.state, "institution", None)
    if not institution:
        raise HTTPException(401)
    return institution


def reports_router(reports_dir: Path, acting: Callable[..., str] = institution_from_gate) -> APIRouter:
    """The two report endpoints over `reports_dir`, for the institution `acting` resolves."""
    router = APIRouter(tags=["reports"])
    Acting = Annotated[str, Depends(acting)]

    @router.get("/v1/reports")
    def list_reports(institution: Acting) -> dict[str, Any]:
        """The institution's reports, oldest period first, with each file's address and SHA-256."""
        found = []
        folders = sorted(reports_dir.iterdir()) if reports_dir.is_dir() else []
        for folder in folders:
            summary = folder / f"{institution}.json"
            if not (_PERIOD.fullmatch(folder.name) and summary.is_file()):
                continue
            content = json.loads(summary.read_bytes())
            found.append({
                "period": folder.name,
                "provisional": content["provisional"],
                "deletions": content["totals"]["deletions"],
                "files": {fmt: f"/v1/reports/{folder.name}?format={fmt}" for fmt in MEDIA_TYPES},
            })
        return {"institution": institution, "reports": found}

    @router.get("/v1/reports/{period}", responses={
        200: {"content": {t.split(";")[0]: {} for t in MEDIA_TYPES.values()},
              "description": "The report: JSON, or CSV or HTML as asked"},
        404: {"description": "No report of this institution for this period"}})
    def get_report(
        institution: Acting,
        period: Annotated[str, PathParam(pattern=PERIOD_PATTERN, description="YYYY-05 or YYYY-11")],
        fmt: Annotated[Literal["json", "csv", "html"], Query(alias="format", description="json, csv or html")]
        = "json",
    ) -> Response:
        """The institution's report for one period (JSON by default; `?format=csv|html`)."""
        path = reports_dir / period / f"{institution}.{fmt}"
        if not path.is_file():
            raise HTTPException(404)
        body = path.read_bytes()
        headers = {"x-content-type-options": "nosniff", "cache-control": "no-store"}
        if fmt == "html":
            headers["content-security-policy"] = HTML_POLICY
        if fmt == "csv":
            headers["content-disposition"] = f'attachment; filename="{institution}-{period}.csv"'
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)

    return router
