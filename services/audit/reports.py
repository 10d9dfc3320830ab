"""Making a period's reports: facts from the verified projection → bodies → files → ReportPublished.

A body depends only on the events (and receipts) it is made of, never on when or where it
was made: the same events give byte-identical files, so a projection rebuilt from the log
proves a published report. When it was generated goes apart: into the ReportPublished
event on rod.reports.v1 and the audit_reports table. The report id is a UUIDv5 of the
period, the institution and the three bodies' SHA-256, so publishing the same report again
repeats the same id.

No report is made over a broken chain (ChainBroken names the position), and only events up
to the verified position are read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from services.audit import metrics, render
from services.audit.figures import (
    HISTORY,
    NATIONAL,
    Deletion,
    PeriodFacts,
    institution_report,
    national_report,
)
from services.audit.periods import Period, to_millis
from services.audit.projection import Projection, deliveries, events, extracts, reports
from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("audit.reports")

REPORTS_TOPIC = "rod.reports.v1"
FORMATS = ("csv", "json", "html")
_REPORT_NAMESPACE = uuid.UUID("5b8f0c1e-3d1a-5c59-9a53-0f3f1c2a7e11")


class ChainBroken(Exception):
    """The event log's hash chain is broken: no report may be made over it."""

    def __init__(self, position: int, code: str) -> None:
        super().__init__(f"hash chain broken at position {position} ({code}): no report is published")
        self.position = position
        self.code = code


@dataclass(frozen=True)
class Written:
    """One report's three files, as written."""

    period: str
    scope: str  # instellingscode or "national"
    provisional: bool
    deletions: int
    sha256: dict[str, str]  # format → hex digest of the body
    files: dict[str, str]  # format → path relative to the reports directory

    @property
    def report_id(self) -> str:
        digests = "/".join(self.sha256[f] for f in FORMATS)
        return str(uuid.uuid5(_REPORT_NAMESPACE, f"{self.period}/{self.scope}/{digests}"))


def collect(projection: Projection, period: Period, now: datetime) -> PeriodFacts:
    """The facts of `period` from events up to the verified position; ChainBroken over a break."""
    status = projection.status()
    if status.breaks:
        first = status.breaks[0]
        raise ChainBroken(first.position, first.code)
    verified = status.verified
    with projection.engine.connect() as conn:
        return PeriodFacts(
            period=period,
            provisional=not period.is_closed(now),
            institutions=_institutions(conn, period, verified),
            deletions=_deletions(conn, period, verified),
            registered=_counts(conn, period, verified, "R"),
            deleted=_counts(conn, period, verified, "D"),
            history={p.id: _per_institution(conn, p, verified) for p in period.history(HISTORY)},
        )


def _in(period: Period, verified: int, table=events):  # noqa: ANN001, ANN202 - a SQL condition
    return and_(table.c.recorded_at >= period.start_ms, table.c.recorded_at < period.end_ms,
                table.c.position <= verified)


def _registration(d, r):  # noqa: ANN001, ANN202 - a SQL condition
    """The registration a deletion ends (by result id first: that is how the index runs)."""
    return and_(r.c.result_id == d.c.result_id, r.c.event_id == d.c.registered_event_id)


def _institutions(conn: Connection, period: Period, verified: int) -> list[str]:
    query = (select(events.c.institution).distinct()
             .where(events.c.kind == "R", events.c.recorded_at < period.end_ms, events.c.position <= verified)
             .order_by(events.c.institution))
    return list(conn.execute(query).scalars())


def _counts(conn: Connection, period: Period, verified: int, kind: str) -> dict[tuple[str, str], int]:
    """(institution, sector) → registrations or deletions in the period (a deletion's sector is its
    registration's)."""
    if kind == "R":
        query = (select(events.c.institution, events.c.sector, func.count())
                 .where(events.c.kind == "R", _in(period, verified))
                 .group_by(events.c.institution, events.c.sector))
    else:
        d, r = events.alias("d"), events.alias("r")
        query = (select(d.c.institution, r.c.sector, func.count())
                 .select_from(d.join(r, _registration(d, r)))
                 .where(d.c.kind == "D", _in(period, verified, d))
                 .group_by(d.c.institution, r.c.sector))
    return {(i, s): n for i, s, n in conn.execute(query)}


def _per_institution(conn: Connection, period: Period, verified: int) -> dict[str, tuple[int, int]]:
    query = (select(events.c.institution, events.c.kind, func.count())
             .where(_in(period, verified)).group_by(events.c.institution, events.c.kind))
    out: dict[str, list[int]] = {}
    for institution, kind, n in conn.execute(query):
        out.setdefault(institution, [0, 0])[0 if kind == "R" else 1] = n
    return {i: (r, d) for i, (r, d) in sorted(out.items())}


