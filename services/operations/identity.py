"""Operators: named, each with a bearer token of their own (only its hash is stored).

Operator tokens live apart from institution tokens: an institution token is never an
operator's, and an operator token is unknown to the registrar's `/v1/` gate.
"""

from __future__ import annotations

import getpass
import hmac
import re

from sqlalchemy import insert, select, update

from services.kernel.clock import now_millis as now
from services.kernel.tokens import hash_token, new_token
from services.operations.store import OperationsStore, end_sessions, operators, token_marks

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,79}$")


class OperatorError(ValueError):
    """An operator name that is malformed or already taken."""


def os_user() -> str:
    """Who runs the CLI, for the record (the CLI acts with the authority of whoever reaches the databases)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def add_operator(store: OperationsStore, name: str, created_by: str) -> str:
    """Create operator `name`; returns the new token (shown once, never stored)."""
    if not NAME.fullmatch(name):
        raise OperatorError("an operator name is 1-80 letters, digits, '.', '_', '@' or '-'")
    token = new_token()
    with store.writing() as conn:
        if conn.execute(select(operators.c.name).where(operators.c.name == name)).first():
            raise OperatorError(f"operator {name} exists already")
        conn.execute(
            insert(operators).values(name=name, token_hash=hash_token(token), created_at=now(),
                                     created_by=created_by)
        )
    return token


def operator_for(store: OperationsStore, token: str | None) -> str | None:
    """The operator holding `token`, or None."""
    if not token or len(token) > 256:
        return None
    digest = hash_token(token)
    revocations = token_marks[0]
    with store.reading() as conn:
        row = conn.execute(select(operators).where(
            operators.c.token_hash == digest,
            ~select(revocations.c.id).where(revocations.c.token_hash == digest).exists(),
        )).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    store.tokens.touch(digest)
    return row.name


def rotate_operator(store: OperationsStore, name: str, by: str, reason: str) -> str:
    """A new token for operator `name`: the old one is revoked and their console sessions end."""
    token = new_token()
    with store.writing() as conn:
        old = conn.execute(select(operators.c.token_hash).where(operators.c.name == name)).scalar()
        if old is None:
            raise OperatorError(f"no operator {name}")
        if store.tokens.revoke_in(conn, old, by, reason) is None:  # revoked before: sessions end here
            end_sessions(conn, name)
        conn.execute(update(operators).where(operators.c.name == name)
                     .values(token_hash=hash_token(token), created_at=now()))
    return token
