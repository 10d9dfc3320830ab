"""Bearer tokens: long random strings, stored only as their SHA-256 (institutions, operators,
consumers, portals), a short-lived memory of the ones recently looked up, and each service's
marks on its tokens (revoked, last used).

A revocation is a row in the service's `<service>_token_revocations`; its highest id is the
revocation generation. A remembered token counts only while the generation it was looked up
under is the one a read begun at most FRESH_SECONDS ago found (a thread reads it again every
REFRESH_SECONDS while tokens are asked for, so requests never wait on it), and whoever revokes
waits FRESH_SECONDS after the commit (`settle`). So once `rod token revoke` returns, no process
lets the token through, however long it remembers tokens, without a database read per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.engine import Engine

from services.kernel.database import ROW_ID, writing
from services.kernel.logging import get_logger

log = get_logger("tokens")

TOUCH_SECONDS = 60.0  # "last used" is written at most this often per token and process
FRESH_SECONDS = 1.0  # a remembered token is trusted on a generation read begun at most this long ago
REFRESH_SECONDS = 0.25  # how often the generation is read again while tokens are being asked for


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex: enough for 256-bit random tokens (they are not passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(kind: str, digest: str) -> str:
    """The name `rod token list` shows and `rod token revoke` takes: kind and a prefix of the hash."""
    return f"{kind}-{digest[:16]}"


def mark_tables(metadata: MetaData, service: str) -> tuple[Table, Table]:
    """The revocations and last uses of one service's tokens: tables of their own, so the token
    tables of a database made before them need no migration."""
    revocations = Table(
        f"{service}_token_revocations",
        metadata,
        Column("id", ROW_ID, primary_key=True, autoincrement=True),  # the revocation generation
        Column("token_hash", String(64), nullable=False, unique=True),
        Column("owner", String(80), nullable=False),  # kept: a rotated operator's old hash leaves its row
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("revoked_at", DateTime(timezone=True), nullable=False),
        Column("revoked_by", String(80), nullable=False),
        Column("reason", Text, nullable=False),
    )
    uses = Table(
        f"{service}_token_uses",
        metadata,
        Column("token_hash", String(64), primary_key=True),
        Column("last_used_at", DateTime(timezone=True), nullable=False),
    )
    return revocations, uses


def _utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


class TokenMarks:
    """One kind of token in one service's database: `tokens` has `token_hash`, `created_at` and
    the owner's column; revocations and last uses go to the service's mark tables."""

    def __init__(self, engine: Engine, kind: str, tokens: Table, owner: str, marks: tuple[Table, Table],
                 on_revoke: Callable[[Any, str], None] | None = None) -> None:
        self.engine = engine
        self.on_revoke = on_revoke  # (connection, owner): what else ends with a token (sessions)
        self.kind = kind
        self.tokens = tokens
        self.owner = tokens.c[owner]
        self.revocations, self.uses = marks
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._seen = (-1, float("-inf"))  # generation, monotonic time its read began
        self._refreshing = False
        self._refresher = ThreadPoolExecutor(1, thread_name_prefix=f"{kind}-token-generation")

    def recent_generation(self) -> int | None:
        """The generation a read begun at most FRESH_SECONDS ago found, or None; starts the next
        read in the background once the last is REFRESH_SECONDS old (no database on the caller)."""
        generation, started = self._seen
        age = time.monotonic() - started
        if age > REFRESH_SECONDS and not self._refreshing:
            self._refreshing = True
            try:
                self._refresher.submit(self._refresh)
            except RuntimeError:  # the interpreter is shutting down: no more reads, only misses
                self._refreshing = False
        return generation if age <= FRESH_SECONDS else None

    def _refresh(self) -> None:
        try:
            self.current()
        except Exception as exc:  # noqa: BLE001 - the database is away: remembered tokens go stale
            log.warning("token_generation_unread", kind=self.kind, error=type(exc).__name__)
        finally:
            self._refreshing = False

    def current(self) -> int:
        """The revocation generation, read now (and noted for `recent_generation`)."""
        started = time.monotonic()
        with self.engine.connect() as conn:
            generation = int(conn.execute(select(func.max(self.revocations.c.id))).scalar() or 0)
        with self._lock:
            if started > self._seen[1]:
                self._seen = (generation, started)
        return generation

    @staticmethod
    def settle() -> None:
        """Wait until every process has read the generation anew since a revocation committed."""
        time.sleep(FRESH_SECONDS)

    def revoked(self, digest: str) -> bool:
        with self.engine.connect() as conn:
            query = select(self.revocations.c.id).where(self.revocations.c.token_hash == digest)
            return conn.execute(query).first() is not None

    def touch(self, digest: str) -> None:
        """Note the token as used now, at most once per TOUCH_SECONDS (not a write per request)."""
        moment = time.monotonic()
        if moment - self._touched.get(digest, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        self._touched[digest] = moment
        now = datetime.now(UTC)
        with writing(self.engine) as conn:
            done = conn.execute(update(self.uses).where(self.uses.c.token_hash == digest)
                                .values(last_used_at=now)).rowcount
            if not done:
                conn.execute(insert(self.uses).values(token_hash=digest, last_used_at=now))

    def listing(self) -> list[dict[str, Any]]:
        """Every token of this kind, revoked ones included: id, owner, times; never the token."""
        with self.engine.connect() as conn:
            live = {r.token_hash: (r.owner, r.created_at) for r in conn.execute(
                select(self.tokens.c.token_hash, self.owner.label("owner"), self.tokens.c.created_at))}
            gone = {r.token_hash: r for r in conn.execute(select(self.revocations))}
            used = dict(conn.execute(select(self.uses.c.token_hash, self.uses.c.last_used_at)).all())
        rows = []
        for digest in set(live) | set(gone):
            owner, created = live.get(digest) or (gone[digest].owner, gone[digest].created_at)
            revocation = gone.get(digest)
            rows.append({
                "id": token_id(self.kind, digest), "kind": self.kind, "owner": owner,
                "created": _utc(created), "last_used": _utc(used.get(digest)),
                "revoked": _utc(revocation.revoked_at) if revocation else None,
                "revoked_by": revocation.revoked_by if revocation else None,
                "reason": revocation.reason if revocation else None,
            })
        return sorted(rows, key=lambda row: (row["created"] or "", row["id"]))

    def find(self, token_id_or_prefix: str) -> str | None:
        """The hash of the live token with this id, or None."""
        kind, _, prefix = token_id_or_prefix.partition("-")
        if kind != self.kind or len(prefix) < 8 or not all(c in "0123456789abcdef" for c in prefix):
            return None
        with self.engine.connect() as conn:
            found = conn.execute(select(self.tokens.c.token_hash)
                                 .where(self.tokens.c.token_hash.startswith(prefix))).scalars().all()
        return found[0] if len(found) == 1 else None

    def revoke(self, digest: str, by: str, reason: str) -> str | None:
        """Revoke the live token `digest`, in force everywhere on return; its owner, or None (no
        such token, or revoked already)."""
        with writing(self.engine) as conn:
            owner = self.revoke_in(conn, digest, by, reason)
        if owner is not None:
            self.settle()
        return owner

    def revoke_in(self, conn: Any, digest: str, by: str, reason: str) -> str | None:
        """`revoke` in the caller's write transaction."""
        row = conn.execute(select(self.owner.label("owner"), self.tokens.c.created_at)
                           .where(self.tokens.c.token_hash == digest)).first()
        taken = conn.execute(select(func.count()).select_from(self.revocations)
                             .where(self.revocations.c.token_hash == digest)).scalar()
        if row is None or taken:
            return None
        conn.execute(insert(self.revocations).values(
            token_hash=digest, owner=row.owner, created_at=row.created_at, revoked_at=datetime.now(UTC),
            revoked_by=by, reason=reason))
        if self.on_revoke is not None:
            self.on_revoke(conn, row.owner)
        return str(row.owner)


