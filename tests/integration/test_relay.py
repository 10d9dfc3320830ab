"""The outbox relay against the real local broker: order, progress, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kernel.broker import LocalBroker
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.relay import RESULTS_TOPIC, Relay
from services.registrar.store import EventStore
from tests.support import read_topic

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"


def fill(store: EventStore, count: int) -> list[str]:
    """`count` results registered, every third one deleted again; returns event ids in order."""
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    if registrar.institution("25BE") is None:
        registrar.add_institution("25BE", "Universiteit Test", ["HO"])
    for i in range(count):
        outcome = registrar.register(
            {"bsn": "123456782", "institution": "25BE", "branch": "25BE01", "sector": "HO",
             "programme_code": "56551", "diploma_number": f"R{i}", "diploma_date": "2026-07-01"},
            "25BE",
        )
        if i % 3 == 0:
            registrar.delete(outcome.result_id, "ADMINISTRATIVE_ERROR", None, "25BE")
    return [e.event_id for e in store.events_after(0, 10**9)]


def decoded(records: list) -> list[dict]:
    codec = Codec()  # the schemas in schemas/avro/ are all a reader needs
    return [codec.decode(r.value)[1] for r in records]


def test_relay_publishes_every_event_in_store_order_per_result(settings: Settings) -> None:
    store = EventStore(settings.database_urls["registrar"])
    event_ids = fill(store, 30)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    assert relay.recover() is False  # a fresh topic and nothing recorded: nothing to recover
    assert relay.catch_up() == len(event_ids)
    assert relay.published_position() == len(event_ids)
    assert relay.catch_up() == 0
    relay.close()
    events = decoded(read_topic(settings.kafka_bootstrap, settings.topic(RESULTS_TOPIC), len(event_ids)))
    assert sorted(e["event_id"] for e in events) == sorted(event_ids)
    by_result: dict[str, list[int]] = {}
    for e in events:
        by_result.setdefault(e["result_id"], []).append(e["version"])
    assert all(versions == sorted(versions) for versions in by_result.values())


def test_relay_publishes_again_when_the_broker_lost_its_data(settings: Settings, tmp_path: Path) -> None:
    store = EventStore(settings.database_urls["registrar"])
    event_ids = fill(store, 12)
    with LocalBroker() as first:
        relay = Relay(store, settings, first.bootstrap)
        relay.recover()
        relay.catch_up()
        relay.close()
    with LocalBroker() as second:  # memory storage: starts empty, as after `rod up` restarts
        relay = Relay(store, settings, second.bootstrap)
        assert relay.recover() is True
        relay.catch_up()
        relay.close()
        events = decoded(read_topic(second.bootstrap, settings.topic(RESULTS_TOPIC), len(event_ids)))
    assert sorted(e["event_id"] for e in events) == sorted(event_ids)


def test_relay_on_an_intact_topic_does_not_republish(settings: Settings) -> None:
    store = EventStore(settings.database_urls["registrar"])
    fill(store, 9)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    relay.catch_up()
    relay.close()
    again = Relay(store, settings, settings.kafka_bootstrap)
    assert again.recover() is False
    again.close()


@pytest.mark.parametrize("from_position", [1, 5])
def test_rewind_publishes_again_from_a_position(settings: Settings, from_position: int) -> None:
    store = EventStore(settings.database_urls["registrar"])
    event_ids = fill(store, 6)
    relay = Relay(store, settings, settings.kafka_bootstrap)
    relay.catch_up()
    relay.rewind(from_position)
    assert relay.catch_up() == len(event_ids) - from_position + 1
    relay.close()
