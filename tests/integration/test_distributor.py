"""The distributor against the real local broker and SQLite/PostgreSQL: who gets what, and never retract."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from services.distributor import ledger as tables
from services.distributor.feeds import DEADLETTER_TOPIC, RESULTS_TOPIC
from services.distributor.subscriptions import load
from services.kernel import kafka
from services.kernel.broker import LocalBroker, free_port
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from tests.integration.distributor_support import (
    FEEDS,
    Chain,
    close_chain,
    decoded,
    drain,
    expected_id,
    make_chain,
    subscriptions_file,
)
from tests.support import read_topic, run_rod, settings_env

ENVELOPE = {"delivery_id", "kind", "event_id", "result_id", "delivered_at", "withdraws"}
CIBG_FIELDS = {
    "person_kind",
    "person_number",
    "programme_code",
    "programme_name",
    "big_profession",
    "institution",
    "diploma_date",
    "diploma_number",
}
EXTRACT_FIELDS = {
    "person_kind",
    "person_number",
    "institution",
    "branch",
    "provider",
    "sector",
    "programme_code",
    "programme_name",
    "big_profession",
    "diploma_number",
    "diploma_date",
    "registered_at",
}
LEARNER = "101222331"  # an onderwijsnummer
# storage behaviour is covered on both databases by the other tests; these are about feed logic
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def chain(settings: Settings) -> Iterator[Chain]:
    made = make_chain(settings)
    yield made
    close_chain(made)


def distribute(chain: Chain, **options: object) -> int:
    distributor = chain.distributor(**options)
    try:
        return drain(distributor)
    finally:
        distributor.close()


def by_kind(messages: list[dict], kind: str) -> dict[str, dict]:
    return {m["result_id"]: m for m in messages if m["kind"] == kind}


def test_each_feed_gets_only_its_results_and_only_its_fields(chain: Chain) -> None:
    big = chain.register(1)  # HO B Geneeskunde: BIG profession arts, BSN
    law = chain.register(2, programme="50625")  # HO, no BIG profession
    learner = chain.register(3, bsn=None, onderwijsnummer=LEARNER)  # BIG, onderwijsnummer
    chain.publish()
    assert distribute(chain) == 3

    cibg = {m["result_id"]: m for m in chain.feed("cibg-big", 2)}
    assert set(cibg) == {big, learner}
    assert set(cibg[big]) == ENVELOPE | CIBG_FIELDS
    assert (cibg[big]["big_profession"], cibg[big]["kind"], cibg[big]["withdraws"]) == (
        "arts",
        "DELIVERY",
        None,
    )

    mijn = {m["result_id"]: m for m in chain.feed("mijnoverheid", 2)}
    assert set(mijn) == {big, law}  # the onderwijsnummer result never reaches MijnOverheid
    assert set(mijn[law]) == ENVELOPE | {"bsn", "programme_name", "sector", "institution", "diploma_date"}
    assert mijn[law]["bsn"] == "111222333"

    extract = {m["result_id"]: m for m in chain.feed("extract", 3)}
    assert set(extract) == {big, law, learner}
    assert set(extract[learner]) == ENVELOPE | EXTRACT_FIELDS
    for name, feed in (("cibg-big", cibg), ("mijnoverheid", mijn), ("extract", extract)):
        for message in feed.values():
            assert message["delivery_id"] == expected_id(name, message["event_id"])

    receipts = chain.receipts(7)
    assert sorted((r["subscription"], r["result_id"], r["kind"]) for r in receipts) == sorted(
        [
            ("cibg-big", big, "DELIVERY"),
            ("cibg-big", learner, "DELIVERY"),
            ("mijnoverheid", big, "DELIVERY"),
            ("mijnoverheid", law, "DELIVERY"),
            ("extract", big, "DELIVERY"),
            ("extract", law, "DELIVERY"),
            ("extract", learner, "DELIVERY"),
        ]
    )
    assert {r["delivery_id"] for r in receipts} == {
        m["delivery_id"] for feed in (cibg, mijn, extract) for m in feed.values()
    }
    assert chain.decision_count() == 9  # every (subscription, event), the skipped ones too


def test_a_deletion_after_delivery_is_one_withdrawal_per_consumer_that_had_it(chain: Chain) -> None:
    big = chain.register(1)
    law = chain.register(2, programme="50625")
    chain.publish()
    assert distribute(chain) == 2
    deletions = {big: chain.delete(big), law: chain.delete(law)}
    chain.publish()
    assert distribute(chain) == 2

    expected = {"cibg-big": {big}, "mijnoverheid": {big, law}, "extract": {big, law}}
    for name, results in expected.items():
        feed = chain.feed(name, 2 * len(results))
        delivered, withdrawn = by_kind(feed, "DELIVERY"), by_kind(feed, "WITHDRAWAL")
        assert Counter(m["kind"] for m in feed) == {"DELIVERY": len(results), "WITHDRAWAL": len(results)}
        assert set(withdrawn) == results
        for result_id, notice in withdrawn.items():
            assert notice["event_id"] == deletions[result_id]
            assert notice["withdraws"] == delivered[result_id]["delivery_id"]
            assert notice["delivery_id"] == expected_id(name, deletions[result_id], "WITHDRAWAL")
            assert all(notice[f] is None for f in set(notice) - ENVELOPE)  # no personal data again
    receipts = chain.receipts(10)
    assert sorted(
        (r["subscription"], r["result_id"]) for r in receipts if r["kind"] == "WITHDRAWAL"
    ) == sorted((name, r) for name, results in expected.items() for r in results)
    # the ledger keeps that the results were delivered before they were deleted
    rows = {(r.subscription, r.event_id): r for r in chain.decisions()}
    for name, results in expected.items():
        for result_id in results:
            delivered = [
                r
                for r in rows.values()
                if r.subscription == name and r.result_id == result_id and r.kind == "DELIVERY"
            ]
            assert [r.state for r in delivered] == ["published"]
            assert rows[(name, deletions[result_id])].kind == "WITHDRAWAL"
    assert rows[("cibg-big", deletions[law])].state == "skipped"  # never had it: nothing to withdraw


@SQLITE_ONLY
def test_a_registration_after_deletion_is_delivered_as_new(chain: Chain) -> None:
    first = chain.register(1)
    chain.publish()
    distribute(chain)
    chain.delete(first)
    again = chain.register(1)  # the same result again after its deletion: a new version
    assert again == first
    chain.publish()
    distribute(chain)
    feed = [m for m in chain.feed("cibg-big", 3) if m["result_id"] == first]
    assert [m["kind"] for m in feed] == ["DELIVERY", "WITHDRAWAL", "DELIVERY"]
    assert len({m["delivery_id"] for m in feed}) == 3


HELD = """
[[subscription]]
name = "held-hour"
topic = "rod.feed.held-hour.v1"
schema = "CibgBigFeedMessage"
filter = { present = ["big_profession"] }
fields = ["person_kind", "person_number", "programme_code", "programme_name", "big_profession",
          "institution", "diploma_date", "diploma_number"]
