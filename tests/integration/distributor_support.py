"""Shared set-up of the distributor tests: a registrar with real events on rod.results.v1."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from services.distributor import ledger as ledger_tables
from services.distributor.decide import delivery_id
from services.distributor.feeds import DELIVERIES_TOPIC
from services.distributor.ledger import Ledger
from services.distributor.loop import Distributor
from services.distributor.subscriptions import DEFAULT_FILE
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.relay import Relay
from services.registrar.store import EventStore
from tests.support import read_topic

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
FEEDS = {
    "cibg-big": "rod.feed.cibg-big.v1",
    "mijnoverheid": "rod.feed.mijnoverheid.v1",
    "extract": "rod.feed.extract.v1",
}


@dataclass
class Chain:
    """A registrar, its relay and the distributor's ledger for one test."""

    settings: Settings
    registrar: Registrar
    relay: Relay
    ledger: Ledger

    def register(
        self,
        i: int,
        bsn: str | None = "111222333",
        onderwijsnummer: str | None = None,
        sector: str = "HO",
        programme: str = "56551",
    ) -> str:
        raw = {
            "institution": "25BE",
            "branch": "25BE01",
            "sector": sector,
            "programme_code": programme,
            "diploma_number": f"D{i}",
            "diploma_date": "2026-07-01",
        }
        if bsn:
            raw["bsn"] = bsn
        else:
            raw["onderwijsnummer"] = onderwijsnummer
        outcome = self.registrar.register(raw, "25BE")
        assert outcome.outcome == "accepted", outcome.codes
        return outcome.result_id

    def delete(self, result_id: str) -> str:
        outcome = self.registrar.delete(result_id, "ADMINISTRATIVE_ERROR", None, "25BE")
        assert outcome.outcome == "accepted", outcome.codes
        return outcome.event_id

    def publish(self) -> int:
        return self.relay.catch_up()

    def distributor(self, **options: Any) -> Distributor:
        options.setdefault("group", False)
        return Distributor(self.settings, self.settings.kafka_bootstrap, ledger=self.ledger, **options)

    def feed(self, name: str, at_least: int = 0, timeout: float = 20.0) -> list[dict]:
        return decoded(
            read_topic(
                self.settings.kafka_bootstrap, self.settings.topic(FEEDS[name]), at_least, timeout=timeout
            )
        )

    def receipts(self, at_least: int = 0) -> list[dict]:
        return decoded(
            read_topic(
                self.settings.kafka_bootstrap, self.settings.topic(DELIVERIES_TOPIC), at_least, timeout=20
            )
        )

    def decision_count(self) -> int:
        with self.ledger.reading() as conn:
            return conn.execute(select(func.count()).select_from(ledger_tables.decisions)).scalar_one()

    def decisions(self) -> list[Any]:
        with self.ledger.reading() as conn:
            return list(conn.execute(select(ledger_tables.decisions).order_by(ledger_tables.decisions.c.id)))


def make_chain(settings: Settings) -> Chain:
    store = EventStore(settings.database_urls["registrar"])
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    if registrar.institution("25BE") is None:
        registrar.add_institution("25BE", "Universiteit Test", ["HO", "MBO", "VO"])
    relay = Relay(store, settings, settings.kafka_bootstrap)
    relay.recover()
    return Chain(settings, registrar, relay, Ledger(settings.database_urls["distributor"]))


def close_chain(chain: Chain) -> None:
    chain.relay.close()
    chain.ledger.dispose()
    chain.registrar.store.dispose()


def subscriptions_file(tmp_path: Path, extra: str) -> Path:
    """The shipped subscriptions plus `extra` TOML, as a file for ROD_SUBSCRIPTIONS."""
    path = tmp_path / "subscriptions.toml"
    path.write_text(DEFAULT_FILE.read_text() + "\n" + extra)
    return path


def decoded(records: Iterable[Any]) -> list[dict]:
    codec = Codec()
    return [codec.decode(r.value)[1] for r in records]


def drain(distributor: Distributor, quiet_steps: int = 3, timeout: float = 60.0) -> int:
    """Step the distributor until it has read everything there is; returns events handled."""
    if not distributor.ready:
        distributor.start()
    deadline = time.monotonic() + timeout
    quiet = handled = 0
    while quiet < quiet_steps:
        assert time.monotonic() < deadline, "the distributor did not settle"
        step = distributor.step()
        handled += step.events
        quiet = 0 if step.events or distributor.backfills else quiet + 1
    return handled


def expected_id(subscription: str, event_id: str, kind: str = "DELIVERY") -> str:
    return delivery_id(subscription, event_id, kind)
