"""Shared fixtures: a real local broker, SQLite and PostgreSQL stores, and a log scan.

Everything the suite logs (in process and from `rod` subprocesses) goes to one file; at the
end of the session it must not contain any of the person numbers the tests use.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from services.kernel import logging as rod_logging
from services.kernel.broker import LocalBroker
from services.kernel.settings import Settings
from tests.independent_avro import scan_broker
from tests.support import LOG_SINK, PERSON_NUMBERS

POSTGRES_URL = os.environ.get("ROD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

@pytest.fixture(scope="session", autouse=True)
def person_numbers_never_logged() -> Iterator[None]:
    """Fails the session when any logged line holds a full test person number."""
    rod_logging.configure(stream=LOG_SINK, json=True)
    yield
    text = "".join(LOG_SINK.parts)
    leaked = [n for n in PERSON_NUMBERS if n in text]
    assert not leaked, f"person numbers found in the logs: {len(leaked)} distinct"


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """One real local broker for the session; tests isolate themselves by topic prefix.

    Before it stops, every message the session wrote on a rodchain topic must decode with the
    independent reader (tests/independent_avro.py), as a downstream organisation reads them.
    """
    with LocalBroker() as running:
        yield running.bootstrap
        every_message_decodes(running.bootstrap, request.config)


_WIRE_SUMMARY = pytest.StashKey[str]()


def every_message_decodes(bootstrap: str, config: pytest.Config) -> None:
    """Fails the session when a message on a rodchain topic does not decode independently."""
    scan = scan_broker(bootstrap)
    config.stash[_WIRE_SUMMARY] = scan.summary()
    if scan.problems:
        shown = "\n  ".join(scan.problems[:20])
        more = f"\n  ... and {len(scan.problems) - 20} more" if len(scan.problems) > 20 else ""
        pytest.fail(
            f"the independent reader (tests/independent_avro.py) found {len(scan.problems)} problems "
            f"on the session broker's rodchain topics:\n  {shown}{more}",
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _WIRE_SUMMARY in config.stash:
        terminalreporter.write_line(config.stash[_WIRE_SUMMARY])


def _postgres_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


_POSTGRES = None


def postgres_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    global _POSTGRES
    if _POSTGRES is None:
        _POSTGRES = _postgres_available()
    if not _POSTGRES:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL.split('@')[-1]}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registrar.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, broker: str) -> Settings:
    """Settings for one test: its own data dir, database and topic prefix."""
    env = {
        "ROD_DATA_DIR": str(tmp_path / "var"),
        "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_DATABASE_URL": db_url,
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
    }
    return Settings.from_env(env)