class RecentTokens:
    """What a token hash resolved to, reused for `ttl` seconds: a known token is not looked up in
    the database on every request (institution and consumer tokens alike, and the Loket's
    sessions). With `marks`, a revoked token is never found and a remembered one counts only
    under the newest revocation generation. At most `size` are remembered (the oldest go first)."""

    def __init__(self, ttl: float = 60.0, marks: TokenMarks | None = None, size: int = 10_000) -> None:
        self.ttl = ttl
        self.marks = marks
        self.size = size
        self._known: dict[str, tuple[Any, float, int]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Any | None:
        """The remembered principal, without the database; None sends the caller to `resolve`."""
        return self._valid(hash_token(token), self.marks.recent_generation() if self.marks else 0)

    def _valid(self, digest: str, generation: int | None) -> Any | None:
        hit = self._known.get(digest)
        if not hit or hit[1] <= time.monotonic() or hit[2] != generation:
            return None  # unknown, expired, or looked up before a revocation (or no recent read)
        return hit[0]

    def resolve(self, token: str, find: Callable[[str], Any | None],
                principal: Callable[[Any], Any]) -> Any | None:
        """Look `token` up by its hash: `find(digest)` gives the row (with `token_hash`) or None; the
        hashes are compared in constant time and the principal the row gives is remembered."""
        digest = hash_token(token)
        generation = self.marks.current() if self.marks else 0  # read first: a later revocation shows
        remembered = self._valid(digest, generation)
        if remembered is not None:
            return remembered
        row = find(digest)
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if self.marks is not None:
            if self.marks.revoked(digest):
                return None
            self.marks.touch(digest)
        found = principal(row)
        self.remember(digest, found, generation)
        return found

    def remember(self, digest: str, principal: Any, generation: int = 0, ttl: float | None = None) -> None:
        """Remember `principal` for `ttl` seconds (at most the book's `ttl`) under `generation`."""
        moment = time.monotonic()
        with self._lock:
            if digest not in self._known and len(self._known) >= self.size:
                self._known = {k: hit for k, hit in self._known.items() if hit[1] > moment}
                while len(self._known) >= self.size:  # still full: the oldest go
                    del self._known[next(iter(self._known))]
            self._known.pop(digest, None)  # a renewed one goes to the back of the line
            self._known[digest] = (principal, moment + min(self.ttl, self.ttl if ttl is None else ttl),
                                   generation)

    def forget(self, digest: str) -> None:
        """No longer remember `digest` (a session ended in this process)."""
        with self._lock:
            self._known.pop(digest, None)
