"""HTTP API benchmark: single registrations from 16 concurrent clients for 30 s.

Starts the registrar's API as its own process (uvicorn, the same app `rod up` serves) on a
fresh database, then measures throughput and p50/p99 latency of POST /v1/results against
a baseline of the same server answering GET /healthz with the same client. SQLite and, when
reachable, PostgreSQL (a fresh schema, dropped afterwards).

    .venv/bin/python bench/api.py                    # both databases, 16 clients, 30 s each
    .venv/bin/python bench/api.py --db sqlite --seconds 10 --workers 2
    .venv/bin/python bench/api.py --compare-limits   # issue 13: HttpServer's limits on vs off

`--compare-limits` runs two servers on SQLite side by side: plain uvicorn without limits (as
before issue 13) and the app through `services.kernel.server.HttpServer` as `rod up` serves it
(header limit and timeouts, connection cap, Host check), and loads them in alternating rounds
(which goes first alternates too), printing each round, the ratio of the mean throughputs and
the servers' CPU time per request (steadier than throughput when other work shares the machine).

The client is raw asyncio HTTP/1.1 with keep-alive, one connection per client, so it costs
the shared CPU as little as a Python client can. Person numbers: the documented examples
only (domain.md); each request has its own diploma number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.kernel.broker import free_port  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.store import EventStore  # noqa: E402

POSTGRES_URL = os.environ.get("ROD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PEOPLE = ["111222333", "123456782", "249566758", "319072356"]


def registration(client: int, i: int) -> bytes:
    return json.dumps({
        "person": {"bsn": PEOPLE[i % len(PEOPLE)]}, "institution": "25BE", "branch": "25BE01",
        "sector": "HO", "programme_code": "56551", "diploma_number": f"B{client}-{i}",
        "diploma_date": "2026-07-01",
    }).encode()


async def client_loop(port: int, token: str, client: int, kind: str, deadline: float,
                      latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            if kind == "register":
                body = registration(client, i)
                head = (f"POST /v1/results HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                request = head + body
            else:
                request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
            i += 1
    finally:
        writer.close()


async def load(port: int, token: str, kind: str, clients: int, seconds: float,
               first_client: int = 0) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client_loop(port, token, first_client + c, kind, deadline, latencies, statuses)
                           for c in range(clients)))
    return figures(latencies, time.perf_counter() - started, statuses)


def figures(latencies: list[float], elapsed: float, statuses: dict[int, int]) -> dict[str, Any]:
    """Throughput, p50 and p99 of one load (and its latencies, to combine rounds)."""
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "per_second": len(latencies) / elapsed,
            "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "statuses": statuses,
            "latencies": latencies}


def postgres_schema() -> tuple[str, str] | None:
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        engine.dispose()
        return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema
    except Exception:
        return None


def drop_schema(schema: str) -> None:
    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


def start_server(url: str, data_dir: Path, port: int, workers: int = 1, limits: bool = False,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """The API in its own process: plain uvicorn, or with `limits` through HttpServer as `rod up` runs it."""
    env = {**os.environ, "ROD_DATABASE_URL": url, "ROD_DATA_DIR": str(data_dir),
           "ROD_CATALOGUE": str(ROOT / "tests" / "fixtures" / "catalogue.csv"), **(env or {})}
    command = [sys.executable, "-m", "uvicorn", "--factory", "services.app:app_from_env",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if limits:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


def run(db: str, url: str, clients: int, seconds: float, workers: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(url)
        registrar = Registrar(store, Catalogue.load(ROOT / "tests" / "fixtures" / "catalogue.csv"))
        token = registrar.add_institution("25BE", "Bench University", ["HO"])
        port = free_port()
        proc = start_server(url, Path(tmp), port, workers)
        try:
            asyncio.run(load(port, token, "healthz", clients, 2))  # warm up
            figures = {
                "healthz": asyncio.run(load(port, token, "healthz", clients, seconds)),
                "register": asyncio.run(load(port, token, "register", clients, seconds)),
            }
        finally:
            proc.terminate()
            proc.wait(30)
        figures["register"]["stored_events"] = store.last_position()
        store.dispose()
    return figures


def serve(port: int) -> None:
    """The API from ROD_* variables through HttpServer, until SIGTERM."""
    import signal
    import threading

    from services.app import app_from_env
    from services.kernel.server import HttpServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    HttpServer(app_from_env(), port).run(stop)


def compare_limits(clients: int, seconds: float, rounds: int) -> None:
    """Plain uvicorn against HttpServer with its limits, SQLite each, in alternating rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        servers, tokens, stores = {}, {}, []
        for name in ("off", "on"):
            (Path(tmp) / name).mkdir()
            url = f"sqlite:///{tmp}/{name}/registrar.db"
            store = EventStore(url)
            stores.append(store)
            registrar = Registrar(store, Catalogue.load(ROOT / "tests" / "fixtures" / "catalogue.csv"))
            tokens[name] = registrar.add_institution("25BE", "Bench University", ["HO"])
            port = free_port()
            servers[name] = (port, start_server(url, Path(tmp) / name, port, limits=name == "on"))
        totals = {(name, kind): 0.0 for name in servers for kind in ("healthz", "register")}
        # server CPU per request: what the limits cost, steadier than throughput on a shared machine
        cpu = {key: [0.0, 0] for key in totals}
        try:
            for name, (port, _) in servers.items():
                asyncio.run(load(port, tokens[name], "healthz", clients, 2))  # warm up
            print(f"limits off (plain uvicorn) vs on (HttpServer): {clients} clients, "
                  f"{seconds:.0f} s a load, {rounds} rounds")
            for r in range(rounds):
                for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    port, proc = servers[name]
                    for kind in ("healthz", "register"):
                        used = sum(psutil.Process(proc.pid).cpu_times()[:2])
                        f = asyncio.run(load(port, tokens[name], kind, clients, seconds, r * clients))
                        used = sum(psutil.Process(proc.pid).cpu_times()[:2]) - used
                        totals[name, kind] += f["per_second"]
                        cpu[name, kind][0] += used
                        cpu[name, kind][1] += f["requests"]
                        print(f"round {r + 1} limits {name:3} {kind:8} {f['per_second']:8.0f}/s  "
                              f"p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:6.1f} ms  "
                              f"{used / f['requests'] * 1e6:6.0f} us CPU/request  {f['statuses']}")
            for kind in ("healthz", "register"):
                off, on = totals["off", kind] / rounds, totals["on", kind] / rounds
                cpu_off, cpu_on = (cpu[name, kind][0] / cpu[name, kind][1] * 1e6 for name in ("off", "on"))
                print(f"{kind:8} off {off:8.0f}/s  on {on:8.0f}/s  on/off {on / off:.3f} (goal >= 0.95); "
                      f"server CPU/request off {cpu_off:.0f} us  on {cpu_on:.0f} us: "
                      f"off/on {cpu_off / cpu_on:.3f}")
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(30)
            for store in stores:
                store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--compare-limits", action="store_true",
                        help="HttpServer's limits on vs plain uvicorn, alternating rounds (SQLite)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of --compare-limits")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the server side
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.compare_limits:
        compare_limits(args.clients, args.seconds, args.rounds)
        return
    print(f"HTTP API: {args.clients} clients, {args.seconds:.0f} s per run, {args.workers} worker(s)")
    for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        schema = None
        if db == "sqlite":
            tmp = tempfile.mkdtemp()
            url = f"sqlite:///{tmp}/registrar.db"
        else:
            made = postgres_schema()
            if made is None:
                print("postgres: not reachable, skipped")
                continue
            url, schema = made
        try:
            figures = run(db, url, args.clients, args.seconds, args.workers)
        finally:
            if schema:
                drop_schema(schema)
        base, reg = figures["healthz"], figures["register"]
        for name, f in (("GET /healthz", base), ("POST /v1/results", reg)):
            print(f"{db:8} {name:17} {f['per_second']:8.0f}/s  p50 {f['p50_ms']:6.1f} ms  "
                  f"p99 {f['p99_ms']:6.1f} ms  statuses {f['statuses']}")
        print(f"{db:8} registrations: {reg['per_second'] / base['per_second']:.2f} of baseline; "
              f"events stored {reg['stored_events']}")
        if db == "sqlite":
            ok = reg["per_second"] >= 800 and reg["p99_ms"] < 100
            print(f"{db:8} goal (>= 800/s, p99 < 100 ms): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
