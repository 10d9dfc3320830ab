"""The distributor's throughput and end-to-end latency (issue 4's benchmark).

1. Throughput: N events (registrations, a tenth of them deleted again; BSN and
   onderwijsnummer, BIG and other programmes) are imported with the registrar and relayed
   to rod.results.v1 on a local broker. Then, on the same topic:
   - baseline: a bare kafka-python loop that consumes the topic and produces every message
     to three topics (no decoding, no decisions, no ledger);
   - the distributor: decode, decide for the three subscriptions, ledger transaction,
     feed messages and receipts, flush, mark published.
   Prints events/s of both and the ratio.
2. Latency at a steady rate: a feeder process imports registrations at R events/s (chunks
   every 100 ms) with the relay running beside it; the distributor runs in this process;
   a reader process reads the extract feed (every registration reaches it) and measures
   "event stored (recorded_at) → feed message read". Prints p50/p99.

Usage: .venv/bin/python bench/distribute.py [--events N] [--rate R] [--seconds S] [--database-url URL]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.distributor.loop import Distributor  # noqa: E402
from services.kernel import kafka  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import LocalBroker  # noqa: E402
from services.kernel.codec import Codec  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.relay import RESULTS_TOPIC, Relay  # noqa: E402
from services.registrar.store import EventStore  # noqa: E402
from tests.fixtures.bulkfiles import COLUMNS, write_csv  # noqa: E402

CATALOGUE = ROOT / "tests" / "fixtures" / "catalogue.csv"
BSNS = ["111222333", "123456782", "249566758", "319072356"]
LEARNERS = ["101222331", "106071665"]


def row(i: int, delete: bool = False) -> dict[str, str]:
    person = {"bsn": BSNS[i % 4]} if i % 3 else {"onderwijsnummer": LEARNERS[i % 2]}
    out = {
        **person,
        "instellingscode": "25BE",
        "vestigingscode": "25BE01",
        "sector": "HO",
        "opleidingscode": "56551" if i % 2 else "50625",
        "diplomavolgnummer": f"B{i}",
        "diplomadatum": "2026-07-01",
    }
    if delete:
        out.update(actie="verwijderen", reden="ADMINISTRATIVE_ERROR")
    return out


def settings_for(tmp: Path, bootstrap: str, database_url: str | None) -> Settings:
    env = {
        "ROD_DATA_DIR": str(tmp),
        "ROD_KAFKA_BOOTSTRAP": bootstrap,
        "ROD_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}.",
    }
    if database_url:
        env["ROD_DISTRIBUTOR_DATABASE_URL"] = database_url
    return Settings.from_env(env)


def registrar(settings: Settings) -> Registrar:
    reg = Registrar(EventStore(settings.database_urls["registrar"]), Catalogue.load(CATALOGUE))
    if reg.institution("25BE") is None:
        reg.add_institution("25BE", "Universiteit Bench", ["HO"])
    return reg


def fill(settings: Settings, tmp: Path, events: int) -> None:
    """`events` events on rod.results.v1: registrations, every tenth deleted again after them."""
    reg = registrar(settings)
    registrations = events * 10 // 11
    chunk = 20_000
    for start in range(0, registrations, chunk):
        numbers = range(start, min(start + chunk, registrations))
        write_csv(tmp / "reg.csv", (row(i) for i in numbers), columns=COLUMNS)
        reg.import_file(tmp / "reg.csv", "25BE")
        write_csv(tmp / "del.csv", (row(i, True) for i in numbers if i % 10 == 0), columns=COLUMNS)
        reg.import_file(tmp / "del.csv", "25BE")
    relay = Relay(reg.store, settings, settings.kafka_bootstrap)
    relay.recover()
    relay.catch_up()
    relay.close()


def baseline(settings: Settings, expected: int) -> float:
    """events/s of a bare consume → produce-to-three-topics loop on the same topic."""
    targets = [settings.topic(f"bench.baseline.{n}") for n in ("a", "b", "c")]
    consumer = kafka.consumer(settings.kafka_bootstrap, group_id=None, max_poll_records=2000)
    producer = kafka.producer(settings.kafka_bootstrap)
    topic = settings.topic(RESULTS_TOPIC)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    started = time.perf_counter()
    seen = 0
    while seen < expected:
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                for target in targets:
                    producer.send(target, key=record.key, value=record.value)
            seen += len(records)
    producer.flush()
    elapsed = time.perf_counter() - started
    consumer.close()
    producer.close()
    return seen / elapsed


def distributor_throughput(settings: Settings, expected: int) -> tuple[float, int]:
    """events/s of the distributor over the whole topic, and the feed messages it sent."""
    distributor = Distributor(settings, settings.kafka_bootstrap, group=False)
    distributor.start()
    started = time.perf_counter()
    seen = sent = 0
    while seen < expected:
        step = distributor.step()
        seen += step.events
        sent += step.sent
    elapsed = time.perf_counter() - started
    distributor.close()
    return seen / elapsed, sent


def scaled_out(settings: Settings, tmp: Path, expected: int, processes: int) -> float:
    """events/s of `processes` distributors in one consumer group, on a fresh ledger (SQLite)."""
    import os
    import subprocess

    from sqlalchemy import func, select

    from services.distributor import ledger as tables

    url = f"sqlite:///{tmp / f'ledger-{processes}.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROD_")},
        "ROD_DATA_DIR": str(settings.data_dir),
        "ROD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "ROD_TOPIC_PREFIX": settings.topic_prefix,
        "ROD_DATABASE_URL": settings.database_urls["registrar"],
        "ROD_DISTRIBUTOR_DATABASE_URL": url,
    }
    rod = Path(sys.executable).with_name("rod")
    ledger = tables.Ledger(url)
    procs = [
        subprocess.Popen(
            [str(rod), "distribute", "--until-idle", "5"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    first = last = None
    wanted = expected * 3
    while True:
        with ledger.reading() as conn:
            count = conn.execute(select(func.count()).select_from(tables.decisions)).scalar_one()
        moment = time.perf_counter()
        if count and first is None:
            first = (moment, count)
        if count >= wanted:
            last = moment
            break
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for proc in procs:
        proc.wait(60)
    ledger.dispose()
    if first is None or last is None:
        return 0.0
    return (wanted - first[1]) / 3 / (last - first[0])


def feeder(settings: Settings, tmp: str, rate: int, seconds: float, ready: mp.Event) -> None:
    """Registrations at `rate` per second in chunks every 100 ms, with the relay publishing them."""
    rod_logging.configure(stream=open("/dev/null", "w"), json=True)  # noqa: SIM115
    reg = registrar(settings)
    relay = Relay(reg.store, settings, settings.kafka_bootstrap)
    relay.recover()
    stop = threading.Event()
    worker = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_wait": 0.01})
    worker.start()
    ready.wait(60)
    per_chunk = max(1, rate // 10)
    path = Path(tmp) / "feed.csv"
    start = time.monotonic()
    i = 1_000_000
    tick = 0
    while time.monotonic() - start < seconds:
        write_csv(path, (row(j) for j in range(i, i + per_chunk)), columns=COLUMNS)
        reg.import_file(path, "25BE")
        i += per_chunk
        tick += 1
        pause = start + tick * 0.1 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    time.sleep(2)
    stop.set()
    worker.join()
    relay.close()


def reader(settings: Settings, seconds: float, warmup: float, out: mp.Queue) -> None:
    """Latency of each extract feed message: read time minus the event's recorded_at."""
    codec = Codec()
    consumer = kafka.consumer(settings.kafka_bootstrap, group_id=None)
    topic = settings.topic("rod.feed.extract.v1")
    while not consumer.partitions_for_topic(topic):
        time.sleep(0.1)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    latencies: list[float] = []
    first = None
    deadline = time.monotonic() + seconds + 30
    quiet = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet < 5:
        batch = consumer.poll(timeout_ms=50)
        read_at = datetime.now(UTC)
        for records in batch.values():
            quiet = time.monotonic()
            for record in records:
                message = codec.decode(record.value)[1]
                first = first or message["registered_at"]
                if (message["registered_at"] - first).total_seconds() >= warmup:
                    latencies.append((read_at - message["registered_at"]).total_seconds())
    out.put(latencies)


