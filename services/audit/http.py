"""`GET /v1/reports` and `GET /v1/reports/{period}`: an institution's own deletion reports.

An APIRouter over the report files (<data dir>/reports/<period>/<instellingscode>.*), to be
mounted in the registrar's app, whose gate has already resolved the bearer token to an
institution. A token only ever reaches the files named by its own institution's code; a
missing report is a 404 like any unknown address, so nobody learns which reports exist.
"""


import json
import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.security import HTTPBearer

from services.audit.periods import Period

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


class ReportShelf:
    """An institution's report files in `reports_dir` (<period>/<instellingscode>.{csv,json,html}):
    the `/v1/reports` endpoints and the Loket read them here, and nowhere else."""

    def __init__(self, reports_dir: Path) -> None:
        self.reports_dir = reports_dir

    def periods(self, institution: str) -> list[dict[str, Any]]:
        """The institution's reports, oldest period first: period, its first and last day (Dutch
        dates: a period is named by the month it ends in), provisional, number of deletions."""
        found = []
        folders = sorted(self.reports_dir.iterdir()) if self.reports_dir.is_dir() else []
        for folder in folders:
            summary = folder / f"{institution}.json"
            if not (_PERIOD.fullmatch(folder.name) and summary.is_file()):
                continue
            content = json.loads(summary.read_bytes())
            found.append({"period": folder.name, **period_days(folder.name),
                          "provisional": content["provisional"], "deletions": content["totals"]["deletions"]})
        return found

    def read(self, institution: str, period: str, fmt: str) -> bytes | None:
        """One report file's bytes (`fmt`: json, csv or html), or None when there is none."""
        if not _PERIOD.fullmatch(period) or fmt not in MEDIA_TYPES:
            return None
        path = self.reports_dir / period / f"{institution}.{fmt}"
        return path.read_bytes() if path.is_file() else None

    def answer_headers(self, institution: str, period: str, fmt: str) -> dict[str, str]:
        """The headers a report file is served with (its media type included)."""
        return {"content-type": MEDIA_TYPES[fmt], **report_headers(institution, period, fmt)}


def period_days(period: str) -> dict[str, date]:
    """`2027-05` → first_day 2026-11-01, last_day 2027-04-30 (inclusive, Dutch calendar days)."""
    parsed = Period.parse(period)
    return {"first_day": parsed.start.date(), "last_day": (parsed.end - timedelta(days=1)).date()}


def report_headers(institution: str, period: str, fmt: str) -> dict[str, str]:
    """A report file's answer headers: no caching, and the HTML's policy (nothing loads or runs)."""
    headers = {"x-content-type-options": "nosniff", "cache-control": "no-store"}
    if fmt == "html":
        headers["content-security-policy"] = HTML_POLICY
    if fmt == "csv":
        headers["content-disposition"] = f'attachment; filename="{institution}-{period}.csv"'
    return headers


def reports_router(reports_dir: Path, acting: Callable[..., str] = institution_from_gate) -> APIRouter:
    """The two report endpoints over `reports_dir`, for the institution `acting` resolves."""
    router = APIRouter(tags=["reports"])
    Acting = Annotated[str, Depends(acting)]
    shelf = ReportShelf(reports_dir)

    @router.get("/v1/reports")
    def list_reports(institution: Acting) -> dict[str, Any]:
        """The institution's reports, oldest period first, with each file's address and SHA-256."""
        found = [{"period": r["period"], "provisional": r["provisional"], "deletions": r["deletions"],
                  "files": {fmt: f"/v1/reports/{r['period']}?format={fmt}" for fmt in MEDIA_TYPES}}
                 for r in shelf.periods(institution)]
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
        body = shelf.read(institution, period, fmt)
        if body is None:
            raise HTTPException(404)
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=report_headers(institution, period, fmt))

    return router
