"""The distributor killed with SIGKILL at random moments; two distributors, one killed halfway.

Afterwards: exactly one ledger decision per (subscription, event), every feed holds every
expected delivery_id at least once and nothing else, every due withdrawal is there, and the
receipts match the feeds.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.distributor import ledger as tables
from services.distributor.decide import delivery_id
from services.distributor.feeds import DELIVERIES_TOPIC
from services.distributor.ledger import Ledger
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.relay import Relay
from services.registrar.store import EventStore
from tests.fixtures.bulkfiles import COLUMNS, write_csv
from tests.support import CRASH_KILLS, LOG_SINK, read_topic, run_rod, settings_env

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
BSNS = ["111222333", "123456782", "249566758", "319072356"]
LEARNERS = ["101222331", "106071665"]  # onderwijsnummers: never on mijnoverheid
FEEDS = {
    "cibg-big": "rod.feed.cibg-big.v1",
    "mijnoverheid": "rod.feed.mijnoverheid.v1",
    "extract": "rod.feed.extract.v1",
}
ROD = Path(sys.executable).with_name("rod")


def _fill(store: EventStore, tmp_path: Path, rounds: int, per_round: int) -> None:
    """`rounds` imports of registrations, each followed by deletions of a quarter of them."""
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Universiteit Test", ["HO"])
    registrations = per_round * 4 // 5
    for r in range(rounds):
        numbers = range(r * registrations, (r + 1) * registrations)

        def row(i: int) -> dict[str, str]:
            person = {"bsn": BSNS[i % 4]} if i % 3 else {"onderwijsnummer": LEARNERS[i % 2]}
            return {
                **person,
                "instellingscode": "25BE",
                "vestigingscode": "25BE01",
                "sector": "HO",
                "opleidingscode": "56551" if i % 2 else "50625",
                "diplomavolgnummer": f"C{i}",
                "diplomadatum": "2026-07-01",
            }

        write_csv(tmp_path / "reg.csv", (row(i) for i in numbers), columns=COLUMNS)
        registrar.import_file(tmp_path / "reg.csv", "25BE")
        write_csv(
            tmp_path / "del.csv",
            (
                {**row(i), "actie": "verwijderen", "reden": "ADMINISTRATIVE_ERROR"}
                for i in numbers
                if i % 4 == 0
            ),
            columns=COLUMNS,
        )
        registrar.import_file(tmp_path / "del.csv", "25BE")
    assert store.last_position() == rounds * per_round


def _expected(store: EventStore) -> dict[str, set[str]]:
    """Every delivery_id each feed must hold, derived from the events alone."""
    codec = Codec()
    expected: dict[str, set[str]] = defaultdict(set)
    had: dict[tuple[str, str], bool] = {}
    for stored in store.events_after(0, 10**9):
        name, event = codec.decode(stored.payload)
        for sub in FEEDS:
            if name == "ResultRegistered":
                gets = {
                    "cibg-big": bool(event["big_profession"]),
                    "mijnoverheid": event["person_kind"] == "BSN",
                    "extract": True,
                }[sub]
                had[(sub, event["event_id"])] = gets
                if gets:
                    expected[sub].add(delivery_id(sub, event["event_id"], "DELIVERY"))
            elif had[(sub, event["registered_event_id"])]:
                expected[sub].add(delivery_id(sub, event["event_id"], "WITHDRAWAL"))
    return expected


def _decisions(ledger: Ledger) -> tuple[int, int]:
    """(rows, distinct (subscription, event_id)) in the ledger."""
    with ledger.reading() as conn:
        rows = conn.execute(select(func.count()).select_from(tables.decisions)).scalar_one()
        distinct = conn.execute(
            select(func.count()).select_from(
                select(tables.decisions.c.subscription, tables.decisions.c.event_id).distinct().subquery()
            )
        ).scalar_one()
    return rows, distinct


def _check_feeds(settings: Settings, store: EventStore, ledger: Ledger, events: int) -> None:
    rows, distinct = _decisions(ledger)
    assert rows == distinct == events * len(FEEDS), "not exactly one decision per (subscription, event)"
    expected = _expected(store)
    codec = Codec()
    receipts: set[str] = set()
    for record in read_topic(
        settings.kafka_bootstrap,
        settings.topic(DELIVERIES_TOPIC),
        sum(map(len, expected.values())),
        timeout=120,
    ):
        receipts.add(codec.decode(record.value)[1]["delivery_id"])
    for sub, topic in FEEDS.items():
        messages = [
            codec.decode(r.value)[1]
            for r in read_topic(
                settings.kafka_bootstrap, settings.topic(topic), len(expected[sub]), timeout=120
            )
        ]
        ids = {m["delivery_id"] for m in messages}
        assert ids == expected[sub], (
            f"{sub}: {len(expected[sub] - ids)} missing, {len(ids - expected[sub])} extra"
        )
        first_kind: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for m in messages:  # per result, a withdrawal never overtakes its delivery
            if m["delivery_id"] not in seen:
                seen.add(m["delivery_id"])
                first_kind[m["result_id"]].append(m["kind"])
        assert all(kinds in (["DELIVERY"], ["DELIVERY", "WITHDRAWAL"]) for kinds in first_kind.values())
    assert receipts == set().union(*expected.values())


def _start(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`rod distribute`; its log goes to a pipe, or to `log` when nobody reads it for a while."""
    err = log.open("wb") if log else subprocess.PIPE
    return subprocess.Popen([str(ROD), "distribute", *args], env=env, stdout=subprocess.PIPE, stderr=err)


