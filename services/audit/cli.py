"""`rod report`: make and publish a period's deletion reports by hand."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime

import click

from services.audit.periods import Period, english_date
from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.audit.reports import ChainBroken, ReportWriter
from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.settings import Settings

INSTITUTION_CODE = re.compile(r"^\d{2}[A-Z]{2}$")


@click.command("report")
@click.option("--period", "period_id", required=True, metavar="YYYY-MM",
              help="Named by the month it ends in: YYYY-05 covers 1 November of the year before up to "
                   "and including 30 April, YYYY-11 1 May up to and including 31 October (Dutch time).")
@click.option("--institution", default=None, metavar="CODE", help="Only this institution's report.")
@click.pass_context
def report(ctx: click.Context, period_id: str, institution: str | None) -> None:
    """Make and publish a period's deletion reports (an open period's are marked provisional).

    A period is named by the month it ends in: 2027-05 covers 1 November 2026 up to and
    including 30 April 2027, 2026-11 covers 1 May up to and including 31 October 2026. The
    command says which days the period covers, and whether its reports are provisional (the
    period has not ended yet) or final. Reads the log into the audit projection first; refuses
    over a broken hash chain, naming the position. The same events give byte-identical files,
    so running it again changes nothing. Files go to <data dir>/reports/<period>/.
    """
    settings: Settings = ctx.obj["settings"]
    try:
        period = Period.parse(period_id)
    except ValueError as exc:
        raise click.UsageError(f"PERIOD_INVALID: {exc}") from None
    if institution is not None and not INSTITUTION_CODE.fullmatch(institution):
        raise click.UsageError("INSTITUTION_CODE_INVALID: two digits and two capitals, e.g. 25BE")
    click.echo(f"period {period.id} covers {period.covers()} (Dutch time)")
    try:
        bootstrap = resolve_bootstrap(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    projection = Projection(settings.database_urls["audit"])
    try:
        AuditReader(projection, settings, bootstrap).catch_up()
        now = datetime.now(UTC)
        status = projection.status()
        if period.is_closed(now) and not status.breaks and (
            status.head_recorded_at is None or status.head_recorded_at < period.end_ms
        ):
            click.echo("warning: the verified log holds no event after the period's end yet; "
                       "events still on their way are not in this report", err=True)
        writer = ReportWriter(projection, settings, bootstrap)
        try:
            written = writer.write(period, now, institution)
        except ChainBroken as exc:
            click.echo(f"CHAIN_BROKEN: {exc}", err=True)
            sys.exit(1)
        except LookupError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
        writer.publish(written, generated_at=now)
    finally:
        projection.dispose()
    for w in written:
        for fmt, path in w.files.items():
            click.echo(f"{settings.data_dir / 'reports' / path}  sha256 {w.sha256[fmt]}")
    if period.is_closed(now):
        state = "final"
    else:
        state = (f"provisional: the period has not ended (its last day is {english_date(period.last_day)}); "
                 "run the command again after that for the final report")
    click.echo(f"period {period.id}: {len(written)} report(s) published, {state}")
    current = Period.containing(now)
    if current != period:
        click.echo(f"deletions recorded today belong to period {current.id} ({current.covers()})")


COMMANDS = [report]