hold = "PT1H"

[[subscription]]
name = "held-short"
topic = "rod.feed.held-short.v1"
schema = "ExtractFeedMessage"
filter = { equals = { person_kind = "ONDERWIJSNUMMER" } }
fields = ["person_kind", "person_number", "institution", "branch", "provider", "sector",
          "programme_code", "programme_name", "big_profession", "diploma_number", "diploma_date",
          "recorded_at"]
rename = { recorded_at = "registered_at" }
hold = "PT4S"
"""


@SQLITE_ONLY
def test_a_deletion_within_the_hold_window_means_never_delivered(chain: Chain, tmp_path: Path) -> None:
    subs = load(subscriptions_file(tmp_path, HELD), Codec())
    topics = {s.name: s.topic for s in subs}
    kept = chain.register(1, bsn=None, onderwijsnummer=LEARNER)
    deleted = chain.register(2)
    registered_at = time.monotonic()
    chain.publish()
    distribute(chain, subscriptions=subs)
    chain.delete(deleted)
    chain.publish()
    distribute(chain, subscriptions=subs)
    assert time.monotonic() - registered_at < 4, "too slow to delete within the window"
    rows = {(r.subscription, r.result_id, r.kind): r for r in chain.decisions()}
    assert rows[("held-hour", deleted, "DELIVERY")].state == "cancelled"
    assert rows[("held-hour", kept, "DELIVERY")].state == "held"
    assert rows[("held-short", kept, "DELIVERY")].state == "held"

    time.sleep(max(0.0, registered_at + 4.5 - time.monotonic()))
    distribute(chain, subscriptions=subs)  # a new process: the due hold is released after a restart
    short = decoded(read_topic(chain.settings.kafka_bootstrap, chain.settings.topic(topics["held-short"]), 1))
    assert [(m["result_id"], m["kind"]) for m in short] == [(kept, "DELIVERY")]
    hour = decoded(
        read_topic(chain.settings.kafka_bootstrap, chain.settings.topic(topics["held-hour"]), 0, timeout=3)
    )
    assert hour == []  # one still held, the other never delivered
    receipts = chain.receipts(1)
    assert not [r for r in receipts if r["subscription"] == "held-hour"]
    assert [(r["result_id"], r["kind"]) for r in receipts if r["subscription"] == "held-short"] == [
        (kept, "DELIVERY")
    ]
    # meanwhile the feeds without a hold delivered and withdrew as usual
    assert {m["kind"] for m in chain.feed("cibg-big", 3) if m["result_id"] == deleted} == {
        "DELIVERY",
        "WITHDRAWAL",
    }


@SQLITE_ONLY
def test_pause_keeps_the_place_and_a_deletion_while_paused_is_never_delivered(chain: Chain) -> None:
    env = settings_env(chain.settings)
    kept = chain.register(1)
    deleted = chain.register(2)
    chain.publish()
    run_rod("subscription", "pause", "mijnoverheid", "--reason", "test", env=env, check=True)
    distribute(chain)
    chain.delete(deleted)
    chain.publish()
    distribute(chain)
    assert chain.feed("mijnoverheid", 0, timeout=3) == []
    assert {m["result_id"] for m in chain.feed("cibg-big", 3)} == {kept, deleted}
    run_rod("subscription", "resume", "mijnoverheid", env=env, check=True)
    distribute(chain)
    mijn = chain.feed("mijnoverheid", 1)
    assert [(m["result_id"], m["kind"]) for m in mijn] == [(kept, "DELIVERY")]
    listed = {
        row["name"]: row
        for row in map(
            json.loads, run_rod("subscription", "list", "--json", env=env, check=True).stdout.splitlines()
        )
    }
    assert (listed["mijnoverheid"]["state"], listed["mijnoverheid"]["delivered"]) == ("running", 1)
    assert listed["mijnoverheid"]["cancelled"] == 1
    assert (listed["cibg-big"]["delivered"], listed["cibg-big"]["withdrawn"]) == (2, 1)


@SQLITE_ONLY
def test_a_poison_message_goes_to_the_dead_letters_and_the_next_one_is_delivered(chain: Chain) -> None:
    settings = chain.settings
    producer = kafka.producer(settings.kafka_bootstrap)
    receipt = Codec().encode(
        "DeliveryReceipt",
        {
            "delivery_id": "x",
            "subscription": "x",
            "kind": "DELIVERY",
            "event_id": "e",
            "result_id": "r",
            "institution": "25BE",
            "delivered_at": 0,
        },
    )
    producer.send(
        settings.topic(RESULTS_TOPIC), key=b"poison", value=b"bsn 111222333 is not Avro", partition=0
    )
    producer.send(settings.topic(RESULTS_TOPIC), key=b"foreign", value=receipt, partition=0)
    producer.flush()
    producer.close()
    good = chain.register(1)
    chain.publish()
    assert distribute(chain) == 1
    assert [m["result_id"] for m in chain.feed("extract", 1)] == [good]
    letters = read_topic(settings.kafka_bootstrap, settings.topic(DEADLETTER_TOPIC), 2)
    assert [r.key for r in letters] == [b"poison", b"foreign"]
    assert letters[0].value == b"bsn 111222333 is not Avro"  # the original bytes, untouched
    headers = [dict((k, v.decode()) for k, v in r.headers) for r in letters]
    assert headers[0]["__connect.errors.topic"] == settings.topic(RESULTS_TOPIC)
    assert (headers[0]["__connect.errors.partition"], headers[0]["__connect.errors.offset"]) == ("0", "0")
    assert headers[1]["__connect.errors.offset"] == "1"
    assert headers[0]["__connect.errors.exception.message"].startswith("NOT_SINGLE_OBJECT")
    assert headers[1]["__connect.errors.exception.message"].startswith("EVENT_TYPE_UNKNOWN")
    assert headers[0]["__connect.errors.exception.class.name"].endswith("DecodeError")
    assert (headers[0]["rod.service"], headers[0]["rod.attempt"]) == ("distributor", "1")
    assert not any("111222333" in v for h in headers for v in h.values())
    stored = chain.ledger.deadletter_list()
    assert [(x.error_code, x.status) for x in stored] == [
        ("NOT_SINGLE_OBJECT", "open"),
        ("EVENT_TYPE_UNKNOWN", "open"),
    ]
    assert distribute(chain) == 0  # read again by nobody: the cursor moved past them
    assert len(chain.ledger.deadletter_list()) == 2


def test_reading_the_log_again_decides_nothing_twice(chain: Chain) -> None:
    results = [chain.register(i, programme="56551" if i % 2 else "50625") for i in range(10)]
    for result_id in results[:4]:
        chain.delete(result_id)
    chain.publish()
    assert distribute(chain) == 14
    before = [tuple(r) for r in chain.decisions()]
    feeds = {name: len(chain.feed(name, 1)) for name in FEEDS}
    # the consumer group's offsets are gone (another group id): the ledger's cursor still holds
    assert distribute(chain, group=True, group_id="rod-distributor-new") == 0
    # the ledger's cursor is gone too: everything is read again, nothing decided again
    with chain.ledger.writing() as conn:
        conn.execute(update(tables.cursors).values(next_offset=0, last_digest=None))
    assert distribute(chain) == 14
    assert [tuple(r) for r in chain.decisions()] == before
    assert {name: len(chain.feed(name, 1)) for name in FEEDS} == feeds


@SQLITE_ONLY
def test_replay_resends_one_feed_and_leaves_the_others_and_the_decisions_alone(chain: Chain) -> None:
    results = [chain.register(i) for i in range(6)]
    chain.delete(results[0])
    chain.publish()
    distribute(chain)
    before = [tuple(r) for r in chain.decisions()]
    cibg = chain.feed("cibg-big", 7)
    others = {name: chain.feed(name, 1) for name in ("mijnoverheid", "extract")}
    receipts = len(chain.receipts(1))
    replay = run_rod(
        "subscription",
        "replay",
        "cibg-big",
        "--reason",
        "consumer lost data",
        env=settings_env(chain.settings),
        check=True,
    )
    assert "7 messages sent" in replay.stdout
    again = chain.feed("cibg-big", 14)
    assert Counter(m["delivery_id"] for m in again) == {m["delivery_id"]: 2 for m in cibg}
    replayed = [m for m in again if m["result_id"] == results[0]]  # per result, in the order of the log
    assert [m["kind"] for m in replayed] == ["DELIVERY", "WITHDRAWAL"] * 2
    assert {name: chain.feed(name, 1) for name in others} == others
    assert len(chain.receipts(1)) == receipts  # a replay repeats messages, not deliveries
    # a downstream organisation reading the feed drops the repeats by delivery_id
    tail = run_rod("feed", "tail", "cibg-big", "--idle", "1", env=settings_env(chain.settings), check=True)
    printed = [json.loads(line) for line in tail.stdout.splitlines()]
    assert sorted(m["delivery_id"] for m in printed) == sorted(m["delivery_id"] for m in cibg)
    assert {m["person_number"] for m in printed if m["kind"] == "DELIVERY"} == {"******333"}  # masked
    assert [tuple(r) for r in chain.decisions()] == before
    distribute(chain)  # the running distributor picks the feed up where it was
    assert [tuple(r) for r in chain.decisions()] == before


NEW = """
[[subscription]]
name = "cibg-copy"
topic = "rod.feed.cibg-copy.v1"
schema = "CibgBigFeedMessage"
filter = { present = ["big_profession"] }
fields = ["person_kind", "person_number", "programme_code", "programme_name", "big_profession",
          "institution", "diploma_date", "diploma_number"]
