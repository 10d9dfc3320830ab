"""`rod` commands of the registrar: institution add, import, delete, verify, relay."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from services.kernel import csv_cells
from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import FileRefused, RecordFeedback, Registrar
from services.registrar.relay import Relay
from services.registrar.rules import SECTORS
from services.registrar.store import EventStore
from services.registrar.transparency.cli import check_log, verdict_line
from services.registrar.verify import record_verdict, verify

INSTITUTION_CODE = re.compile(r"^\d{2}[A-Z]{2}$")


def open_registrar(settings: Settings) -> Registrar:
    """The registrar over the configured database and catalogue."""
    return Registrar(EventStore(settings.database_urls["registrar"]), Catalogue.load(settings.catalogue))


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


@click.group()
def institution() -> None:
    """Institutions that may deliver results."""


@institution.command("add")
@click.argument("code")
@click.option("--name", required=True, help="The institution's name.")
@click.option(
    "--sectors",
    default="VO,PRO,VSO,MBO,HO",
    show_default=True,
    help="Comma-separated sectors: VO, PRO, VSO, MBO, HO.",
)
@click.option("--unfunded", is_flag=True, help="Not funded: only recognised programmes.")
@click.pass_context
def institution_add(ctx: click.Context, code: str, name: str, sectors: str, unfunded: bool) -> None:
    """Add an institution; prints its new bearer token as the last line (shown once)."""
    chosen = [s.strip().upper() for s in sectors.split(",") if s.strip()]
    if not INSTITUTION_CODE.fullmatch(code):
        raise click.UsageError("INSTITUTION_CODE_INVALID: two digits and two capitals, e.g. 25BE")
    if not chosen or any(s not in SECTORS for s in chosen):
        raise click.UsageError(f"SECTOR_INVALID: sectors are {', '.join(SECTORS)}")
    registrar = open_registrar(_settings(ctx))
    if registrar.institution(code):
        raise click.ClickException(f"institution {code} already exists")
    token = registrar.add_institution(code, name, chosen, funded=not unfunded)
    click.echo(f"institution {code} added ({', '.join(chosen)}{', unfunded' if unfunded else ''})")
    click.echo("bearer token (shown once, only its hash is stored):")
    click.echo(token)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--institution", "institution_code", required=True, help="instellingscode you deliver for.")
@click.option(
    "--feedback",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the feedback of every record to this CSV file (none for a refused file).",
)
@click.pass_context
def import_file(ctx: click.Context, file: Path, institution_code: str, feedback: Path | None) -> None:
    """Import a bulk CSV or XML file. Exit 0: all accepted, 1: some rejected, 2: file refused.

    The feedback goes to stdout: a line per rejected record, then the summary; for a file
    refused as a whole, the one line that says why. A refused file leaves no --feedback file.
    """
    registrar = open_registrar(_settings(ctx))
    out = feedback.open("w", newline="") if feedback else None
    writer = csv_cells.writer(out) if out else None
    if writer:
        writer.writerow(["record", "line", "outcome", "result_id", "codes"])

    def show(record: RecordFeedback) -> None:
        if writer:
            writer.writerow(
                [record.record, record.line, record.outcome, record.result_id or "", " ".join(record.codes)]
            )
        if record.outcome == "rejected":  # warnings are counted; --feedback has each one
            codes = " ".join(record.codes)
            click.echo(f"record {record.record} (line {record.line}): {record.outcome} {codes}")

    try:
        summary = registrar.import_file(file, institution_code, on_record=show)
    except FileRefused as refused:
        if out and feedback:  # no record was read: no feedback file, none left from an earlier run
            out.close()
            feedback.unlink(missing_ok=True)
        where = f" at line {refused.line}" if refused.line else ""
        click.echo(f"file refused: {refused.problem.code}{where}: {refused.problem.message}")
        sys.exit(2)
    finally:
        if out:
            out.close()
    click.echo(
        f"batch {summary.batch_id}: {summary.accepted} accepted, {summary.duplicate} duplicate, "
        f"{summary.rejected} rejected, {summary.warnings} with warnings"
        + (" (which: --feedback FILE)" if summary.warnings and not feedback else "")
    )
    sys.exit(1 if summary.rejected else 0)


@click.command("delete")
@click.argument("result_id")
@click.option(
    "--reason",
    required=True,
    help="FRAUD, ADMINISTRATIVE_ERROR, EXTRA_COURSES_OR_GRADE_IMPROVEMENT, WRONG_PERSON_OR_DATA or OTHER.",
)
@click.option("--explanation", default=None, help="Required for FRAUD and OTHER.")
@click.pass_context
def delete_result(ctx: click.Context, result_id: str, reason: str, explanation: str | None) -> None:
    """Delete a result (appends a deletion event; nothing is removed)."""
    outcome = open_registrar(_settings(ctx)).delete(result_id, reason, explanation)
    if outcome.outcome != "accepted":
        for error in outcome.errors:
            click.echo(f"{error.code}: {error.message}", err=True)
        sys.exit(1)
    click.echo(f"deleted {result_id}: event {outcome.event_id} at position {outcome.position}")


@click.command("verify")
@click.pass_context
def verify_chain(ctx: click.Context) -> None:
    """Walk the event store's hash chain, then check the log's checkpoints and tree against it
    (`rod log verify`); exit 1 when either fails, naming the first broken position or checkpoint."""
    event_store = EventStore(_settings(ctx).database_urls["registrar"])
    try:
        verdict = verify(event_store)
        record_verdict(event_store, verdict)  # the console shows the latest
        logged = check_log(_settings(ctx), event_store)
    finally:
        event_store.dispose()
    if verdict.ok:
        click.echo(f"chain intact: {verdict.checked} events verified")
    else:
        click.echo(
            f"chain BROKEN at position {verdict.broken_position}: {verdict.reason} "
            f"({verdict.checked} events before it verified)"
        )
    click.echo(verdict_line(logged))
    if not (verdict.ok and logged.ok):
        sys.exit(1)


@click.command("relay")
@click.option(
    "--from-position",
    type=click.IntRange(min=1),
    default=None,
    help="Publish again from this position on (after a broker lost data).",
)
@click.pass_context
def relay(ctx: click.Context, from_position: int | None) -> None:
    """Publish stored events to rod.results.v1 until caught up, then exit."""
    settings = _settings(ctx)
    try:
        bootstrap = resolve_bootstrap(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    publisher = Relay(EventStore(settings.database_urls["registrar"]), settings, bootstrap)
    try:
        if from_position:
            publisher.rewind(from_position)
        else:
            publisher.recover()
        sent = publisher.catch_up()
    finally:
        publisher.close()
    click.echo(f"published {sent} events; published position {publisher.published_position()}")


COMMANDS = [institution, import_file, delete_result, verify_chain, relay]