def latency(settings: Settings, tmp: Path, rate: int, seconds: float) -> list[float]:
    for name in kafka.TOPICS:
        kafka.ensure_topics(settings, settings.kafka_bootstrap, [name])
    registrar(settings)
    distributor = Distributor(settings, settings.kafka_bootstrap, group=False)
    stop = threading.Event()
    worker = threading.Thread(target=distributor.run, args=(stop,))
    worker.start()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    feed = ctx.Process(target=feeder, args=(settings, str(tmp), rate, seconds, ready))
    read = ctx.Process(target=reader, args=(settings, seconds, 3.0, out))
    read.start()
    feed.start()
    time.sleep(2)
    ready.set()
    latencies = out.get(timeout=seconds + 120)
    feed.join()
    read.join()
    stop.set()
    worker.join()
    distributor.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--database-url", default=None, help="The ledger's database (default: SQLite).")
    args = parser.parse_args()
    rod_logging.configure(stream=open("/dev/null", "w"), json=True)  # noqa: SIM115
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp) / "throughput", broker.bootstrap, args.database_url)
        settings.data_dir.mkdir(parents=True)
        began = time.perf_counter()
        fill(settings, settings.data_dir, args.events)
        events = args.events * 10 // 11 + len(range(0, args.events * 10 // 11, 10))
        print(f"prepared {events:,} events on rod.results.v1 in {time.perf_counter() - began:.0f} s")
        base = baseline(settings, events)
        print(f"baseline (consume → produce to 3 topics, no ledger): {base:,.0f} events/s")
        ours, sent = distributor_throughput(settings, events)
        print(
            f"distributor (3 subscriptions, ledger, feeds + receipts): {ours:,.0f} events/s "
            f"({sent:,} feed messages) = {ours / base:.2f}× baseline (goal ≥ 0.5×)"
        )

        again = baseline(settings, events)
        print(
            f"baseline again: {again:,.0f} events/s; "
            f"distributor = {ours / ((base + again) / 2):.2f}× their mean"
        )
        two = scaled_out(settings, Path(tmp), events, 2)
        print(
            f"two distributor processes in one group (scale-out, shared SQLite ledger): {two:,.0f} events/s "
            f"= {two / ((base + again) / 2):.2f}× the one-process baseline"
        )

        settings = settings_for(Path(tmp) / "latency", broker.bootstrap, None)
        settings.data_dir.mkdir(parents=True)
        lat = latency(settings, settings.data_dir, args.rate, args.seconds)
        if lat:
            q = statistics.quantiles(lat, n=100)
            print(
                f"latency at {args.rate}/s over {len(lat):,} messages (stored → extract feed read): "
                f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
                f"(goal p99 < 2 s)"
            )
        else:
            print("latency: no messages read")


if __name__ == "__main__":
    main()
