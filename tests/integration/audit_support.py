"""Events at chosen times for the audit tests: a valid hash chain built with the kernel's seal,
receipts and extracts, all produced to a test's own (prefixed) topics on the real broker.

The registrar stamps `recorded_at` with the present; a year of history at chosen instants (23:30
on 30 April, Amsterdam time) is built here the way the registrar builds it: the same codec, the
same chain. Person numbers are domain.md's documented ones only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.kernel import chain, kafka
from services.kernel.codec import Codec
from services.kernel.settings import Settings

AMS = ZoneInfo("Europe/Amsterdam")
_NS = uuid.UUID("9a0e5b7c-61f4-4c0e-8d0b-2f6a3d9c1e42")
PROGRAMMES = {"HO": ("56551", "B Geneeskunde", "arts"), "VO": ("0090", "Praktijkonderwijs", None),
              "MBO": ("25655", "Verzorgende IG", None)}


def ams(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    """An instant given in Dutch local time."""
    return datetime(year, month, day, hour, minute, tzinfo=AMS)


@dataclass
class Scripted:
    """A growing log: results events (sealed), receipts and extracts, ready to produce."""

    codec: Codec = field(default_factory=Codec)
    prev: bytes = chain.GENESIS
    results: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    receipts: list[tuple[bytes, bytes]] = field(default_factory=list)
    extracts: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    def _seal(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        record["position"] = len(self.results) + 1
        payload, self.prev = chain.seal(self.codec, name, record, self.prev)
        self.results.append((record["result_id"].encode(), payload))
        self.events.append({"name": name, **record})
        return record

    def register(self, institution: str, sector: str, at: datetime, person: str = "111222333",
                 kind: str = "BSN") -> dict[str, Any]:
        self.counter += 1
        result_id = str(uuid.uuid5(_NS, f"result-{self.counter}"))
        code, name, big = PROGRAMMES[sector]
        return self._seal("ResultRegistered", {
            "event_id": str(uuid.uuid5(_NS, f"{result_id}/1")), "result_id": result_id, "version": 1,
            "recorded_at": at, "institution": institution, "batch_id": None, "person_kind": kind,
            "person_number": person, "branch": f"{institution}01", "provider": None, "sector": sector,
            "programme_code": code, "programme_name": name, "big_profession": big,
            "diploma_number": f"D-{self.counter}", "diploma_date": date(2024, 7, 1), "warnings": [],
        })

    def delete(self, registered: dict[str, Any], at: datetime, reason: str) -> dict[str, Any]:
        version = registered["version"] + 1
        return self._seal("ResultDeleted", {
            "event_id": str(uuid.uuid5(_NS, f"{registered['result_id']}/{version}")),
            "result_id": registered["result_id"], "version": version, "recorded_at": at,
            "institution": registered["institution"], "batch_id": None,
            "registered_event_id": registered["event_id"], "reason": reason,
            "explanation": "toelichting" if reason in ("FRAUD", "OTHER") else None,
        })

    def deliver(self, registered: dict[str, Any], subscription: str, at: datetime,
                kind: str = "DELIVERY") -> None:
        record = {"delivery_id": str(uuid.uuid5(_NS, f"{subscription}/{registered['event_id']}/{kind}")),
                  "subscription": subscription, "kind": kind, "event_id": registered["event_id"],
                  "result_id": registered["result_id"], "institution": registered["institution"],
                  "delivered_at": at}
        self.receipts.append((registered["result_id"].encode(), self.codec.encode("DeliveryReceipt", record)))

    def acknowledge(self, registered: dict[str, Any], subscription: str, delivered: datetime,
                    at: datetime) -> None:
        """The consumer confirmed the delivery (a version 2 receipt, as the distributor writes it)."""
        record = {"delivery_id": str(uuid.uuid5(_NS, f"{subscription}/{registered['event_id']}/DELIVERY")),
                  "subscription": subscription, "kind": "ACKNOWLEDGED", "event_id": registered["event_id"],
                  "result_id": registered["result_id"], "institution": registered["institution"],
                  "delivered_at": delivered, "acknowledged_at": at, "message_kind": "DELIVERY"}
        self.receipts.append((registered["result_id"].encode(), self.codec.encode("DeliveryReceipt", record)))

    def extract(self, registered: dict[str, Any], at: datetime) -> None:
        record = {"extract_id": str(uuid.uuid5(_NS, f"extract/{registered['event_id']}/{at.isoformat()}")),
                  "result_id": registered["result_id"], "event_id": registered["event_id"],
                  "institution": registered["institution"], "issued_at": at}
        self.extracts.append((registered["result_id"].encode(), self.codec.encode("ExtractIssued", record)))

    def tamper(self, position: int, **changes: Any) -> None:
        """Change an event's contents after sealing, keeping its hash (what a forger would do)."""
        name, record = self.codec.decode(self.results[position - 1][1])
        self.results[position - 1] = (self.results[position - 1][0],
                                      self.codec.encode(name, {**record, **changes}))

    def produce(self, settings: Settings, bootstrap: str, twice: bool = False) -> None:
        """Send everything to the test's topics (`twice`: every message again, as after a restart)."""
        kafka.ensure_topics(settings, bootstrap, ["rod.results.v1", "rod.deliveries.v1", "rod.extracts.v1"])
        producer = kafka.producer(bootstrap)
        try:
            for topic, messages in (("rod.results.v1", self.results), ("rod.deliveries.v1", self.receipts),
                                    ("rod.extracts.v1", self.extracts)):
                for _ in range(2 if twice else 1):
                    for key, value in messages:
                        producer.send(settings.topic(topic), key=key, value=value)
            producer.flush()
        finally:
            producer.close()


