"""The audit service's projection and report generation (issue 5's benchmark).

Synthetic log on a local broker: N events on rod.results.v1 (a valid hash chain over one
year, 1 November to 31 October, 1,000 institutions, 1% of events deletions of an earlier
registration) and one delivery receipt per registration on rod.deliveries.v1. Then, in one run:
- baseline: one consumer reading the same topics and decoding every message, nothing more;
- projection: `AuditReader.catch_up()` into an empty database (decode, recompute and check
  every event's hash, insert-if-absent, chain state and offsets per batch), messages/s and
  the ratio against the baseline (goal: at least 0.5);
- reports: every report of one period (each institution's CSV, JSON and HTML, and the
  national overview), seconds (goal: under 30 s), then the same once more to show the bodies
  are byte-identical.

Usage: .venv/bin/python bench/report.py [--events N] [--institutions N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.audit.periods import Period  # noqa: E402
from services.audit.projection import Projection  # noqa: E402
from services.audit.reader import DELIVERIES_TOPIC, RESULTS_TOPIC, AuditReader  # noqa: E402
from services.audit.reports import ReportWriter  # noqa: E402
from services.kernel import chain, kafka  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import LocalBroker  # noqa: E402
from services.kernel.codec import Codec  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402

START = datetime(2024, 11, 1, 12, tzinfo=UTC)
SPAN = timedelta(days=364)
PEOPLE = ["111222333", "123456782", "249566758", "319072356", "101222331", "106071665"]
SECTORS = [("HO", "56551", "B Geneeskunde", "arts"), ("MBO", "25655", "Verzorgende IG", None),
           ("VO", "0090", "Praktijkonderwijs", None)]
NS = uuid.UUID("0b0e1d5c-7a4f-5b3e-9d2c-6f8a1e4b3c21")


def uuid7(at: datetime, rng: random.Random) -> str:
    """A UUIDv7 as the registrar makes result ids: milliseconds first, so ids sort by time."""
    value = (int(at.timestamp() * 1000) << 80) | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def institution_code(i: int) -> str:
    return f"{i % 100:02d}{chr(65 + (i // 100) % 26)}{chr(65 + (i // 2600) % 26)}"


def generate(settings: Settings, bootstrap: str, events: int, institutions: int) -> tuple[int, int]:
    """Produce the synthetic log; returns (result events, receipts)."""
    codec = Codec()
    rng = random.Random(5)
    producer = kafka.producer(bootstrap)
    results_topic, deliveries_topic = settings.topic(RESULTS_TOPIC), settings.topic(DELIVERIES_TOPIC)
    prev = chain.GENESIS
    live: list[tuple[str, str, str]] = []  # (result_id, event_id, institution) not deleted yet
    receipts = 0
    step = SPAN / events
    for position in range(1, events + 1):
        at = START + step * (position - 1)
        if position % 100 == 0 and live:
            result_id, event_id, institution = live.pop(rng.randrange(max(0, len(live) - 5000), len(live)))
            record = {"event_id": str(uuid.uuid5(NS, f"{result_id}/2")), "result_id": result_id, "version": 2,
                      "position": position, "recorded_at": at, "institution": institution, "batch_id": None,
                      "registered_event_id": event_id, "reason": rng.choice(
                          ["FRAUD", "ADMINISTRATIVE_ERROR", "EXTRA_COURSES_OR_GRADE_IMPROVEMENT",
                           "WRONG_PERSON_OR_DATA", "OTHER"]), "explanation": "bench"}
            payload, prev = chain.seal(codec, "ResultDeleted", record, prev)
        else:
            i = rng.randrange(institutions)
            institution = institution_code(i)
            sector, code, name, big = SECTORS[i % 3]
            result_id = uuid7(at, rng)
            person = PEOPLE[position % len(PEOPLE)]
            record = {"event_id": str(uuid.uuid5(NS, f"{result_id}/1")), "result_id": result_id, "version": 1,
                      "position": position, "recorded_at": at, "institution": institution, "batch_id": None,
                      "person_kind": "ONDERWIJSNUMMER" if person.startswith("10") else "BSN",
                      "person_number": person, "branch": f"{institution}01", "provider": None,
                      "sector": sector, "programme_code": code, "programme_name": name, "big_profession": big,
                      "diploma_number": f"B-{position}", "diploma_date": at.date(), "warnings": []}
            payload, prev = chain.seal(codec, "ResultRegistered", record, prev)
            live.append((result_id, record["event_id"], institution))
            receipt = {"delivery_id": str(uuid.uuid5(NS, f"extract/{record['event_id']}")),
                       "subscription": "extract", "kind": "DELIVERY", "event_id": record["event_id"],
                       "result_id": result_id, "institution": institution,
                       "delivered_at": at + timedelta(seconds=1)}
            producer.send(deliveries_topic, key=result_id.encode(),
                          value=codec.encode("DeliveryReceipt", receipt))
            receipts += 1
        producer.send(results_topic, key=result_id.encode(), value=payload)
    producer.flush()
    producer.close()
    return events, receipts


def baseline(settings: Settings, bootstrap: str, expected: int) -> tuple[float, int]:
    """Seconds to consume and decode every message of the two topics, with no processing, and how
    many it read (the local broker may hold back a partition's last batch: it stops after 10 s of
    nothing new)."""
    codec = Codec()
    consumer = kafka.consumer(bootstrap, group_id=None, max_poll_records=5000)
    partitions = [TopicPartition(settings.topic(t), p) for t in (RESULTS_TOPIC, DELIVERIES_TOPIC)
                  for p in sorted(consumer.partitions_for_topic(settings.topic(t)) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    start = last = time.perf_counter()
    seen = 0
    while seen < expected and time.perf_counter() - last < 10:
        for records in consumer.poll(timeout_ms=200, max_records=5000).values():
            for r in records:
                codec.decode(r.value)
            seen += len(records)
            last = time.perf_counter()
    consumer.close()
    return last - start, seen


def reports(projection: Projection, settings: Settings, period: Period) -> tuple[float, dict[str, str]]:
    """Seconds to write every report of `period`, and the digests of the bodies written."""
    start = time.perf_counter()
    written = ReportWriter(projection, settings, None).write(period, datetime(2026, 1, 1, tzinfo=UTC))
    elapsed = time.perf_counter() - start
    return elapsed, {f"{w.scope}.{f}": d for w in written for f, d in w.sha256.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--institutions", type=int, default=1000)
    parser.add_argument("--postgres", default=None, help="also build the projection on this PostgreSQL URL")
    args = parser.parse_args()
    rod_logging.configure(stream=open("/dev/null", "w"), json=True)  # noqa: SIM115 - the bench's own noise
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        settings = Settings.from_env({"ROD_DATA_DIR": tmp, "ROD_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "ROD_TOPIC_PREFIX": "bench."})
        kafka.ensure_topics(settings, broker.bootstrap, [RESULTS_TOPIC, DELIVERIES_TOPIC, "rod.extracts.v1"])
        start = time.perf_counter()
        events, receipts = generate(settings, broker.bootstrap, args.events, args.institutions)
        total = events + receipts
        print(f"generated {events:,} result events + {receipts:,} receipts = {total:,} messages "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        base, seen = baseline(settings, broker.bootstrap, total)
        print(f"baseline  consume + decode:       {seen / base:>9,.0f} msg/s ({base:.1f} s, {seen:,} read)",
              flush=True)
        urls = [("sqlite", f"sqlite:///{Path(tmp) / 'audit.db'}")]
        if args.postgres:
            urls.append(("postgres", args.postgres))
        for name, url in urls:
            projection = Projection(url)
            start = time.perf_counter()
            read = AuditReader(projection, settings, broker.bootstrap).catch_up()
            built = time.perf_counter() - start
            status = projection.status()
            assert not status.breaks, status
            print(f"projection {name:8s} build:        {read / built:>9,.0f} msg/s "
                  f"({built:.1f} s, {read:,} read), "
                  f"{read / built / (seen / base):.2f}x baseline; chain verified to {status.verified:,}",
                  flush=True)
            for period in (Period.parse("2025-05"),):
                seconds, digests = reports(projection, settings, period)
                again_seconds, again = reports(projection, settings, period)
                size = sum((settings.data_dir / "reports" / period.id / n).stat().st_size for n in digests)
                print(f"reports   {name:8s} {period.id}: {len(digests) // 3:,} reports x 3 files "
                      f"({size / 1e6:.1f} MB) in {seconds:.1f} s; again {again_seconds:.1f} s, "
                      f"byte-identical: {digests == again}")
            projection.dispose()
        digest = hashlib.sha256(b"".join(sorted(v.encode() for v in digests.values()))).hexdigest()[:12]
        print(f"(bodies digest {digest})")


if __name__ == "__main__":
    main()
