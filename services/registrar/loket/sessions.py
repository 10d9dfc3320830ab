"""Het Loket's sessions: a staff member logged in with their institution's token.

The cookie holds a random id; the table keeps its hash (a stolen row is no session), the
institution, the hash of the token that opened it and the session's CSRF token. A session
counts only while that token is not revoked: a lookup reads the registrar's revocations table in
the same query (the same rows the API's gate honours).

A session found is remembered for at most FRESH_SECONDS (and never past its expiry) the way the
API remembers tokens (services/kernel/tokens.py `RecentTokens` under the institution tokens'
`TokenMarks`): it counts only under the revocation generation a read begun at most FRESH_SECONDS
ago found, so `rod token revoke` and `rod institution rotate-token`, which wait that long after
their commit, end it at once. A logout forgets it at once in the process that served it; another
process of the same database may take the deleted session for at most FRESH_SECONDS more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, exists, insert, select
from sqlalchemy.engine import Engine

from services.kernel.database import create_tables, writing
from services.kernel.tokens import FRESH_SECONDS, RecentTokens, TokenMarks, hash_token
from services.kernel.web import aware, hash_id, new_id, now
from services.registrar.store import token_marks

SESSION_HOURS = 8  # a working day
REMEMBERED = 10_000  # sessions kept in memory at most (each for at most FRESH_SECONDS)

metadata = MetaData()

sessions = Table(
    "registrar_loket_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("institution", String(4), nullable=False),
    Column("token_hash", String(64), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

_revocations = token_marks[0]


@dataclass(frozen=True)
class Session:
    """Who is working in the Loket: the institution, and the session's keys."""

    institution: str
    id_hash: str
    csrf: str


class SessionBook:
    """Loket sessions in the registrar's database."""

    def __init__(self, engine: Engine, marks: TokenMarks) -> None:
        """`marks`: the institution tokens' (the API's, so one generation read serves both)."""
        self.engine = engine
        self.marks = marks
        self.recent = RecentTokens(FRESH_SECONDS, marks, REMEMBERED)
        create_tables(metadata, engine)

    def start(self, institution: str, token: str) -> str:
        """A new session for `institution`, opened with `token`; the id for the cookie."""
        session_id = new_id()
        moment = now()
        with writing(self.engine) as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < moment))  # the expired ones
            conn.execute(insert(sessions).values(
                id_hash=hash_id(session_id), institution=institution, token_hash=hash_token(token),
                csrf=new_id(), created_at=moment, expires_at=moment + timedelta(hours=SESSION_HOURS)))
        return session_id

    def remembered(self, session_id: str | None) -> Session | None:
        """The session of this cookie value if found within FRESH_SECONDS under the current
        revocation generation, without the database; None sends the caller to `find`."""
        if not session_id or len(session_id) > 128:
            return None
        found: Session | None = self.recent.get(session_id)  # keyed by hash_token(id) == hash_id(id)
        return found

    def find(self, session_id: str | None) -> Session | None:
        """The live session of this cookie value: not expired, its token not revoked; else None."""
        if not session_id or len(session_id) > 128:
            return None
        # the generation is read before the session: a revocation committed after it shows later
        generation = self.marks.recent_generation()
        if generation is None:
            generation = self.marks.current()
        revoked = exists().where(_revocations.c.token_hash == sessions.c.token_hash)
        query = (select(sessions.c.institution, sessions.c.id_hash, sessions.c.csrf, sessions.c.expires_at)
                 .where(sessions.c.id_hash == hash_id(session_id), ~revoked))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        left = (aware(row.expires_at) - now()).total_seconds() if row is not None else 0.0
        if row is None or left <= 0:
            return None
        session = Session(row.institution, row.id_hash, row.csrf)
        self.recent.remember(row.id_hash, session, generation, left)
        return session

    def end(self, session: Session) -> None:
        self.recent.forget(session.id_hash)
        with writing(self.engine) as conn:
            conn.execute(delete(sessions).where(sessions.c.id_hash == session.id_hash))