@dataclass
class Year:
    """The scripted year and what its reports must show."""

    log: Scripted
    deleted_in: dict[str, dict[str, list[str]]]  # period → institution → deleted result ids
    boundary: dict[str, str]  # name → result id


def scripted_year() -> Year:
    """Nov 2024 – Nov 2025 for three institutions: registrations, every reason in both periods,
    deletions either side of both period boundaries, deliveries and extracts before and after."""
    log = Scripted()
    deleted: dict[str, dict[str, list[str]]] = {"2025-05": {}, "2025-11": {}, "2026-05": {}}
    boundary: dict[str, str] = {}
    people = ["111222333", "123456782", "249566758", "319072356", "101222331", "106071665"]

    def reg(inst: str, sector: str, at: datetime, i: int) -> dict[str, Any]:
        person = people[i % len(people)]
        return log.register(inst, sector, at, person, "ONDERWIJSNUMMER" if person.startswith("10") else "BSN")

    def delete(period: str, r: dict[str, Any], at: datetime, reason: str) -> dict[str, Any]:
        deleted[period].setdefault(r["institution"], []).append(r["result_id"])
        return log.delete(r, at, reason)

    reasons = ["FRAUD", "ADMINISTRATIVE_ERROR", "EXTRA_COURSES_OR_GRADE_IMPROVEMENT", "WRONG_PERSON_OR_DATA",
               "OTHER"]
    winter, summer = {}, {}
    for i in range(12):  # 25BE: HO and VO; 30XX: HO; 40MB: MBO; registrations in both periods
        winter[("25BE", i)] = reg("25BE", "HO" if i % 3 else "VO", ams(2024, 11 + i % 2, 3 + i), i)
        winter[("30XX", i)] = reg("30XX", "HO", ams(2025, 1, 5 + i), i + 1)
        if i < 6:
            winter[("40MB", i)] = reg("40MB", "MBO", ams(2025, 2, 2 + i), i + 2)
        summer[("25BE", i)] = reg("25BE", "HO", ams(2025, 5, 3 + i), i + 3)
        summer[("30XX", i)] = reg("30XX", "HO", ams(2025, 6, 3 + i), i + 4)

    # winter period 2025-05: every reason at 25BE, two at 30XX
    for i, reason in enumerate(reasons):
        r = winter[("25BE", i)]
        if i == 0:
            log.deliver(r, "cibg-big", ams(2024, 12, 20))  # reached CIBG before the deletion
            log.acknowledge(r, "cibg-big", ams(2024, 12, 20), ams(2024, 12, 20, 15))  # CIBG confirmed it
            log.extract(r, ams(2024, 12, 21))  # and an extract was issued
        if i == 1:
            log.deliver(r, "mijnoverheid", ams(2025, 3, 30))  # after the deletion: does not count
        delete("2025-05", r, ams(2025, 3, 1 + i), reason)
    for i, reason in enumerate(["FRAUD", "OTHER"]):
        delete("2025-05", winter[("30XX", i)], ams(2025, 2, 10 + i), reason)
    # the boundaries: 30 April 23:30 (CEST) is still winter's, 1 May 00:30 is summer's
    boundary["apr30"] = delete("2025-05", winter[("25BE", 7)], ams(2025, 4, 30, 23, 30), "OTHER")["result_id"]
    boundary["may1"] = delete("2025-11", winter[("25BE", 8)], ams(2025, 5, 1, 0, 30),
                              "ADMINISTRATIVE_ERROR")["result_id"]
    # summer period 2025-11: every reason at 30XX, one at 40MB
    for i, reason in enumerate(reasons):
        r = summer[("30XX", i)]
        log.deliver(r, "mijnoverheid", ams(2025, 6, 20))
        log.deliver(r, "extract", ams(2025, 6, 20))
        if i == 0:  # confirmed only after the deletion: does not count
            log.acknowledge(r, "mijnoverheid", ams(2025, 6, 20), ams(2025, 7, 30))
        if i == 2:
            log.extract(r, ams(2025, 10, 1))  # after the deletion: does not count
        delete("2025-11", r, ams(2025, 7, 1 + i), reason)
    delete("2025-11", winter[("40MB", 0)], ams(2025, 8, 15), "EXTRA_COURSES_OR_GRADE_IMPROVEMENT")
    # 31 October 23:30 (CET, after the clocks went back) is summer's, 1 November 00:30 is the next
    boundary["oct31"] = delete("2025-11", summer[("25BE", 0)], ams(2025, 10, 31, 23, 30),
                               "FRAUD")["result_id"]
    boundary["nov1"] = delete("2026-05", summer[("25BE", 1)], ams(2025, 11, 1, 0, 30), "OTHER")["result_id"]
    reg("25BE", "HO", ams(2025, 11, 20), 0)  # the log goes on after both periods closed
    return Year(log, deleted, boundary)