def _wait_for(proc: subprocess.Popen[bytes], marker: bytes) -> None:
    """Read the process's log until `marker` (the lines read join the log scan)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        LOG_SINK.write(line.decode())
        if marker in line:
            return


def _kill(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    LOG_SINK.write(((out or b"") + (err or b"")).decode())
    return (err or b"").decode()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_distributor_survives_sigkill_at_random_moments(settings: Settings, tmp_path: Path) -> None:
    kills, per_round = CRASH_KILLS, 1000
    store = EventStore(settings.database_urls["registrar"])
    _fill(store, tmp_path, kills, per_round)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    relay.recover()
    env = {
        **settings_env(settings),
        "ROD_DISTRIBUTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'distributor.db'}",
    }
    ledger = Ledger(env["ROD_DISTRIBUTOR_DATABASE_URL"])
    rng = random.Random(20261123)
    midway = 0
    for k in range(kills):
        relay.publish_once(limit=per_round)  # the log grows while the distributor is killed again and again
        proc = _start(env, "--solo")
        if k % 4 == 3:  # now and then during start-up and recovery
            time.sleep(rng.uniform(0.3, 1.5))
        elif k % 4 == 0:  # now and then once it decided this round's events (so the next kills
            _wait_for(proc, b"distributor_partitions_taken")  # land with work done and work left)
            deadline = time.monotonic() + 60
            while _decisions(ledger)[0] < relay.published_position() * len(FEEDS):
                assert time.monotonic() < deadline, "the distributor decided nothing for a minute"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.2))
        else:  # mostly while it decides and publishes: it is fast, so wait until it reads
            _wait_for(proc, b"distributor_partitions_taken")
            time.sleep(rng.uniform(0.0, 0.4))
        _kill(proc)
        decided, _ = _decisions(ledger)
        midway += 0 < decided < relay.published_position() * len(FEEDS)
    assert relay.published_position() == kills * per_round
    assert midway >= kills // 4, f"only {midway} kills landed while there was work"
    run_rod("distribute", "--solo", "--until-idle", "3", env=env, check=True, timeout=300)
    _check_feeds(settings, store, ledger, kills * per_round)
    relay.close()


@pytest.mark.slow
def test_two_distributors_one_killed_halfway_record_each_decision_once(
    settings: Settings, tmp_path: Path
) -> None:
    events = 12_000
    store = EventStore(settings.database_urls["registrar"])
    _fill(store, tmp_path, 6, events // 6)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    relay.recover()
    relay.catch_up()
    env = settings_env(settings)
    ledger = Ledger(settings.database_urls["distributor"])
    survivor_log, victim_log = tmp_path / "survivor.log", tmp_path / "victim.log"
    survivor = _start(env, log=survivor_log)
    victim = _start(env, log=victim_log)
    try:
        deadline = time.monotonic() + 90
        while "distributor_partitions_taken" not in victim_log.read_text():  # both in the group now
            assert victim.poll() is None and time.monotonic() < deadline, "the victim never held partitions"
            time.sleep(0.05)
        time.sleep(0.3)
        assert _decisions(ledger)[0] < events * len(FEEDS), "all was decided before the victim was killed"
        _kill(victim)
        LOG_SINK.write(victim_log.read_text())
        while _decisions(ledger)[0] < events * len(FEEDS):  # the survivor takes the victim's partitions over
            assert survivor.poll() is None and time.monotonic() < deadline + 60, "the survivor did not finish"
            time.sleep(0.2)
        _check_feeds(settings, store, ledger, events)
        survivor.send_signal(signal.SIGINT)
        survivor.communicate(timeout=60)
        assert survivor.returncode == 0, "SIGINT did not stop the distributor cleanly"
    finally:  # a failed check must not leave a distributor running into the next tests
        for proc in (survivor, victim):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    LOG_SINK.write(survivor_log.read_text())
    taken = [
        json.loads(line)["partitions"]
        for line in survivor_log.read_text().splitlines()
        if "distributor_partitions_taken" in line
    ]
    assert taken[-1] == [0, 1, 2, 3, 4, 5], "the survivor did not take the victim's partitions over"
    relay.close()