def _deletions(conn: Connection, period: Period, verified: int) -> list[Deletion]:
    d, r = events.alias("d"), events.alias("r")
    where = and_(d.c.kind == "D", _in(period, verified, d))
    received: dict[int, set[str]] = {}
    confirmed: dict[int, set[str]] = {}
    for kind, found in (("DELIVERY", received), ("ACKNOWLEDGED", confirmed)):
        for position, subscription in conn.execute(
            select(d.c.position, deliveries.c.subscription).distinct()
            .select_from(d.join(deliveries, and_(deliveries.c.result_id == d.c.result_id,
                                                 deliveries.c.event_id == d.c.registered_event_id,
                                                 deliveries.c.kind == kind,
                                                 deliveries.c.delivered_at <= d.c.recorded_at)))
            .where(where)
        ):
            found.setdefault(position, set()).add(subscription)
    extracted = set(conn.execute(
        select(d.c.position).distinct()
        .select_from(d.join(extracts, and_(extracts.c.result_id == d.c.result_id,
                                           extracts.c.event_id == d.c.registered_event_id,
                                           extracts.c.issued_at <= d.c.recorded_at)))
        .where(where)
    ).scalars())
    rows = conn.execute(
        select(d.c.position, d.c.event_id, d.c.result_id, d.c.institution, r.c.sector, r.c.programme_code,
               r.c.programme_name, r.c.diploma_number, r.c.diploma_date, r.c.person_last3,
               r.c.recorded_at.label("registered_at"), d.c.recorded_at.label("deleted_at"), d.c.reason)
        .select_from(d.join(r, _registration(d, r)))
        .where(where)
        .order_by(d.c.institution, d.c.recorded_at, d.c.position)
    )
    return [Deletion(**row._mapping, received_by=tuple(sorted(received.get(row.position, ()))),
                     extract_issued=row.position in extracted,
                     confirmed_by=tuple(sorted(confirmed.get(row.position, ())))) for row in rows]


class ReportWriter:
    """Renders, writes and publishes the reports of a period."""

    def __init__(self, projection: Projection, settings: Settings, bootstrap: str | None) -> None:
        self.projection = projection
        self.settings = settings
        self.bootstrap = bootstrap
        self.directory = settings.data_dir / "reports"
        self.codec = Codec()

    def write(self, period: Period, now: datetime, institution: str | None = None) -> list[Written]:
        """Make and write the period's reports (one institution's, or all and the national one)."""
        facts = collect(self.projection, period, now)
        if institution is not None and institution not in facts.institutions:
            raise LookupError(f"INSTITUTION_UNKNOWN: {institution} registered nothing before "
                              f"{period.id} ended")
        scopes = [institution] if institution else [*facts.institutions, NATIONAL]
        written = []
        for scope in scopes:
            content = national_report(facts) if scope == NATIONAL else institution_report(facts, scope)
            bodies = render.bodies(content, national=scope == NATIONAL)
            written.append(self._write(period, scope, facts.provisional, bodies,
                                       int(content["totals"]["deletions"])))  # type: ignore[index]
        log.info("audit_reports_written", period=period.id, reports=len(written),
                 provisional=facts.provisional)
        return written

    def _write(self, period: Period, scope: str, provisional: bool, bodies: dict[str, bytes],
               deletions: int) -> Written:
        folder = self.directory / period.id
        folder.mkdir(parents=True, exist_ok=True)
        files, digests = {}, {}
        for fmt in FORMATS:
            path = folder / f"{scope}.{fmt}"
            _replace(path, bodies[fmt])
            files[fmt] = f"{period.id}/{scope}.{fmt}"
            digests[fmt] = hashlib.sha256(bodies[fmt]).hexdigest()
        return Written(period.id, scope, provisional, deletions, digests, files)

    def publish(self, written: list[Written], generated_at: datetime) -> None:
        """One ReportPublished per report on rod.reports.v1 (flushed and checked), and the table."""
        if self.bootstrap is None:
            raise RuntimeError("no broker to publish to")
        kafka.ensure_topics(self.settings, self.bootstrap, [REPORTS_TOPIC])
        producer = kafka.producer(self.bootstrap)
        try:
            topic = self.settings.topic(REPORTS_TOPIC)
            futures = [producer.send(topic, key=f"{w.period}/{w.scope}".encode(),
                                     value=self.codec.encode("ReportPublished", _event(w, generated_at)))
                       for w in written]
            producer.flush()
            for future in futures:
                future.get(timeout=0)
        finally:
            producer.close()
        with self.projection.writing() as conn:
            for w in written:
                conn.execute(self.projection.insert_if_absent(reports).values(
                    report_id=w.report_id, period=w.period, scope=w.scope, provisional=w.provisional,
                    deletions=w.deletions, sha256_csv=w.sha256["csv"], sha256_json=w.sha256["json"],
                    sha256_html=w.sha256["html"], generated_at=to_millis(generated_at)))
        metrics.published(len(written))
        log.info("audit_reports_published", period=written[0].period if written else None,
                 reports=len(written))


def _event(w: Written, generated_at: datetime) -> dict[str, object]:
    return {
        "report_id": w.report_id,
        "period": w.period,
        "institution": w.scope,
        "provisional": w.provisional,
        "deletions": w.deletions,
        "files": [{"format": f, "path": w.files[f], "sha256": w.sha256[f]} for f in FORMATS],
        "generated_at": generated_at,
    }


def _replace(path: Path, body: bytes) -> None:
    """Write a file whole or not at all (readers of the directory never see half a report)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
