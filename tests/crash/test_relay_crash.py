"""The relay killed with SIGKILL at random moments while publishing: nothing lost, order kept."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.relay import RESULTS_TOPIC, Relay
from services.registrar.store import EventStore
from tests.fixtures.bulkfiles import write_csv
from tests.support import CRASH_KILLS, LOG_SINK, read_topic, run_rod, settings_env

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
EVENTS = 20_000
KILLS = CRASH_KILLS
PEOPLE = ["111222333", "123456782", "249566758", "319072356"]


def _fill(settings: Settings, tmp_path: Path) -> EventStore:
    store = EventStore(settings.database_urls["registrar"])
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Universiteit Test", ["HO"])
    file = tmp_path / "events.csv"
    rows = (
        {
            "bsn": PEOPLE[i % 4],
            "instellingscode": "25BE",
            "vestigingscode": "25BE01",
            "sector": "HO",
            "opleidingscode": "56551",
            "diplomavolgnummer": f"K{i}",
            "diplomadatum": "2026-07-01",
        }
        for i in range(EVENTS // 2)
    )
    write_csv(file, rows)
    registrar.import_file(file, "25BE")
    # delete every result again: each result then has two events whose order matters
    deletions = tmp_path / "deletions.csv"
    write_csv(
        deletions,
        (
            {
                "actie": "verwijderen",
                "bsn": PEOPLE[i % 4],
                "instellingscode": "25BE",
                "vestigingscode": "25BE01",
                "sector": "HO",
                "opleidingscode": "56551",
                "diplomavolgnummer": f"K{i}",
                "diplomadatum": "2026-07-01",
                "reden": "ADMINISTRATIVE_ERROR",
            }
            for i in range(EVENTS // 2)
        ),
    )
    registrar.import_file(deletions, "25BE")
    assert store.last_position() == EVENTS
    return store


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_relay_survives_sigkill_at_random_moments(settings: Settings, tmp_path: Path) -> None:
    store = _fill(settings, tmp_path)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    env = settings_env(settings)
    rod = Path(sys.executable).with_name("rod")
    rng = random.Random(20261123)
    killed_midway = 0
    for _ in range(KILLS):
        before = relay.published_position()
        if before == EVENTS:  # all out: publish everything again, so kills land mid-publication
            relay.rewind(1)
            before = relay.published_position()
        proc = subprocess.Popen([str(rod), "relay"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The relay publishes 20,000 events in well under a second: wait until it has begun
        # (or ended), then kill it a random moment later.
        deadline = time.monotonic() + 30
        while relay.published_position() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        LOG_SINK.write((out + err).decode())
        after = relay.published_position()
        killed_midway += before < after < EVENTS
    assert killed_midway >= KILLS // 4, "too few kills landed while publishing"
    run_rod("relay", env=env, check=True)
    assert relay.published_position() == EVENTS

    stored = {e.event_id: e for e in store.events_after(0, EVENTS)}
    records = read_topic(settings.kafka_bootstrap, settings.topic(RESULTS_TOPIC), EVENTS, timeout=120)
    codec = Codec()
    seen: dict[str, int] = {}  # result_id -> last version seen first time
    first_seen: set[str] = set()
    for record in records:
        event = codec.decode(record.value)[1]
        original = stored[event["event_id"]]
        assert record.value == original.payload  # a duplicate is only ever the same event again
        if event["event_id"] in first_seen:
            continue
        first_seen.add(event["event_id"])
        assert event["version"] == seen.get(event["result_id"], 0) + 1, "events of a result out of order"
        seen[event["result_id"]] = event["version"]
    assert first_seen == set(stored), f"{len(set(stored) - first_seen)} events missing from the topic"
