"""`rod token list|revoke` and `rod institution rotate-token`: every service's tokens at once.

Each service keeps its own tokens and their marks (services/kernel/tokens.py TokenMarks); this
top-level module composes them, so no service reads another's tables, and records every
revocation and rotation as an operator action on rod.operations.v1.
"""

from __future__ import annotations

import json

import click

from services.distributor.feed import consumer_tokens
from services.distributor.ledger import Ledger
from services.extract.store import ExtractStore
from services.kernel.settings import Settings
from services.kernel.tokens import TokenMarks
from services.operations.cli import as_option, reason_option, record_cli_action
from services.operations.identity import os_user
from services.operations.store import OperationsStore
from services.registrar import cli as registrar_cli
from services.registrar.store import EventStore
from services.registrar.tokens import institution_tokens, rotate_token


def every_kind(settings: Settings) -> list[TokenMarks]:
    """The tokens of each kind, each in its own service's database."""
    urls = settings.database_urls
    return [
        institution_tokens(EventStore(urls["registrar"]).engine),
        OperationsStore(urls["operations"]).tokens,
        consumer_tokens(Ledger(urls["distributor"])),
        ExtractStore(urls["extract"]).tokens,
    ]


@click.group()
def token() -> None:
    """Every bearer token: list them (never the token itself), revoke one."""


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """Id, kind, owner, created, last used (to the minute) and any revocation of every token."""
    rows = [row for kind in every_kind(ctx.obj["settings"]) for row in kind.listing()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':<30} {'OWNER':<20} {'CREATED':<20} {'LAST USED':<20} REVOKED")
    for row in rows:
        click.echo(f"{row['id']:<30} {row['owner']:<20} {(row['created'] or '-')[:19]:<20} "
                   f"{(row['last_used'] or '-')[:19]:<20} "
                   f"{row['revoked'][:19] + ' by ' + row['revoked_by'] if row['revoked'] else '-'}")


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.option("--reason", required=True, help="Why, for the record on rod.operations.v1.")
@as_option
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str, reason: str, as_name: str | None) -> None:
    """Revoke token ID (from `rod token list`) at once; an operator's console sessions end with it."""
    settings: Settings = ctx.obj["settings"]
    for kind in every_kind(settings):
        digest = kind.find(token_id)
        if digest is not None:
            owner = kind.revoke(digest, as_name or os_user(), reason)
            if owner is None:
                break  # revoked by someone else a moment ago
            record_cli_action(settings, as_name, "token-revoke", token_id, reason)
            click.echo(f"{token_id} ({kind.kind} {owner}) revoked")
            return
    raise click.ClickException(f"TOKEN_INVALID: no token that is not revoked has the id {token_id} "
                               "(see rod token list)")


@registrar_cli.institution.command("rotate-token")
@click.argument("code")
@reason_option
@as_option
@click.pass_context
def institution_rotate_token(ctx: click.Context, code: str, reason: str, as_name: str | None) -> None:
    """A new token for institution CODE (the last line); its old ones stop working at once."""
    settings: Settings = ctx.obj["settings"]
    registrar = registrar_cli.open_registrar(settings)
    if registrar.institution(code) is None:
        raise click.ClickException(f"INSTITUTION_UNKNOWN: no institution {code}")
    new = rotate_token(registrar.store.engine, code, as_name or os_user(), reason)
    record_cli_action(settings, as_name, "token-rotate", f"institution:{code}", reason)
    click.echo(f"institution {code}: new bearer token below (shown once); the old one no longer works")
    click.echo(new)


COMMANDS = [token]
