"""The HTTP feed and acknowledgements, as a downstream organisation without Kafka uses them:
a real API server, a real distributor on the local broker, SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastavro
import httpx
import pytest

from services.distributor.feed import FeedStore, encode_cursor
from services.distributor.loop import Distributor
from services.kernel.codec import HEADER_SIZE, SCHEMA_DIR
from services.kernel.settings import Settings
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from services.registrar.impact import ImpactReader
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.integration.distributor_support import Chain, close_chain, decoded, make_chain
from tests.support import read_topic

CIBG_FIELDS = {"delivery_id", "kind", "event_id", "result_id", "delivered_at", "withdraws", "person_kind",
               "person_number", "programme_code", "programme_name", "big_profession", "institution",
               "diploma_date", "diploma_number", "cursor"}


def wait_for(condition: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Downstream:
    api: RunningApi
    chain: Chain
    distributor: Distributor
    tokens: dict[str, str]  # consumer name -> token

    def feed(self, consumer: str = "cibg", **params: object) -> httpx.Response:
        subscription = {"cibg": "cibg-big", "mijn": "mijnoverheid"}[consumer]
        with httpx.Client(base_url=self.api.url, timeout=60,
                          headers={"Authorization": f"Bearer {self.tokens[consumer]}"}) as client:
            return client.get(f"/v1/feeds/{subscription}/messages", params=params)

    def acknowledge(self, cursor: str, consumer: str = "cibg") -> httpx.Response:
        with httpx.Client(base_url=self.api.url, timeout=60,
                          headers={"Authorization": f"Bearer {self.tokens[consumer]}"}) as client:
            return client.post("/v1/feeds/cibg-big/acknowledgements", json={"cursor": cursor})

    def everything(self, **params: object) -> list[dict]:
        """The whole cibg-big feed, page by page."""
        messages: list[dict] = []
        after = None
        while True:
            answer = self.feed(**params, **({"after": after} if after else {}))
            assert answer.status_code == 200, answer.text
            page = answer.json()
            if not page["messages"]:
                return messages
            messages += page["messages"]
            after = page["next"]


@contextmanager
def downstream(settings: Settings) -> Iterator[Downstream]:
    """API + registrar relay + a running distributor + the impact reader, two HTTP consumers."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    with running_api(settings) as api:
        chain = make_chain(api.settings)
        try:
            distributor = chain.distributor()
            reader = ImpactReader(api.api.impact_store, settings, settings.kafka_bootstrap or "")
            for target in (distributor.run, reader.run):
                thread = threading.Thread(target=target, args=(stop,), daemon=True)
                thread.start()
                threads.append(thread)
            wait_for(lambda: distributor.ready, what="the distributor")
            feeds = FeedStore(chain.ledger)
            subs = {"cibg-big", "mijnoverheid", "extract"}
            tokens = {"cibg": feeds.add_consumer("cibg", "cibg-big", subs),
                      "mijn": feeds.add_consumer("mijn", "mijnoverheid", subs)}
            yield Downstream(api, chain, distributor, tokens)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            close_chain(chain)


@pytest.fixture
def world(settings: Settings) -> Iterator[Downstream]:
    with downstream(settings) as running:
        yield running


def big(i: int) -> dict:
    return registration(diploma_number=f"BIG-{i}")


def test_the_feed_refuses_missing_foreign_and_other_kinds_of_tokens(world: Downstream) -> None:
    url = f"{world.api.url}/v1/feeds/cibg-big/messages"
    operator = add_operator(OperationsStore(world.api.settings.database_urls["operations"]), "olga", "test")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    for token in (world.api.tokens["25BE"], operator, world.tokens["mijn"]):
        answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403, answer.text
        assert answer.json()["errors"][0]["code"] == "TOKEN_FORBIDDEN"
    # a consumer token opens nothing else
    answer = httpx.post(f"{world.api.url}/v1/results", json=big(0),
                        headers={"Authorization": f"Bearer {world.tokens['cibg']}"})
    assert answer.status_code == 403
    assert world.feed().status_code == 200


