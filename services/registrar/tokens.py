"""The institutions' bearer tokens: token -> institution, from the hashes in registrar_tokens;
revoked ones (registrar_token_revocations) open nothing, and a rotation gives a new one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from services.kernel.clock import now_millis
from services.kernel.database import writing
from services.kernel.gate import Realm
from services.kernel.tokens import RecentTokens, TokenMarks, hash_token, new_token
from services.registrar.store import token_marks, tokens

KIND = "institution"


def institution_tokens(engine: Engine) -> TokenMarks:
    """The institution tokens' marks: listing, revocation, last use."""
    return TokenMarks(engine, KIND, tokens, "institution", token_marks)


def rotate_token(engine: Engine, code: str, by: str, reason: str) -> str:
    """A new token for institution `code`; every token it had is revoked in the same transaction,
    in force everywhere on return."""
    marks = institution_tokens(engine)
    token = new_token()
    with writing(engine) as conn:
        held = conn.execute(select(tokens.c.token_hash).where(tokens.c.institution == code)).scalars().all()
        for digest in held:
            marks.revoke_in(conn, digest, by, reason)
        conn.execute(insert(tokens).values(token_hash=hash_token(token), institution=code,
                                           created_at=now_millis()))
    marks.settle()
    return token


class TokenBook:
    """Bearer token → institution, from the hashes in registrar_tokens (known ones cached briefly)."""

    def __init__(self, engine: Engine, ttl: float = 60.0) -> None:
        self.engine = engine
        self.marks = institution_tokens(engine)  # the Loket's sessions use the same generation reads
        self.recent = RecentTokens(ttl, self.marks)

    def cached(self, token: str) -> str | None:
        return self.recent.get(token)

    def lookup(self, token: str) -> str | None:
        """The institution this token acts for, or None."""
        return self.recent.resolve(token, self._row, lambda row: row.institution)

    def _row(self, digest: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(tokens.c.token_hash, tokens.c.institution).where(tokens.c.token_hash == digest)
            ).first()

    def realm(self) -> Realm:
        """Institution tokens open `/v1/` at large (other kinds have longer prefixes)."""
        return Realm("/v1/", "institution", self.lookup, self.cached)
