"""`rod` commands of the extract service: portal add, extract verify."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from services.extract.store import ExtractStore
from services.kernel.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8080"


@click.group()
def portal() -> None:
    """Citizen portals (Mijn DUO) that look up results and issue extracts."""


@portal.command("add")
@click.argument("name")
@click.pass_context
def portal_add(ctx: click.Context, name: str) -> None:
    """Add a portal; its token is printed as the last line (only its hash is stored)."""
    settings: Settings = ctx.obj["settings"]
    store = ExtractStore(settings.database_urls["extract"])
    try:
        token = store.add_portal(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.dispose()
    click.echo(f"portal {name} added")
    click.echo(token)


@click.group()
def extract() -> None:
    """Digital extracts (uittreksels) of the register."""


class Unreachable(Exception):
    """The register did not answer."""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the register's own address
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(str(exc)) from exc


@extract.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default=None, help="The register's address (default: ROD_PUBLIC_URL or "
                                          f"{DEFAULT_URL}).")
@click.option("--json", "as_json", is_flag=True, help="The findings as JSON.")
def extract_verify(file: Path, url: str | None, as_json: bool) -> None:
    """Check an extract: its signature, the certificate chain, and the register's answer.

    Exit 0: valid. 1: withdrawn, changed after signing, or not issued by this register.
    2: cannot tell (the register did not answer).
    """
    # pyHanko and reportlab take most of a second to import: only this command needs them
    from services.extract.document import check_signature, read_reference

    base = (url or os.environ.get("ROD_PUBLIC_URL") or DEFAULT_URL).rstrip("/")
    pdf = file.read_bytes()
    findings: dict[str, Any] = {"file": file.name}
    try:
        status, chain = _get(f"{base}/v1/extracts/certificate")
        if status != 200:
            raise Unreachable(f"certificate answered {status}")
        check = check_signature(pdf, chain)
        findings["signature"] = "valid" if check.intact and check.trusted and check.covers_whole_document \
            else (check.problem or "invalid").lower()
        reference = read_reference(pdf)
        if reference is None:
            findings["register"] = "no extract reference in the document"
        else:
            extract_id, code = reference
            findings["extract_id"] = extract_id
            query = urllib.parse.urlencode({"code": code})
            status, body = _get(f"{base}/v1/verifications/{urllib.parse.quote(extract_id)}?{query}")
            if status == 200:
                answer = json.loads(body)
                findings["register"] = answer["status"]
                findings["withdrawn_at"] = answer.get("withdrawn_at")
            elif status == 404:
                findings["register"] = "unknown"
            else:
                raise Unreachable(f"verification answered {status}")
    except Unreachable as exc:
        findings["register"] = f"unreachable ({exc})"
        _report(findings, as_json)
        sys.exit(2)
    valid = findings["signature"] == "valid" and findings.get("register") == "valid"
    findings["verdict"] = "valid" if valid else "not valid"
    _report(findings, as_json)
    sys.exit(0 if valid else 1)


def _report(findings: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(findings, indent=2))
        return
    for key, value in findings.items():
        if value is not None:
            click.echo(f"{key}: {value}")


COMMANDS = [portal, extract]
