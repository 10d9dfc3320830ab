"""The operations tables: operators, the action outbox, and the window of consumer-group samples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
)
from sqlalchemy.engine import Connection

from services.kernel.database import ROW_ID, create_tables, make_engine, writing
from services.kernel.tokens import TokenMarks, mark_tables

metadata = MetaData()

# the window `rod topics` judges a consumer group's status over: one reading per sample of each
# (group, topic, partition); group "(relay)" holds the relay's published position. Pruned by
# services.operations.overview to a few windows.
group_samples = Table(
    "operations_group_samples",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),  # Unix seconds
    Column("group_id", String(255), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("committed", BigInteger, nullable=False),
    Column("lag", BigInteger, nullable=False),
    Index("ix_operations_group_samples_key", "group_id", "topic", "partition", "at"),
)

operators = Table(
    "operations_operators",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(80), nullable=False),
)

token_marks = mark_tables(metadata, "operations")  # revoked operator tokens (a rotated one's too), last uses

# every operator action; `published` turns true once it is on rod.operations.v1 (an outbox)
actions = Table(
    "operations_actions",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("action_id", String(36), nullable=False, unique=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("operator", String(80), nullable=False),
    Column("via", String(10), nullable=False),
    Column("action", String(40), nullable=False),
    Column("target", String(120), nullable=False),
    Column("reason", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("published", Boolean, nullable=False),
)

# console sessions: the cookie holds a random id whose hash is the key (a stolen table row is
# no session); csrf is the per-session token every console form carries back
sessions = Table(
    "operations_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("operator", String(80), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


def end_sessions(conn: Connection, operator: str) -> None:
    """An operator's console sessions end with their token (revoked or rotated)."""
    conn.execute(delete(sessions).where(sessions.c.operator == operator))


# an action's outcome kept for the page the console redirects to: shown once, then deleted; the
# redirect carries a random id whose hash is the key, so a URL alone can claim nothing
flashes = Table(
    "operations_flashes",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("operator", String(80), nullable=False),
    Column("message", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


class OperationsStore:
    """The operations database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        create_tables(metadata, self.engine)
        self.tokens = TokenMarks(self.engine, "operator", operators, "name", token_marks, end_sessions)

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        with writing(self.engine) as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()