start = "beginning"

[[subscription]]
name = "mijn-now"
topic = "rod.feed.mijn-now.v1"
schema = "MijnOverheidFeedMessage"
filter = { equals = { person_kind = "BSN" } }
fields = ["person_number", "programme_name", "sector", "institution", "diploma_date"]
rename = { person_number = "bsn" }
start = "now"
"""


@SQLITE_ONLY
def test_a_new_subscription_backfills_from_the_beginning_or_starts_now(chain: Chain, tmp_path: Path) -> None:
    old = [chain.register(i) for i in range(5)]
    chain.delete(old[0])
    chain.publish()
    distribute(chain)
    decided = chain.decision_count()
    subs = load(subscriptions_file(tmp_path, NEW), Codec())
    distributor = chain.distributor(subscriptions=subs)
    try:
        drain(distributor)  # the backfill runs beside the live feeds
        new = chain.register(9)
        chain.publish()
        drain(distributor)
    finally:
        distributor.close()
    copy = decoded(
        read_topic(chain.settings.kafka_bootstrap, chain.settings.topic("rod.feed.cibg-copy.v1"), 7)
    )
    assert Counter(m["kind"] for m in copy) == {"DELIVERY": 6, "WITHDRAWAL": 1}
    now = decoded(read_topic(chain.settings.kafka_bootstrap, chain.settings.topic("rod.feed.mijn-now.v1"), 1))
    assert [m["result_id"] for m in now] == [new]
    # 3 old subscriptions x 1 new event, the backfill of 7 events, start-now: nothing before it began
    assert chain.decision_count() == decided + 3 + 7 + 1


def test_a_broker_that_lost_its_data_gets_every_feed_back_from_the_ledger(
    settings: Settings, tmp_path: Path
) -> None:
    with LocalBroker() as first:
        chain = make_chain(_on(settings, first.bootstrap))
        results = [chain.register(i, programme="56551" if i % 2 else "50625") for i in range(8)]
        chain.delete(results[1])
        chain.publish()
        chain.relay.rewind(1)
        chain.publish()  # every event twice on this broker: the offsets move on the next one
        distribute(chain)
        before = [tuple(r) for r in chain.decisions()]
        feeds = {name: {m["delivery_id"] for m in chain.feed(name, 1)} for name in FEEDS}
        receipts = {r["delivery_id"] for r in chain.receipts(1)}
        close_chain(chain)
    with LocalBroker() as second:  # memory storage: it starts empty
        chain = make_chain(_on(settings, second.bootstrap))
        chain.relay.recover()
        chain.publish()
        distribute(chain)
        assert {name: {m["delivery_id"] for m in chain.feed(name, 1)} for name in FEEDS} == feeds
        assert {r["delivery_id"] for r in chain.receipts(1)} == receipts
        assert [tuple(r) for r in chain.decisions()] == before
        # the log was rebuilt at other offsets: an event after it is still decided and delivered
        later = chain.register(99)
        chain.publish()
        distribute(chain)
        assert later in {m["result_id"] for m in chain.feed("extract", len(feeds["extract"]) + 1)}
        assert chain.decision_count() == len(before) + 3
        close_chain(chain)


def _on(settings: Settings, bootstrap: str) -> Settings:
    return Settings(
        settings.data_dir, bootstrap, settings.database_urls, settings.catalogue, settings.topic_prefix
    )


@SQLITE_ONLY
def test_a_broker_outage_makes_it_wait_and_retry_and_nothing_is_dropped(settings: Settings) -> None:
    port = free_port()
    first = LocalBroker(port)
    first.start()
    chain = make_chain(_on(settings, first.bootstrap))
    early = [chain.register(i) for i in range(4)]
    chain.publish()
    distributor = chain.distributor()
    distributor.check_every = 1.0
    errors: list[Exception] = []
    stop = threading.Event()
    worker = threading.Thread(target=distributor.run, args=(stop,), kwargs={"on_error": errors.append})
    worker.start()
    second = None
    try:
        _wait(lambda: chain.decision_count() == 12)
        first.stop()  # the broker goes away, and comes back empty (memory storage)
        late = [chain.register(10 + i) for i in range(4)]  # stored meanwhile, not yet published
        _wait(lambda: bool(errors), timeout=60)
        second = LocalBroker(port)
        second.start()
        chain.relay.close()
        chain.relay.recover()
        chain.publish()
        _wait(lambda: chain.decision_count() == 24, timeout=90)
        extract = {m["result_id"] for m in chain.feed("extract", 8)}
        assert extract == set(early + late)  # the feed lost with the broker is back, and the new ones
    finally:
        stop.set()
        worker.join(60)
        distributor.close()
        close_chain(chain)
        for broker in (first, second):
            if broker:
                broker.stop()
    assert len({(r.subscription, r.event_id) for r in chain.decisions()}) == 24


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