def test_a_big_result_reaches_cibg_over_http_as_over_kafka_and_a_deletion_withdraws_it(
    world: Downstream,
) -> None:
    with world.api.client() as client:
        results = [client.post("/v1/results", json=big(i)).json()["result_id"] for i in range(3)]
        # not a BIG programme: never on cibg-big
        client.post("/v1/results", json=registration(diploma_number="VO-1", sector="VO",
                                                     programme_code="0090"))
    world.chain.publish()
    wait_for(lambda: len(world.everything()) == 3, what="three deliveries on the HTTP feed")
    with world.api.client() as client:
        deleted = client.post(f"/v1/results/{results[1]}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        assert deleted.status_code == 201, deleted.text
    world.chain.publish()
    wait_for(lambda: len(world.everything()) == 4, what="the withdrawal on the HTTP feed")

    over_http = world.everything()
    answer = world.feed()
    assert answer.headers["cache-control"] == "no-store"
    first = over_http[0]
    assert set(first) == CIBG_FIELDS  # exactly the entitled fields, the envelope and the cursor
    assert (first["kind"], first["person_number"], first["big_profession"]) == (
        "DELIVERY", "111222333", "arts")
    assert first["diploma_date"] == "2026-07-01" and first["delivered_at"].endswith("Z")
    over_kafka = world.chain.feed("cibg-big", at_least=4)
    # the same messages (Kafka orders per partition only, so compare as sets)
    assert sorted(m["delivery_id"] for m in over_http) == sorted(m["delivery_id"] for m in over_kafka)
    assert len({m["delivery_id"] for m in over_http}) == 4
    withdrawal = over_http[-1]
    delivered = next(m for m in over_http if m["result_id"] == results[1] and m["kind"] == "DELIVERY")
    assert withdrawal["kind"] == "WITHDRAWAL" and withdrawal["withdraws"] == delivered["delivery_id"]
    assert withdrawal["person_number"] is None

    one_by_one = world.everything(limit=1)
    assert [m["cursor"] for m in one_by_one] == [m["cursor"] for m in over_http]  # each once, in order

    # the mijnoverheid consumer sees its own fields (bsn, not person_number) and only its feed
    mijn = world.feed("mijn").json()["messages"]
    assert mijn and "bsn" in mijn[0] and "person_number" not in mijn[0] and "big_profession" not in mijn[0]


def test_cursors_of_another_feed_or_made_up_are_refused(world: Downstream) -> None:
    with world.api.client() as client:
        client.post("/v1/results", json=big(1))
    world.chain.publish()
    wait_for(lambda: world.feed().json()["messages"] and world.feed("mijn").json()["messages"],
             what="both feeds")
    mijn_cursor = world.feed("mijn").json()["messages"][0]["cursor"]
    not_yet = encode_cursor("cibg-big", 999)  # well formed, but no such position was handed out
    for cursor in ("garbage", mijn_cursor, "A" * 64, not_yet):
        answer = world.feed(after=cursor)
        assert answer.status_code == 400, (cursor, answer.text)
        assert answer.json()["errors"][0] == {"field": "after", "code": "CURSOR_INVALID",
                                              "message": answer.json()["errors"][0]["message"]}
        assert world.acknowledge(cursor).status_code == 400
    for params in ({"limit": 0}, {"limit": 1001}, {"wait": 31}):
        assert world.feed(**params).status_code == 422


def test_a_waiting_request_answers_within_a_second_of_a_delivery_or_empty_after_wait(
    world: Downstream,
) -> None:
    start = world.feed().json()["next"]
    began = time.monotonic()
    quiet = world.feed(after=start, wait=1.5)
    assert quiet.status_code == 200 and quiet.json() == {"messages": [], "next": start}
    assert 1.4 <= time.monotonic() - began < 4

    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(world.feed(after=start, wait=20)))
    waiting.start()
    time.sleep(0.5)
    with world.api.client() as client:
        client.post("/v1/results", json=big(7))
    world.chain.publish()
    wait_for(lambda: world.chain.ledger.counts().get("cibg-big", {}).get("delivered"), timeout=30,
             what="the delivery in the ledger")
    delivered = time.monotonic()
    waiting.join(25)
    assert answers and answers[0].json()["messages"], "the waiting request saw nothing"
    assert answers[0].elapsed.total_seconds() < 20
    assert time.monotonic() - delivered < 1.0


def test_acknowledgements_give_one_receipt_each_and_show_in_the_chain_impact(world: Downstream) -> None:
    with world.api.client() as client:
        results = [client.post("/v1/results", json=big(i)).json()["result_id"] for i in range(3)]
    world.chain.publish()
    wait_for(lambda: len(world.everything()) == 3, what="three deliveries")
    feed = world.everything()

    first = world.acknowledge(feed[1]["cursor"])
    assert first.status_code == 200 and first.json()["acknowledged"] == 2
    assert world.acknowledge(feed[1]["cursor"]).json()["acknowledged"] == 0  # a repeat
    assert world.acknowledge(feed[0]["cursor"]).json()["acknowledged"] == 0  # an older cursor

    def acknowledged() -> list[dict]:
        return [r for r in decoded(read_topic(world.chain.settings.kafka_bootstrap or "",
                                              world.chain.settings.topic("rod.deliveries.v1"), 0, timeout=5))
                if r["kind"] == "ACKNOWLEDGED"]

    wait_for(lambda: len(acknowledged()) == 2, timeout=30, what="two ACKNOWLEDGED receipts")
    time.sleep(2)  # the distributor's loop had its chance to send any more
    receipts = acknowledged()
    assert sorted(r["delivery_id"] for r in receipts) == sorted(m["delivery_id"] for m in feed[:2])
    assert all(r["message_kind"] == "DELIVERY" and r["acknowledged_at"] >= r["delivered_at"]
               for r in receipts)

    acked = feed[0]["result_id"]
    with world.api.client() as client:
        def impact() -> dict:
            answer = client.post(f"/v1/results/{acked}/deletions?dry_run=true", json={"reason": "OTHER",
                                                                                     "explanation": "x"})
            return answer.json()["impact"]

        wait_for(lambda: impact()["acknowledged"] == ["cibg-big"], timeout=60, what="the acknowledgement")
        seen = impact()
    cibg = next(d for d in seen["deliveries"] if d["subscription"] == "cibg-big")
    assert cibg["acknowledged_at"] and cibg["delivered_at"]
    assert "bevestigd" in seen["message"]
    assert feed[2]["result_id"] not in {r["result_id"] for r in receipts}
    assert {m["result_id"] for m in feed} == set(results)


