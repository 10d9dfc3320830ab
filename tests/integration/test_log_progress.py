"""How far the log is, as operators read it (issue 15, item 6): the registrar's `/metrics`
lines and the `log` object of `rod topics` and `/ops`, from real stores on SQLite and PostgreSQL
while the tree builder, the signer and the publisher's outbox move."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.metrics import Metrics
from services.registrar.store import EventStore
from services.registrar.transparency import progress
from services.registrar.transparency.checkpoint import Signer
from services.registrar.transparency.keys import LogIdentity
from services.registrar.transparency.service import LogService
from tests.integration.apiserver import CATALOGUE
from tests.integration.test_metrics import samples

ORIGIN = "rodchain.test/log"


@pytest.fixture
def registrar(db_url: str) -> Iterator[Registrar]:
    store = EventStore(db_url)
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Instelling 25BE", ["HO"])
    yield registrar
    store.dispose()


@pytest.fixture
def service(registrar: Registrar, tmp_path: Path) -> LogService:
    settings = Settings.from_env(env={"ROD_DATABASE_URL": registrar.store.url},
                                 data_dir=str(tmp_path / "var"))
    identity = LogIdentity(ORIGIN, Signer.generate(ORIGIN), "test")
    return LogService(settings, None, store=registrar.store, identity=identity)


def register(registrar: Registrar, first: int, count: int) -> None:
    for n in range(first, first + count):
        raw = {"bsn": "111222333", "institution": "25BE", "branch": "25BE01", "sector": "HO",
               "programme_code": "56551", "diploma_number": f"P-{n}", "diploma_date": "2026-07-01"}
        registrar.register(raw, "25BE")


def scrape(store: EventStore) -> dict[str, float]:
    """The registrar's own `/metrics` lines (no labels) as a name → value map."""
    found = samples(generate_latest(Metrics(store).own).decode())
    return {name: values[0][1] for name, values in found.items() if name.startswith("rod_log_")}


def reading(store: EventStore) -> progress.LogProgress:
    with store.reading() as conn:
        return progress.read(conn)


def test_the_log_s_progress_follows_the_builder_the_signer_and_the_outbox(
    registrar: Registrar, service: LogService
) -> None:
    store = registrar.store
    assert scrape(store) == {"rod_log_tree_size": 0, "rod_log_tree_behind_events": 0,
                             "rod_log_checkpoint_tree_size": 0, "rod_log_checkpoint_behind_events": 0,
                             "rod_log_checkpoint_age_seconds": math.inf, "rod_log_checkpoints_unpublished": 0}
    assert not reading(store).stalled(datetime.now(UTC), limit=0)  # nothing waits: nothing is due

    register(registrar, 0, 5)
    before = scrape(store)
    assert before["rod_log_tree_behind_events"] == 5 and before["rod_log_checkpoint_behind_events"] == 5
    assert before["rod_log_checkpoint_age_seconds"] == math.inf  # never signed: the alert's age is endless
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert reading(store).status(datetime.now(UTC)) == "OK"  # the log component has time to start
    assert reading(store).status(later) == "NOT_STARTED"  # nothing stopped: it never ran
    assert not reading(store).stalled(later)

    service.build()
    service.sign_due(force=True)
    after = scrape(store)
    assert (after["rod_log_tree_size"], after["rod_log_tree_behind_events"]) == (5, 0)
    assert (after["rod_log_checkpoint_tree_size"], after["rod_log_checkpoint_behind_events"]) == (5, 0)
    assert 0 <= after["rod_log_checkpoint_age_seconds"] < 5
    assert after["rod_log_checkpoints_unpublished"] == 1  # no broker here: it waits in the outbox
    view = reading(store).view(datetime.now(UTC))
    assert view["status"] == "OK" and view["unsigned_events"] == 0 and view["checkpoint_tree_size"] == 5
    assert reading(store).status(later + timedelta(days=1)) == "OK"  # nothing waits: nothing is due

    # the tree moves on, the signer does not: events wait outside the newest checkpoint
    register(registrar, 5, 3)
    service.build()
    found = scrape(store)
    assert (found["rod_log_tree_size"], found["rod_log_tree_behind_events"]) == (8, 0)
    assert (found["rod_log_checkpoint_tree_size"], found["rod_log_checkpoint_behind_events"]) == (5, 3)
    stuck = reading(store)
    assert stuck.view(datetime.now(UTC) + timedelta(seconds=61))["status"] == "STALLED"
    assert stuck.view(datetime.now(UTC) + timedelta(seconds=61))["oldest_unsigned_age_seconds"] >= 61
    assert not stuck.stalled(datetime.now(UTC))

    service.sign_due(force=True)
    assert scrape(store)["rod_log_checkpoints_unpublished"] == 2
    service.checkpoints.mark_published({5: (0, 0)})
    assert scrape(store)["rod_log_checkpoints_unpublished"] == 1
    service.checkpoints.mark_published({8: (0, 1)})
    assert scrape(store)["rod_log_checkpoints_unpublished"] == 0
    assert not reading(store).stalled(datetime.now(UTC) + timedelta(days=1))  # every event is signed


def test_a_quiet_night_then_one_event_is_no_stall_until_it_has_waited(
    registrar: Registrar, service: LogService
) -> None:
    register(registrar, 0, 2)
    service.build()
    service.sign_due(force=True)
    register(registrar, 2, 1)  # the checkpoint is (as if) a night old, the event new
    night = reading(store := registrar.store)
    now = datetime.now(UTC)
    assert night.age(now + timedelta(hours=8)) > 60
    assert not night.stalled(now + timedelta(seconds=30))  # the event waited 30 s: the signer has time
    assert night.stalled(now + timedelta(seconds=61))
    assert reading(store).view(now)["unsigned_events"] == 1
