"""Dead letters end to end (real broker, real database, `rod` as a subprocess): every consuming
service records what it cannot process once and goes on; an operator lists, replays after a
fix (exactly once, a second replay changes nothing) or discards them, and each action is on
rod.operations.v1. No person number in any reason or listing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.distributor.feeds import DEADLETTER_TOPIC, DELIVERIES_TOPIC, RESULTS_TOPIC
from services.kernel import kafka
from services.kernel.codec import SCHEMA_DIR, Codec
from services.kernel.settings import Settings
from services.operations.actions import TOPIC as OPERATIONS_TOPIC
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.impact import ImpactReader, ImpactStore
from services.registrar.store import EventStore
from tests.integration.distributor_support import (
    CATALOGUE,
    FEEDS,
    Chain,
    close_chain,
    drain,
    make_chain,
)
from tests.support import PERSON_NUMBERS, read_topic, run_rod, settings_env

POISON = b"bsn 111222333 is not Avro"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def chain(settings: Settings) -> Iterator[Chain]:
    made = make_chain(settings)
    yield made
    close_chain(made)


def distribute(chain: Chain) -> int:
    distributor = chain.distributor()
    try:
        return drain(distributor)
    finally:
        distributor.close()


def audit(settings: Settings) -> Projection:
    projection = Projection(settings.database_urls["audit"])
    AuditReader(projection, settings, settings.kafka_bootstrap or "").catch_up()
    return projection


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    proc = run_rod("deadletter", "list", "--json", env=env, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def produce(settings: Settings, topic: str, value: bytes, key: bytes = b"poison") -> None:
    producer = kafka.producer(settings.kafka_bootstrap)
    producer.send(settings.topic(topic), key=key, value=value, partition=0).get(timeout=10)
    producer.close()


def wait_for(condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)
    return found


def feed_counts(chain: Chain, event_id: str) -> dict[str, int]:
    return {name: sum(m["event_id"] == event_id for m in chain.feed(name)) for name in FEEDS}


def operations(settings: Settings, at_least: int) -> list[dict[str, Any]]:
    codec = Codec()
    records = read_topic(settings.kafka_bootstrap or "", settings.topic(OPERATIONS_TOPIC), at_least)
    return [codec.decode(r.value)[1] for r in records]


def last_position(chain: Chain) -> int:
    return chain.registrar.store.last_position()


def assert_no_person_number(text: str) -> None:
    assert not [n for n in PERSON_NUMBERS if n in text]


def test_a_poison_message_is_one_dead_letter_per_consuming_service_and_the_next_event_goes_on(
    chain: Chain,
) -> None:
    settings, env = chain.settings, settings_env(chain.settings)
    produce(settings, RESULTS_TOPIC, POISON)
    good = chain.register(1)
    chain.publish()
    distribute(chain)
    assert [m["result_id"] for m in chain.feed("extract", 1)] == [good]  # the next event is delivered
    audit(settings).dispose()
    audit(settings).dispose()  # read again from its offsets: nothing new
    produce(settings, DELIVERIES_TOPIC, POISON)
    stop = threading.Event()
    reader = ImpactReader(ImpactStore(chain.registrar.store.engine), settings, settings.kafka_bootstrap or "")
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(x["service"] == "registrar" for x in listed(env)))
        time.sleep(1)  # the reader goes on: receipts after the poison are recorded
    finally:
        stop.set()
        thread.join(timeout=30)

    letters = listed(env)
    origins = {x["service"]: (x["origin"], x["reason"]["code"], x["status"], x["attempt"]) for x in letters}
    assert len(letters) == 3  # once per service, also after reading again
    results_origin = {"topic": RESULTS_TOPIC, "partition": 0, "offset": 0}
    assert origins["distributor"] == (results_origin, "NOT_SINGLE_OBJECT", "open", 1)
    assert origins["audit"] == (results_origin, "NOT_SINGLE_OBJECT", "open", 1)
    assert origins["registrar"][0]["topic"] == DELIVERIES_TOPIC
    assert origins["registrar"][1:] == ("NOT_SINGLE_OBJECT", "open", 1)
    # the receipt after the poison on rod.deliveries.v1 was still recorded
    assert reader.store.impact(good, chain.feed("extract", 1)[0]["event_id"]).consumers

    records = read_topic(settings.kafka_bootstrap or "", settings.topic(DEADLETTER_TOPIC), 3)
    assert len(records) == 3
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        assert (record.key, record.value) == (b"poison", POISON)  # the original bytes
        assert headers["rod.service"] in ("distributor", "audit", "registrar")
        assert headers["rod.attempt"] == "1"
        assert headers["__connect.errors.exception.message"].startswith("NOT_SINGLE_OBJECT: ")
        assert_no_person_number(json.dumps(headers))
        origin = origins[headers["rod.service"]][0]
        assert headers["__connect.errors.topic"] == settings.topic(origin["topic"])
        assert headers["__connect.errors.partition"] == str(origin["partition"])
        assert headers["__connect.errors.offset"] == str(origin["offset"])

    table = run_rod("deadletter", "list", env=env, check=True).stdout
    assert "3 open of 3" in table
    assert_no_person_number(table + json.dumps(letters))
    topics = run_rod("topics", "--json", env=env)
    assert topics.returncode == 1 and json.loads(topics.stdout)["deadletters"]["open"] == 3
    assert_no_person_number(topics.stdout)

    target = next(x["id"] for x in letters if x["service"] == "distributor")
    done = run_rod("deadletter", "discard", target, "--reason", "garbage from a test producer",
                   "--as", "nightshift", env=env, check=True)
    assert f"{target}: discarded" in done.stdout
    after = {x["id"]: x for x in listed(env)}
    assert len(after) == 3 and after[target]["status"] == "discarded"  # closed, still on record
    assert run_rod("deadletter", "discard", target, "--reason", "again", env=env).returncode == 1
    action = [a for a in operations(settings, 1) if a["action"] == "deadletter-discard"]
    assert [(a["target"], a["operator"], a["reason"]) for a in action][:1] == [
        (target, "nightshift", "garbage from a test producer")
    ]
    for other in [x["id"] for x in letters if x["id"] != target]:
        run_rod("deadletter", "discard", other, "--reason", "test garbage", env=env, check=True)
    topics = run_rod("topics", "--json", env=env)  # nothing open: rod topics no longer asks for attention
    assert json.loads(topics.stdout)["deadletters"]["open"] == 0 and topics.returncode == 0, topics.stdout


def _v2_schema(folder: Path) -> Path:
    """ResultRegistered v2: an added optional field with a default (a backward-compatible change)."""
    schema = json.loads((SCHEMA_DIR / "ResultRegistered.v1.avsc").read_text())
    fields = schema["fields"]
    fields.insert(len(fields) - 1, {"name": "honours", "type": ["null", "string"], "default": None})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ResultRegistered.v2.avsc"
    path.write_text(json.dumps(schema, indent=2))
    return folder


@SQLITE_ONLY
def test_an_event_with_a_schema_not_known_yet_is_replayed_after_the_fix_exactly_once(
    chain: Chain, tmp_path: Path
) -> None:
    settings, env = chain.settings, settings_env(chain.settings)
    schemas = _v2_schema(tmp_path / "schemas")
    # a registrar that already writes with the new schema; the consumers do not know it yet
    newer = EventStore(settings.database_urls["registrar"], codec=Codec(extra_dirs=[schemas]))
    ahead = Registrar(newer, Catalogue.load(CATALOGUE))
    raw = {"institution": "25BE", "branch": "25BE01", "sector": "HO", "programme_code": "56551",
           "diploma_number": "D2", "diploma_date": "2026-07-01", "bsn": "111222333"}
    outcome = ahead.register(raw, "25BE")
    assert outcome.outcome == "accepted"
    newer.dispose()
    control = chain.register(3)  # the same kind of result, written with the schema everybody knows
    chain.publish()
    distribute(chain)
    projection = audit(settings)
    letters = {x["service"]: x for x in listed(env)}
    assert {s: x["reason"]["code"] for s, x in letters.items()} == {
        "distributor": "SCHEMA_UNKNOWN", "audit": "SCHEMA_UNKNOWN"
    }
    assert projection.status().waiting_for == outcome.position  # the chain check sees the gap
    control_event = next(m["event_id"] for m in chain.feed("extract", 1) if m["result_id"] == control)
    wanted = {name: n for name, n in feed_counts(chain, control_event).items() if n}
    assert wanted and feed_counts(chain, outcome.event_id) == dict.fromkeys(FEEDS, 0)

    ids = sorted(x["id"] for x in letters.values())
    dry = run_rod("deadletter", "replay", "--all", "--dry-run", env=env, check=True).stdout
    for x in letters.values():
        assert f"{x['id']}: would replay" in dry and f"offset {x['origin']['offset']}" in dry
    assert [x["status"] for x in listed(env)] == ["open", "open"]  # a dry run changes nothing

    # without the fix the replay fails again: still open, attempt 2, published again
    failed = run_rod("deadletter", "replay", *ids, "--reason", "try before the fix", env=env)
    assert failed.returncode == 1 and "failed: SCHEMA_UNKNOWN" in failed.stdout
    assert {(x["status"], x["attempt"]) for x in listed(env)} == {("open", 2)}
    again = read_topic(settings.kafka_bootstrap or "", settings.topic(DEADLETTER_TOPIC), 4)
    assert sorted(dict(r.headers)["rod.attempt"] for r in again) == [b"1", b"1", b"2", b"2"]

    # the audit service keeps running meanwhile: it must see the gap filled by the replay
    projection.dispose()
    live = AuditReader(Projection(settings.database_urls["audit"]), settings, settings.kafka_bootstrap or "")
    assert live.projection.check.waiting_for == outcome.position
    stop = threading.Event()
    running = threading.Thread(target=live.run, args=(stop,), daemon=True)
    running.start()

    fixed = {**env, "ROD_SCHEMA_PATH": str(schemas)}
    decisions = chain.decision_count()
    first = run_rod("deadletter", "replay", *ids, "--reason", "v2 schema deployed", "--as", "alice",
                    env=fixed, check=True)
    assert first.stdout.count(": replayed: ") == 2, first.stdout
    assert {x["status"] for x in listed(env)} == {"replayed"}
    delivered = chain.decision_count() - decisions
    assert delivered == len(FEEDS)  # one new decision per subscription, delivered or skipped
    assert {n: c for n, c in feed_counts(chain, outcome.event_id).items() if c} == wanted  # exactly once

    second = run_rod("deadletter", "replay", *ids, "--reason", "once more", env=fixed, check=True)
    assert second.stdout.count(": not open: already replayed") == 2
    time.sleep(1)
    assert chain.decision_count() - decisions == delivered  # no new decision
    assert {n: c for n, c in feed_counts(chain, outcome.event_id).items() if c} == wanted  # no new message
    try:
        wait_for(lambda: live.projection.check.waiting_for is None, timeout=30)
    finally:
        stop.set()
        running.join(timeout=30)
    status = live.projection.status()
    assert status.waiting_for is None and not status.breaks  # the gap is filled, the chain verified
    assert status.verified == last_position(chain)
    live.projection.dispose()

    actions = [a for a in operations(settings, 6) if a["action"] == "deadletter-replay"]
    by_alice = [a for a in actions if a["operator"] == "alice"]
    assert sorted(a["target"] for a in by_alice) == ids
    assert all(a["outcome"].startswith("replayed") and a["reason"] == "v2 schema deployed" for a in by_alice)
    assert_no_person_number(json.dumps(actions, default=str) + first.stdout + json.dumps(listed(env)))


@SQLITE_ONLY
def test_a_replayed_registration_whose_deletion_was_decided_first_is_never_delivered(
    chain: Chain, tmp_path: Path
) -> None:
    settings, env = chain.settings, settings_env(chain.settings)
    schemas = _v2_schema(tmp_path / "schemas")
    newer = EventStore(settings.database_urls["registrar"], codec=Codec(extra_dirs=[schemas]))
    raw = {"institution": "25BE", "branch": "25BE01", "sector": "HO", "programme_code": "56551",
           "diploma_number": "D9", "diploma_date": "2026-07-01", "bsn": "111222333"}
    registered = Registrar(newer, Catalogue.load(CATALOGUE)).register(raw, "25BE")
    newer.dispose()
    deletion = chain.delete(registered.result_id)  # a deletion every service can read
    chain.publish()
    distribute(chain)
    letter = next(x for x in listed(env) if x["service"] == "distributor")
    assert letter["reason"]["code"] == "SCHEMA_UNKNOWN"
    assert {r.reason for r in chain.decisions() if r.event_id == deletion} == {"NOT_DELIVERED"}

    fixed = {**env, "ROD_SCHEMA_PATH": str(schemas)}
    done = run_rod("deadletter", "replay", letter["id"], env=fixed)
    assert done.returncode == 0, done.stdout
    assert "its deletion was decided first" in done.stdout
    rows = [r for r in chain.decisions() if r.event_id == registered.event_id]
    assert {(r.state, r.reason) for r in rows} == {("skipped", "DELETED_FIRST")} and len(rows) == len(FEEDS)
    assert feed_counts(chain, registered.event_id) == dict.fromkeys(FEEDS, 0)  # never delivered
    assert {x["id"]: x["status"] for x in listed(env)}[letter["id"]] == "replayed"
