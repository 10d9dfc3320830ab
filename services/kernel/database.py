"""Database engines for each service's own tables: SQLite (the embedded default) or PostgreSQL.

On SQLite a write transaction takes the write lock at BEGIN (`BEGIN IMMEDIATE`), so two
writers queue on the busy timeout instead of one failing when it upgrades a read lock;
readers never wait (WAL). On PostgreSQL writers serialise themselves with row locks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import BigInteger, Integer, MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError

# an autoincrementing row id: BIGINT, but INTEGER on SQLite, which autoincrements INTEGER keys only
ROW_ID = BigInteger().with_variant(Integer, "sqlite")


def make_engine(url: str, cache_mib: int | None = None) -> Engine:
    """An engine for `url`; `cache_mib` sets SQLite's page cache per connection (default 2 MiB)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is issued below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        cursor.execute("PRAGMA busy_timeout=60000")
        if cache_mib:
            cursor.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        writer = conn.get_execution_options().get("rod_writer", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction (the write lock from its start on SQLite); commits on clean exit."""
    with engine.connect().execution_options(rod_writer=True) as conn, conn.begin():
        yield conn


def create_tables(metadata: MetaData, engine: Engine, attempts: int = 5) -> None:
    """Create the missing tables of `metadata`; other processes creating tables at the same moment
    (several `rod` processes starting on one database) are fine: the loser waits and looks again
    (on SQLite a schema read cannot become a write while another process writes)."""
    for attempt in range(1, attempts + 1):
        try:
            metadata.create_all(engine)
            return
        except DatabaseError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)
