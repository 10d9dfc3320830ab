"""The operators' views under load (issue 7's benchmark).

1. Fill: N events on rod.results.v1 of a local broker (registrations with the registrar, a
   tenth of them deleted again, relayed), 100 poison messages among them (each consuming
   service records them as dead letters), then the distributor fills the three feeds and the
   audit projects everything, each caught up before anything is measured.
2. The system split into processes as production runs it (`rod up --components`):
   - the front door: `rod up --components http,relay,impact,monitor` (HTTP API with /metrics,
     the relay, the registrar's receipt reader, the monitor behind the lag metrics);
   - `rod up --components distributor`;
   - `rod up --components audit`.
   All three wait until every consumer group's lag on the front door's /metrics is 0.
3. `rod topics --json` as a user runs it (a subprocess, beside those three): median and max of 5.
4. Clients register at a steady R registrations/s over HTTP at the front door while a scraper
   reads its `/metrics` every 100 ms: scrape p50/p99/max, and the rate really served (at
   1,000/s, then at a rate this machine sustains, so both saturation and headroom show).
5. Ingest throughput, metrics on vs off: 16 clients register as fast as they can for S
   seconds against the three processes with metrics on (a scrape every second, 15 times
   Prometheus' default rate) and then against the three restarted with ROD_METRICS=off (no
   endpoint, no collectors, no scrapes); alternating on/off/on/off. Prints both and the ratio.

The load generator (16 asyncio connections) runs in this process, the scraper in a process
of its own (as Prometheus would), all on the same machine.

Usage: .venv/bin/python bench/operators.py [--events 1000000] [--rates 1000,100] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.distribute import CATALOGUE, fill  # noqa: E402
from bench.rawhttp import read_response  # noqa: E402
from services.audit.projection import Projection  # noqa: E402
from services.audit.reader import AuditReader  # noqa: E402
from services.distributor.loop import Distributor  # noqa: E402
from services.kernel import kafka  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import LocalBroker, free_port  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.relay import RESULTS_TOPIC  # noqa: E402
from services.registrar.store import EventStore  # noqa: E402

POISON = 100
PEOPLE = ["111222333", "123456782", "249566758", "319072356"]


def prepare(settings: Settings, tmp: Path, events: int) -> str:
    """The filled system; returns the institution's token."""
    registrar = Registrar(EventStore(settings.database_urls["registrar"]), Catalogue.load(CATALOGUE))
    token = registrar.add_institution("25BE", "Universiteit Bench", ["HO"])
    registrar.store.dispose()
    started = time.perf_counter()
    fill(settings, tmp, events)
    print(f"fill: {events:,} events stored and relayed in {time.perf_counter() - started:.0f} s", flush=True)
    producer = kafka.producer(settings.kafka_bootstrap)
    for i in range(POISON):  # garbage on the log: every consuming service records a dead letter
        producer.send(settings.topic(RESULTS_TOPIC), key=f"poison-{i}".encode(),
                      value=b"\x00not avro" + bytes([i]))
    producer.flush()
    producer.close()

    started = time.perf_counter()
    distributor = Distributor(settings, settings.kafka_bootstrap, group=False)
    distributor.start()
    seen = idle = 0
    while idle < 20:  # caught up: twenty empty polls in a row
        step = distributor.step()
        seen += step.events + step.dead
        idle = 0 if step.events or step.dead else idle + 1
    distributor.close()
    print(f"distributor: {seen:,} messages decided in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    projection = Projection(settings.database_urls["audit"])
    read = AuditReader(projection, settings, settings.kafka_bootstrap).catch_up(timeout=3600)
    projection.dispose()
    print(f"audit: {read:,} messages projected in {time.perf_counter() - started:.0f} s", flush=True)
    return token


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    env.update(ROD_DATA_DIR=str(settings.data_dir), ROD_KAFKA_BOOTSTRAP=str(settings.kafka_bootstrap),
               ROD_TOPIC_PREFIX=settings.topic_prefix, ROD_CATALOGUE=str(CATALOGUE), **extra)
    return env


FRONT = "http,relay,impact,monitor"  # the front door; the distributor and the audit run apart
CONSUMERS = ("distributor", "audit")


def rod_up(env: dict[str, str]) -> tuple[list[subprocess.Popen[bytes]], int]:
    """The system as three `rod up` processes; returns them (front door first) and its port."""
    port = free_port()
    rod = Path(sys.executable).with_name("rod")
    procs = [subprocess.Popen([str(rod), "up", "--components", FRONT, "--port", str(port)], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([str(rod), "up", "--components", part], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for part in CONSUMERS]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return procs, port
        except httpx.HTTPError:
            time.sleep(0.3)
    stop(procs)
    raise RuntimeError("rod up did not start")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_caught_up(port: int, timeout: float = 1800.0) -> float:
    """Seconds until every consumer group's lag on /metrics is 0 (the registrar's receipt
    reader, which the fill did not run, reads every receipt first: minutes at full size)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        lags = [line for line in text.splitlines() if line.startswith("rod_consumer_lag_messages{")]
        groups = {g for g in ("rod-distributor", "rod-audit", "rod-registrar-impact")
                  if any(f'group="{g}"' in line for line in lags)}
        if len(groups) == 3 and sum(float(line.rsplit(" ", 1)[1]) for line in lags) == 0:
            return time.monotonic() - started  # a group that never committed shows no lag: wait for all
        time.sleep(5)
    raise RuntimeError("the consumers did not catch up")


def topics_times(env: dict[str, str], runs: int = 5) -> tuple[list[float], dict]:
    rod = Path(sys.executable).with_name("rod")
    times, view = [], {}
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([str(rod), "topics", "--json"], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        assert done.returncode in (0, 1), done.stderr[-2000:]
        view = json.loads(done.stdout)
    return times, view


def _scrape(port: int, every: float, halt: Any, out: Any) -> None:
    timings: list[float] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not halt.is_set():
            started = time.perf_counter()
            answer = client.get("/metrics")
            timings.append(time.perf_counter() - started)
            assert answer.status_code == 200
            halt.wait(max(every - (time.perf_counter() - started), 0))
    out.send(timings)


class Scraper:
    """Scrapes the front door's /metrics every `every` seconds from a process of its own (as
    Prometheus would: in this process it would wait for the GIL behind the load generator)."""

    def __init__(self, port: int, every: float) -> None:
        context = mp.get_context("spawn")
        self.halt = context.Event()
        self.results, sending = context.Pipe(duplex=False)
        self.process = context.Process(target=_scrape, args=(port, every, self.halt, sending), daemon=True)
        self.process.start()

    def stop(self) -> list[float]:
        self.halt.set()
        timings = self.results.recv()
        self.process.join(30)
        return timings


async def paced(port: int, token: str, rate: float | None, seconds: float, run: int
                ) -> dict[str, float]:
    """16 keep-alive connections registering new results (raw HTTP/1.1, as bench/api.py: the
    client must cost the shared CPU little), each at rate/16 per second, or flat out when
    `rate` is None; `run` keeps the diploma numbers of each run apart (no repeats)."""
    clients = 16
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began, i = time.perf_counter(), 0
        try:
            while time.perf_counter() - began < seconds:
                body = json.dumps({
                    "person": {"bsn": PEOPLE[i % 4]}, "institution": "25BE", "branch": "25BE01",
                    "sector": "HO", "programme_code": "56551", "diploma_number": f"R{run}-{c}-{i}",
                    "diploma_date": "2026-07-01"}).encode()
                head = (f"POST /v1/results HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                started = time.perf_counter()
                writer.write(head + body)
                status, _body = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                i += 1
                if rate:
                    await asyncio.sleep(max(began + i * clients / rate - time.perf_counter(), 0))
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return {"per_second": statuses.get(201, 0) / elapsed, "p99_ms": cuts[98] * 1000, "statuses": statuses}


def profile_gather(settings: Settings) -> None:
    """Where one `rod topics` gather spends its time (cProfile, in this process): the slowest parts."""
    import cProfile
    import pstats

    from services.operations.overview import gather

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(gather, settings, str(settings.kafka_bootstrap), sample=False)
    print(f"gather() in-process: {time.perf_counter() - started:.2f} s; by cumulative time:", flush=True)
    stats = pstats.Stats(profiler)
    rows = [(f"{Path(file).name}:{line}({name})", cum) for (file, line, name), (_cc, _nc, _tt, cum, _callers)
            in stats.stats.items() if "services" in file]  # type: ignore[attr-defined]
    for where, cum in sorted(rows, key=lambda r: -r[1])[:12]:
        print(f"  {cum:6.3f} s  {where}")


def quantiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100)
    return cuts[49] * 1000, cuts[98] * 1000, max(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rates", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 100],
                        help="registrations/s while /metrics is scraped, comma-separated")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-onoff", action="store_true", help="skip the metrics on/off comparison")
    args = parser.parse_args()
    rod_logging.configure(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"ROD_DATA_DIR": str(Path(tmp) / "var"),
                                      "ROD_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "ROD_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}."})
        settings.data_dir.mkdir(parents=True)
        token = prepare(settings, Path(tmp), args.events)

        procs, port = rod_up(env_for(settings, ROD_MONITOR_INTERVAL_SECONDS="5"))
        try:
            print(f"rod up (3 processes): every consumer group caught up after {wait_caught_up(port):.0f} s",
                  flush=True)
            times, view = topics_times(env_for(settings))
            print(f"rod topics --json: dead letters {view['deadletters']}; "
                  f"load average {os.getloadavg()[0]:.1f}")
            print(f"rod topics --json: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
                  f"(goal: median < 2 s: {'met' if statistics.median(times) < 2 else 'MISSED'})", flush=True)
            profile_gather(settings)

            for run, rate in enumerate(args.rates):  # the goal's rate, then rates the machine sustains
                watcher = Scraper(port, 0.1)
                steady = asyncio.run(paced(port, token, rate, args.seconds, 10 + run))
                scrapes = watcher.stop()
                p50, p99, worst = quantiles(scrapes)
                print(f"/metrics while ingesting {steady['per_second']:,.0f} registrations/s "
                      f"(asked {rate}/s, registration p99 {steady['p99_ms']:.0f} ms): "
                      f"{len(scrapes)} scrapes, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms "
                      f"(goal: p99 < 50 ms: {'met' if p99 < 50 else 'MISSED'}; "
                      f"load average {os.getloadavg()[0]:.1f})", flush=True)

        finally:
            stop(procs)

        if args.no_onoff:
            return
        # on and off alternate (two rounds each): other work on a shared machine drifts
        figures: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        for round_, mode in enumerate(("on", "off", "on", "off")):
            extra = {"ROD_METRICS": "off"} if mode == "off" else {}
            procs, port = rod_up(env_for(settings, ROD_MONITOR_INTERVAL_SECONDS="5", **extra))
            try:
                time.sleep(10)
                watcher = Scraper(port, 1.0) if mode == "on" else None
                if watcher is None:
                    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
                figures[mode].append(asyncio.run(paced(port, token, None, args.seconds, 2 + round_)))
                if watcher is not None:
                    watcher.stop()
            finally:
                stop(procs)
            f = figures[mode][-1]
            print(f"ingest, metrics {mode}: {f['per_second']:,.0f}/s p99 {f['p99_ms']:.0f} ms "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        on = statistics.mean(f["per_second"] for f in figures["on"])
        off = statistics.mean(f["per_second"] for f in figures["off"])
        print(f"ingest flat out, metrics on (scraped every second) {on:,.0f}/s vs off {off:,.0f}/s: "
              f"ratio {on / off:.2f} (goal >= 0.95: {'met' if on / off >= 0.95 else 'MISSED'})", flush=True)


if __name__ == "__main__":
    main()
