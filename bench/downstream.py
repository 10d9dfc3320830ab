"""Downstream: the HTTP feed against Kafka, and the cost of idle long polls (issue 11's benchmark).

1. Fill: N registrations (documented person numbers only, a distinct diploma number each)
   imported with the registrar, relayed to rod.results.v1 on a local broker, and decided by
   the distributor (one process, the three shipped subscriptions) until it is idle. The
   `extract` subscription gets every result, so its feed holds N deliveries, each with its
   gap-free HTTP feed position.
2. The HTTP API runs as its own process, as production runs it (`rod up --components http`),
   so the server and the client measured here do not share one GIL.
3. Reading the whole extract feed, in the same run, alternating (HTTP, Kafka, HTTP, Kafka...):
   - baseline: one kafka-python consumer (no group: every partition assigned, from the
     beginning; the kernel's consumer settings) reading rod.feed.extract.v1 to its end and
     decoding every value with fastavro.schemaless_reader (the 10-byte header skipped);
   - HTTP: one consumer (httpx, keep-alive) reading GET /v1/feeds/extract/messages with
     limit=1000 from the start until it has every message, each page parsed from JSON.
   Prints messages/s of both per round, the medians and the ratio HTTP/Kafka.
4. Where a page's time goes on the server: FeedStore.page in this process, by phase (SQL,
   Avro decode, JSON values and cursors, the response's JSON rendering).
5. Idle long polls: the API process' CPU time, RSS and threads (psutil) over S seconds with
   no consumers (the idle server's own cost), then over S seconds with C consumers (each its
   own token, spread over the three feeds) long-polling at their feed's end (wait=30, so
   nothing comes) and polling again as soon as an answer arrives.

Goals: HTTP >= 1.0x Kafka's messages/s; 200 consumers long-polling an idle feed for 60 s
cost < 5% of one core and < 50 MB of extra RSS.

Usage: .venv/bin/python bench/downstream.py [--count 200000] [--quick] [--rounds 3]
           [--seconds 60] [--consumers 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import httpx
import psutil
import sqlalchemy
from kafka import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.distribute import CATALOGUE, registrar, row  # noqa: E402
from bench.rawhttp import read_response  # noqa: E402
from services.distributor.feed import FeedStore, encode_cursor  # noqa: E402
from services.distributor.ledger import Ledger  # noqa: E402
from services.distributor.loop import Distributor  # noqa: E402
from services.kernel import kafka  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import LocalBroker, free_port  # noqa: E402
from services.kernel.codec import HEADER_SIZE, SCHEMA_DIR  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402
from services.registrar.relay import Relay  # noqa: E402
from tests.fixtures.bulkfiles import COLUMNS, write_csv  # noqa: E402

FEED = "extract"
FEED_TOPIC = "rod.feed.extract.v1"
SUBSCRIPTIONS = ("cibg-big", "mijnoverheid", "extract")
LIMIT = 1000


# 1. fill


def fill(settings: Settings, tmp: Path, count: int) -> int:
    """`count` registrations stored, relayed and decided; returns the extract feed's length."""
    reg = registrar(settings)
    started = time.perf_counter()
    chunk = 20_000
    for start in range(0, count, chunk):
        write_csv(tmp / "reg.csv", (row(i) for i in range(start, min(start + chunk, count))),
                  columns=COLUMNS)
        reg.import_file(tmp / "reg.csv", "25BE")
    relay = Relay(reg.store, settings, settings.kafka_bootstrap)
    relay.recover()
    relayed = relay.catch_up()
    relay.close()
    reg.store.dispose()
    print(f"fill: {count:,} registrations imported and {relayed:,} events relayed in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    distributor = Distributor(settings, settings.kafka_bootstrap, group=False)
    distributor.start()
    seen = sent = idle = 0
    while idle < 20:  # caught up: twenty empty polls in a row
        step = distributor.step()
        seen += step.events
        sent += step.sent
        idle = 0 if step.events or step.sent else idle + 1
    distributor.close()
    ledger = Ledger(settings.database_urls["distributor"])
    last = FeedStore(ledger).heads()[FEED][0]
    ledger.dispose()
    print(f"distributor: {seen:,} events decided, {sent:,} feed messages sent in "
          f"{time.perf_counter() - started:.0f} s; the extract feed holds {last:,} positions", flush=True)
    return last


# 2. the API as its own process


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    env.update(ROD_DATA_DIR=str(settings.data_dir), ROD_KAFKA_BOOTSTRAP=str(settings.kafka_bootstrap),
               ROD_TOPIC_PREFIX=settings.topic_prefix, ROD_CATALOGUE=str(CATALOGUE),
               ROD_DATABASE_URL=settings.database_urls["registrar"],
               ROD_DISTRIBUTOR_DATABASE_URL=settings.database_urls["distributor"])
    return env


def start_api(settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    rod = Path(sys.executable).with_name("rod")
    proc = subprocess.Popen([str(rod), "up", "--components", "http", "--port", str(port)],
                            env=env_for(settings), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("rod up --components http did not start")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


# 3. reading the whole feed


def http_reader(port: int, token: str, expected: int) -> tuple[float, int, dict[str, float]]:
    """messages/s of one HTTP consumer reading the whole feed with limit=1000, and its time per
    page: waiting for the answer (the server's work and the transfer) and parsing its JSON."""
    waiting = parsing = 0.0
    pages = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        client.get("/healthz")  # the connection is open before the clock starts, as Kafka's is
        after: str | None = None
        seen = 0
        started = time.perf_counter()
        while seen < expected:
            params: dict[str, Any] = {"limit": LIMIT, **({"after": after} if after else {})}
            t0 = time.perf_counter()
            answer = client.get(f"/v1/feeds/{FEED}/messages", params=params)
            t1 = time.perf_counter()
            answer.raise_for_status()
            page = answer.json()
            waiting, parsing, pages = waiting + t1 - t0, parsing + time.perf_counter() - t1, pages + 1
            if not page["messages"]:
                break
            seen += len(page["messages"])
            after = page["next"]
        elapsed = time.perf_counter() - started
    return seen / elapsed, seen, {"answer_ms": waiting / pages * 1000, "parse_ms": parsing / pages * 1000}


def kafka_reader(settings: Settings, schema: Any) -> tuple[float, int, dict[str, float]]:
    """messages/s of one kafka-python consumer reading the feed topic to its end, fastavro-decoded,
    and the share of its time spent decoding."""
    consumer = kafka.consumer(settings.kafka_bootstrap, group_id=None, max_poll_records=LIMIT)
    topic = settings.topic(FEED_TOPIC)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = {tp: end for tp, end in consumer.end_offsets(partitions).items() if end}
    seen = 0
    decoding = 0.0
    started = time.perf_counter()
    while ends:
        for tp, records in consumer.poll(timeout_ms=100).items():
            t0 = time.perf_counter()
            for record in records:
                fastavro.schemaless_reader(io.BytesIO(record.value[HEADER_SIZE:]), schema)
            decoding += time.perf_counter() - t0
            seen += len(records)
            if records and records[-1].offset + 1 >= ends.get(tp, 0):
                ends.pop(tp, None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed, seen, {"decode_share": decoding / elapsed}


# 4. where a page's time goes


def page_phases(url: str, pages: int) -> dict[str, float]:
    """Seconds per 1,000-message page of FeedStore.page_body's steps, measured in this process
    (the server runs the same code): the index range read with the stored JSON, then the cursors
    spliced into one answer body."""
    ledger = Ledger(url)
    store = FeedStore(ledger)
    steps = ("sql (stored JSON)", "cursors + body", "page_body() whole")
    totals = dict.fromkeys(steps, 0.0)
    after = 0
    for _ in range(pages):
        t0 = time.perf_counter()
        rows = store.page(FEED, after, LIMIT)
        t1 = time.perf_counter()
        b",".join(rendered[:-1] + b',"cursor":"' + encode_cursor(FEED, seq).encode() + b'"}'
                  for seq, rendered in rows)
        t2 = time.perf_counter()
        store.page_body(FEED, after, LIMIT)
        t3 = time.perf_counter()
        for name, spent in zip(totals, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            totals[name] += spent
        after = rows[-1][0]
    ledger.dispose()
    return {name: spent / pages for name, spent in totals.items()}


# 5. idle long polls


class Sampler:
    """The API process' RSS and thread count, sampled every 0.25 s in a thread of this process."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.rss: list[int] = []
        self.threads: list[int] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.halt.wait(0.25):
            with self.process.oneshot():
                self.rss.append(self.process.memory_info().rss)
                self.threads.append(self.process.num_threads())

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()


async def long_pollers(port: int, consumers: list[tuple[str, str, str]], seconds: float,
                       polls: list[int], statuses: dict[int, int]) -> None:
    """Every consumer (token, subscription, end cursor) long-polls (wait=30) on a keep-alive
    connection of its own until `seconds` passed. Raw HTTP/1.1 as in bench/api.py: httpx's
    AsyncClient with 200 connections in its pool sent the re-polls up to 5 s late."""

    async def poll(token: str, subscription: str, cursor: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                writer.write((f"GET /v1/feeds/{subscription}/messages?after={cursor}&wait=30&limit={LIMIT} "
                              f"HTTP/1.1\r\nHost: localhost\r\n"
                              f"Authorization: Bearer {token}\r\n\r\n").encode())
                status, body = await read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
                polls[0] += 1
                if status == 200:
                    cursor = json.loads(body)["next"]
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(poll(*c)) for c in consumers]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def cost(proc: psutil.Process, seconds: float, port: int | None = None,
         consumers: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """The API process' CPU, RSS and threads over `seconds`, idle or with long-polling consumers."""
    before = proc.cpu_times()
    rss_before, threads_before = proc.memory_info().rss, proc.num_threads()
    sampler = Sampler(proc)
    polls, statuses = [0], {}
    started = time.perf_counter()
    if consumers:
        asyncio.run(long_pollers(port or 0, consumers, seconds, polls, statuses))
    else:
        time.sleep(seconds)
    elapsed = time.perf_counter() - started
    after = proc.cpu_times()
    sampler.stop()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"cpu_s": cpu, "core_pct": 100 * cpu / elapsed, "rss_before_mb": rss_before / 1e6,
            "rss_growth_mb": (max(sampler.rss, default=rss_before) - rss_before) / 1e6,
            "rss_after_mb": proc.memory_info().rss / 1e6, "threads_before": threads_before,
            "threads_max": max(sampler.threads, default=threads_before),
            "threads_median": statistics.median(sampler.threads) if sampler.threads else threads_before,
            "polls": polls[0], "statuses": statuses, "seconds": elapsed}


# the run


def postgres_schema(url: str) -> tuple[str, str]:
    """A fresh schema on `url` for the ledger; returns (url with search_path, schema)."""
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}", schema


def drop_schema(url: str, schema: str) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000, help="registrations (= extract deliveries)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 deliveries, 10 s windows")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each reader, alternating")
    parser.add_argument("--seconds", type=float, default=60, help="each idle window")
    parser.add_argument("--consumers", type=int, default=200, help="long-polling consumers")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL server for the ledger (a fresh schema); default: SQLite")
    args = parser.parse_args()
    if args.quick:
        args.count, args.seconds = 5_000, 10
    rod_logging.configure(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    schema = None
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = {"ROD_DATA_DIR": str(Path(tmp) / "var"), "ROD_KAFKA_BOOTSTRAP": broker.bootstrap,
               "ROD_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}."}
        if args.database_url:
            url, schema = postgres_schema(args.database_url)
            env["ROD_DISTRIBUTOR_DATABASE_URL"] = url
        settings = Settings.from_env(env)
        settings.data_dir.mkdir(parents=True)
        try:
            run(settings, args)
        finally:
            if schema and args.database_url:
                drop_schema(args.database_url, schema)


def run(settings: Settings, args: argparse.Namespace) -> None:
    ledger_url = settings.database_urls["distributor"]
    print(f"downstream: {args.count:,} registrations, ledger on {ledger_url.split(':')[0]}, "
          f"{os.cpu_count()} cores", flush=True)
    expected = fill(settings, settings.data_dir, args.count)
    ledger = Ledger(ledger_url)
    feeds = FeedStore(ledger)
    token = feeds.add_consumer("bench-reader", FEED, set(SUBSCRIPTIONS))
    pollers = []
    heads = feeds.heads()
    for i in range(args.consumers):
        subscription = SUBSCRIPTIONS[i % len(SUBSCRIPTIONS)]
        pollers.append((feeds.add_consumer(f"idle-{i}", subscription, set(SUBSCRIPTIONS)), subscription,
                        encode_cursor(subscription, heads.get(subscription, (0, 0))[0])))
    ledger.dispose()
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "ExtractFeedMessage.v1.avsc").read_text()))

    proc, port = start_api(settings)
    server = psutil.Process(proc.pid)
    try:
        http_reader(port, token, min(expected, 5 * LIMIT))  # warm up: imports, first queries
        rates: dict[str, list[float]] = {"http": [], "kafka": []}
        for round_ in range(args.rounds):
            for name in ("http", "kafka"):
                rate, seen, split = (http_reader(port, token, expected) if name == "http"
                                     else kafka_reader(settings, schema))
                rates[name].append(rate)
                detail = (f"per page: answer {split['answer_ms']:.1f} ms, "
                          f"JSON parse {split['parse_ms']:.1f} ms" if name == "http"
                          else f"decoding {split['decode_share']:.0%} of the time")
                print(f"round {round_ + 1}: {name:5} {seen:,} messages, {rate:,.0f} messages/s ({detail}; "
                      f"load average {os.getloadavg()[0]:.1f})", flush=True)
                if seen != expected:
                    print(f"  !! {name} read {seen:,} messages, the feed holds {expected:,}")
        rss_after_reads = server.memory_info().rss / 1e6

        phases = page_phases(ledger_url, max(1, min(50, expected // LIMIT)))
        print("a 1,000-message page, by step (in the bench process, same code as the server):")
        for name, spent in phases.items():
            print(f"  {name:24} {spent * 1000:7.1f} ms  ({LIMIT / spent:,.0f} messages/s)")

        idle = cost(server, args.seconds)
        print(f"idle server, {args.seconds:.0f} s, no consumers: {idle['core_pct']:.2f}% of a core, "
              f"threads {idle['threads_before']}", flush=True)
        busy = cost(server, args.seconds, port, pollers)
        print(f"{args.consumers} consumers long-polling, {args.seconds:.0f} s: "
              f"{busy['core_pct']:.2f}% of a core, "
              f"RSS +{busy['rss_growth_mb']:.1f} MB, threads {busy['threads_before']} -> "
              f"median {busy['threads_median']:.0f}, max {busy['threads_max']}; {busy['polls']} answers "
              f"{busy['statuses']}", flush=True)
    finally:
        stop_api(proc)

    http, kafka_ = statistics.median(rates["http"]), statistics.median(rates["kafka"])
    ratio = http / kafka_
    per_round = [h / k for h, k in zip(rates["http"], rates["kafka"], strict=True)]
    core, grown = busy["core_pct"], busy["rss_growth_mb"]
    print()
    print(f"{'':36} {'median':>10}  rounds")
    readers = (("kafka", "Kafka, kafka-python + fastavro /s"), ("http", "HTTP, limit=1000, httpx + json /s"))
    for name, label in readers:
        print(f"{label:36} {statistics.median(rates[name]):>10,.0f}  "
              f"{', '.join(f'{r:,.0f}' for r in rates[name])}")
    print(f"{'ratio HTTP / Kafka':36} {ratio:>9.2f}x  {', '.join(f'{r:.2f}x' for r in per_round)}")
    print(f"{'':36} {'% of a core':>11} {'RSS MB':>7} {'+RSS MB':>8} {'threads':>8} {'max':>4}")
    windows = (("API process, no consumers", idle), (f"API process, {args.consumers} idle long polls", busy))
    for label, f in windows:
        print(f"{label:36} {f['core_pct']:>11.2f} {f['rss_before_mb']:>7.0f} {f['rss_growth_mb']:>8.1f} "
              f"{f['threads_before']:>8} {f['threads_max']:>4}")
    print(f"(API process RSS after the reads: {rss_after_reads:.0f} MB; long polls "
          f"{core - idle['core_pct']:.2f}% of a core over the idle server)")
    print(f"goal HTTP >= 1.0x Kafka: {ratio:.2f}x {'met' if ratio >= 1.0 else 'NOT MET'}; "
          f"{args.consumers} long polls < 5% of a core: {core:.2f}% {'met' if core < 5 else 'NOT MET'}; "
          f"< 50 MB extra RSS: {grown:.1f} MB {'met' if grown < 50 else 'NOT MET'}")

if __name__ == "__main__":
    main()