def test_a_version_1_reader_decodes_the_version_2_receipt() -> None:
    v1 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "DeliveryReceipt.v1.avsc").read_text()),
                               named_schemas={})
    v2 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "DeliveryReceipt.v2.avsc").read_text()),
                               named_schemas={})
    from datetime import UTC, datetime

    from services.kernel.codec import Codec

    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    data = Codec().encode("DeliveryReceipt", {
        "delivery_id": "d", "subscription": "cibg-big", "kind": "ACKNOWLEDGED", "event_id": "e",
        "result_id": "r", "institution": "25BE", "delivered_at": moment, "acknowledged_at": moment,
        "message_kind": "DELIVERY"})
    old = fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), v2, v1)
    assert old == {"delivery_id": "d", "subscription": "cibg-big", "kind": "ACKNOWLEDGED", "event_id": "e",
                   "result_id": "r", "institution": "25BE", "delivered_at": moment}


def test_rod_consumer_add_prints_a_token_as_the_last_line(settings: Settings, tmp_path: Path) -> None:
    from tests.support import run_rod, settings_env

    env = settings_env(settings)
    added = run_rod("consumer", "add", "cibg-prod", "--subscription", "cibg-big", env=env, check=True)
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) > 30 and token not in added.stderr
    again = run_rod("consumer", "add", "cibg-prod", "--subscription", "cibg-big", env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    unknown = run_rod("consumer", "add", "x", "--subscription", "nobody", env=env)
    assert unknown.returncode == 1 and "no subscription" in unknown.stderr


def test_operators_see_each_consumer_its_last_fetch_and_what_waits_unacknowledged(
    world: Downstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import run_rod, settings_env

    with world.api.client() as client:
        for i in range(3):
            client.post("/v1/results", json=big(i))
    world.chain.publish()
    wait_for(lambda: len(world.everything()) == 3, what="three deliveries")
    world.acknowledge(world.everything()[0]["cursor"])
    env = {**settings_env(world.api.settings), "ROD_ACK_AGE_ALERT_SECONDS": "0"}

    shown = run_rod("topics", "--json", env=env)
    consumers = {c["name"]: c for c in json.loads(shown.stdout)["consumers"]}
    assert consumers["cibg"]["subscription"] == "cibg-big"
    assert consumers["cibg"]["unacknowledged"] == 2 and consumers["cibg"]["last_fetch_at"]
    assert consumers["cibg"]["oldest_unacknowledged_age_seconds"] >= 0
    assert consumers["cibg"]["last_acknowledged_at"] and consumers["cibg"]["acknowledged_by"] == "cibg"
    assert consumers["mijn"]["last_fetch_at"] is None
    screen = run_rod("topics", env=env)
    assert screen.returncode == 1
    assert "consumer cibg of cibg-big: 2 deliveries unacknowledged" in screen.stdout
    assert "HTTP FEED CONSUMERS" in screen.stdout

    operator = add_operator(OperationsStore(world.api.settings.database_urls["operations"]), "olga", "test")
    page = httpx.get(f"{world.api.url}/ops", headers={"Authorization": f"Bearer {operator}"}, timeout=60)
    assert page.status_code == 200
    row = page.text.split('id="consumer-cibg"', 1)[1].split("</tr>", 1)[0]
    assert "cibg-big" in row and ">2<" in row

    # an operator acknowledges for a consumer that confirmed by other means (a Kafka reader)
    last = world.everything()[-1]["cursor"]
    acked = run_rod("consumer", "ack", "cibg", "--cursor", last, env=env)
    assert acked.returncode == 0 and acked.stdout.strip() == "2 newly acknowledged on cibg-big"
    assert run_rod("consumer", "ack", "cibg", "--cursor", last, env=env).stdout.strip().startswith("0 ")
    refused = run_rod("consumer", "ack", "cibg", "--cursor", "garbage", env=env)
    assert refused.returncode == 1 and "not a cursor" in refused.stderr
