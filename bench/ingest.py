"""Bulk import and relay throughput of the registrar (issue 2's benchmark).

Prints, for SQLite and PostgreSQL:
- baseline: the same CSV rows inserted with one bare SQLAlchemy Core executemany into an
  equivalent one-table schema (no validation, no encoding, no hashing, no state table);
- the registrar: `Registrar.import_file` on the same file (parse, validate, encode, hash,
  write events and current state), results/s and the ratio against the baseline;
then the peak RSS of `rod import` on a 2,000,000-record file (a subprocess, sampled), and
the relay publishing the imported events to a local broker against a bare kafka-python
producer sending the same payloads.

Usage: .venv/bin/python bench/ingest.py [--records N] [--big N] [--postgres URL|none]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import sqlalchemy as sa
from kafka import KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.kernel import kafka  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import LocalBroker  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.relay import Relay  # noqa: E402
from services.registrar.store import EventStore  # noqa: E402
from tests.fixtures.bulkfiles import sample_rows, write_csv  # noqa: E402

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def baseline_insert(url: str, path: Path) -> float:
    """Seconds to read the CSV and insert its rows with one bare Core executemany."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    with path.open(newline="", encoding="utf-8") as f:
        columns = next(csv.reader(f))
    table = sa.Table("baseline_results", meta, sa.Column("id", sa.Integer, primary_key=True),
                     *(sa.Column(c, sa.String(40)) for c in columns))
    meta.create_all(engine)
    start = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def registrar_import(url: str, path: Path) -> tuple[float, int, EventStore]:
    """Seconds for the registrar to import the file; returns the store for the relay run."""
    store = EventStore(url)
    registrar = Registrar(store, Catalogue.load(None))
    registrar.add_institution("25BE", "Universiteit Bench", ["HO"])
    start = time.perf_counter()
    summary = registrar.import_file(path, "25BE")
    elapsed = time.perf_counter() - start
    return elapsed, summary.accepted, store


def relay_run(store: EventStore, bootstrap: str) -> tuple[float, float, int]:
    """(relay seconds, bare producer seconds, events) for every stored event."""
    events = store.last_position()
    prefix = f"b{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env({"ROD_KAFKA_BOOTSTRAP": bootstrap, "ROD_TOPIC_PREFIX": prefix})
    kafka.ensure_topics(settings, bootstrap, ["rod.results.v1"])
    relay = Relay(store, settings, bootstrap)
    start = time.perf_counter()
    relay.catch_up()
    relay_seconds = time.perf_counter() - start
    relay.close()

    payloads = [(e.stream_id.encode(), e.payload) for e in store.events_after(0, events)]
    bare_topic = prefix + "bare"
    admin = kafka.admin(bootstrap)
    admin.create_topics([NewTopic(bare_topic, 6, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=512 * 1024)
    start = time.perf_counter()
    for key, value in payloads:
        producer.send(bare_topic, key=key, value=value)
    producer.flush()
    bare_seconds = time.perf_counter() - start
    producer.close()
    return relay_seconds, bare_seconds, events


def big_import_rss(records: int, workdir: Path) -> tuple[float, float, int]:
    """(peak RSS MB, seconds, records) of `rod import` on a file of `records` records."""
    path = workdir / "big.csv"
    write_csv(path, sample_rows(records))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    env["ROD_DATA_DIR"] = str(workdir / "big-var")
    rod = Path(sys.executable).with_name("rod")
    subprocess.run([str(rod), "institution", "add", "25BE", "--name", "Bench", "--sectors", "HO"],
                   env=env, check=True, capture_output=True)
    peak = 0
    start = time.perf_counter()
    output = (workdir / "big-import.out").open("w+")  # a file: a pipe nobody reads would fill and block
    proc = subprocess.Popen([str(rod), "import", str(path), "--institution", "25BE"], env=env,
                            stdout=output, stderr=subprocess.DEVNULL, text=True)
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    output.seek(max(0, output.seek(0, os.SEEK_END) - 2000))
    out = output.read()  # the summary at the end
    output.close()
    if proc.returncode != 0:
        raise SystemExit(f"rod import failed ({proc.returncode}): {out[-500:]}")
    return peak / 2**20, elapsed, records


def postgres_schema(url: str) -> tuple[str, Callable[[], None]]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()

    return f"{url}?options=-csearch_path%3D{schema}", drop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--big", type=int, default=2_000_000, help="records for the RSS run (0: skip)")
    parser.add_argument("--postgres", default=POSTGRES_URL, help="PostgreSQL URL, or 'none' to skip")
    args = parser.parse_args()
    rod_logging.configure(stream=open(os.devnull, "w"), json=True)  # noqa: SIM115 - lives as long as the run

    with tempfile.TemporaryDirectory(prefix="rod-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "results.csv"
        write_csv(path, sample_rows(args.records))
        size_mb = path.stat().st_size / 2**20
        print(f"bulk file: {args.records:,} records, {size_mb:.1f} MB CSV")

        databases = [
            ("SQLite", f"sqlite:///{workdir / 'baseline.db'}", f"sqlite:///{workdir / 'registrar.db'}", None)
        ]
        if args.postgres != "none":
            try:
                base_url, drop_base = postgres_schema(args.postgres)
                reg_url, drop_reg = postgres_schema(args.postgres)
                databases.append(("PostgreSQL", base_url, reg_url, (drop_base, drop_reg)))
            except sa.exc.OperationalError:
                print("PostgreSQL not reachable: skipped")

        sqlite_store = None
        for label, base_url, reg_url, drops in databases:
            base_s = baseline_insert(base_url, path)
            reg_s, accepted, store = registrar_import(reg_url, path)
            assert accepted == args.records, f"{accepted} of {args.records} accepted"
            base_rate, reg_rate = args.records / base_s, args.records / reg_s
            print(f"{label:10} baseline executemany {base_rate:9,.0f} rows/s  "
                  f"registrar import {reg_rate:9,.0f} results/s  ratio {reg_rate / base_rate:.2f}x")
            if drops:
                store.dispose()
                for drop in drops:
                    drop()
            else:
                sqlite_store = store

        with LocalBroker() as broker:
            relay_s, bare_s, events = relay_run(sqlite_store, broker.bootstrap)
        relay_rate, bare_rate = events / relay_s, events / bare_s
        print(f"relay      bare producer {bare_rate:9,.0f} events/s  "
              f"relay {relay_rate:9,.0f} events/s  ratio {relay_rate / bare_rate:.2f}x")

        if args.big:
            peak_mb, big_s, n = big_import_rss(args.big, workdir)
            print(f"big file   {n:,} records via `rod import`: {n / big_s:,.0f} results/s, "
                  f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
