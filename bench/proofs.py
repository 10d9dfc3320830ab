"""Log proofs (issue 15's benchmark): building the Merkle tree, proofs over HTTP, `rod log verify`.

1. Import N results with the registrar's bulk import (`Registrar.import_file`, as bench/ingest.py)
   into a fresh store: results/s, the **baseline** of steps 1 and 2. Then `StoredTree.catch_up()`
   builds the tree over those N events (leaves and inner nodes stored): leaves/s and the ratio
   against the import rate (goal >= 5x). Beside it, the **ceiling**: a bare hashlib.sha256 loop
   computing the same leaf and inner-node hashes in memory (no reads, no writes).
2. The same file imported into a second fresh store while the log component (`LogService`:
   build, sign a checkpoint every ROD_LOG_CHECKPOINT_SECONDS, no broker) runs in a separate
   process, as `rod up --components log` runs beside `rod import`: results/s against step 1's
   rate (goal >= 0.9x), and how far the tree lagged when the import ended.
3. Proofs at N leaves (step 1's store, one signed checkpoint at N): `StoredTree` in process, then
   the HTTP app (uvicorn, the app `rod up` serves, its own process) with one keep-alive httpx
   client: p50/p99 of R inclusion proofs (random positions) and R consistency proofs (random
   first size, second N) against a bare `GET /healthz` from the same client (goal p99 < 5 ms).
   Every proof answered is checked against the root with the project's verifiers.
4. `verify_log` (what `rod log verify` runs) over step 2's store, whose checkpoints the log
   component signed while the events arrived (goal < 60 s at 1,000,000).

The machine is shared (2 cores): the load average is printed with each figure; compare ratios.

    .venv/bin/python bench/proofs.py                         # 1,000,000 events, SQLite
    .venv/bin/python bench/proofs.py --events 100000
    .venv/bin/python bench/proofs.py --events 100000 --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import postgres_schema  # noqa: E402
from services.kernel import logging as rod_logging  # noqa: E402
from services.kernel.broker import free_port  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.store import EventStore, events, log_nodes  # noqa: E402
from services.registrar.transparency import merkle  # noqa: E402
from services.registrar.transparency.checkpoint import Signer, parse_signer  # noqa: E402
from services.registrar.transparency.keys import LogIdentity  # noqa: E402
from services.registrar.transparency.tree import CheckpointLog, StoredTree, keep_verifier  # noqa: E402
from services.registrar.transparency.verify import verify_log  # noqa: E402
from tests.fixtures.bulkfiles import sample_rows, write_csv  # noqa: E402

ORIGIN = "bench.rodchain.local/log"
BUILD_GOAL, IMPORT_GOAL, P99_GOAL_MS, VERIFY_GOAL_S = 5.0, 0.9, 5.0, 60.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# --- stores ------------------------------------------------------------------------------------


def fresh_store_url(database: str, workdir: Path, name: str) -> tuple[str, Callable[[], None]]:
    """A URL of an empty store (an SQLite file, or a new PostgreSQL schema) and how to drop it."""
    if database == "sqlite":
        return f"sqlite:///{workdir / (name + '.db')}", lambda: None
    return postgres_schema(database)


def import_rate(store: EventStore, path: Path, expected: int) -> tuple[float, float]:
    """(results/s, CPU µs of this process per result) of the registrar's bulk import of `path`
    into `store`: the CPU time is steadier than the rate when other work shares the machine,
    but blind to waiting for the write lock."""
    registrar = Registrar(store, Catalogue.load(None))
    registrar.add_institution("25BE", "Universiteit Bench", ["HO"])
    start, cpu = time.perf_counter(), time.process_time()
    summary = registrar.import_file(path, "25BE")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert summary.accepted == expected, f"{summary.accepted} of {expected} accepted"
    return expected / elapsed, cpu / expected * 1e6


# --- step 1: building --------------------------------------------------------------------------


def event_hashes(store: EventStore) -> list[bytes]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.hash).order_by(events.c.position)).scalars()
        return [bytes(h) for h in rows]


def bare_hashlib(hashes: list[bytes]) -> tuple[float, bytes]:
    """(seconds, root of the largest complete subtree) of the leaf and inner-node hashes of a
    stored tree computed with bare hashlib.sha256, level by level, in memory."""
    sha = hashlib.sha256
    start = time.perf_counter()
    level = [sha(b"\x00" + h).digest() for h in hashes]
    while len(level) > 1:
        level = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    return time.perf_counter() - start, level[0]


def count_nodes(store: EventStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(log_nodes)).scalar_one()


# --- step 2: the log component in its own process ----------------------------------------------


def log_component(url: str, data_dir: str, signer_text: str, stop: multiprocessing.synchronize.Event) -> None:
    """`rod up --components log` without a broker: build, sign when due, until `stop`."""
    from services.registrar.transparency.service import LogService

    rod_logging.configure(stream=open(os.devnull, "w"), json=True)  # noqa: SIM115 - lives as long as the process
    settings = Settings.from_env({"ROD_DATABASE_URL": url, "ROD_DATA_DIR": data_dir})
    identity = LogIdentity(ORIGIN, parse_signer(signer_text), "bench")
    LogService(settings, None, store=EventStore(url), identity=identity).run(stop)


# --- step 3: proofs ------------------------------------------------------------------------------


def percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def in_process_proofs(tree: StoredTree, size: int, root: bytes, requests: int) -> None:
    rng = random.Random(15)
    leaf_latency, cons_latency = [], []
    for _ in range(requests):
        index = rng.randrange(size)
        start = time.perf_counter()
        path = tree.inclusion_proof(index, size)
        leaf_latency.append(time.perf_counter() - start)
        assert merkle.verify_inclusion(tree.leaf(index), index, size, path, root)
    for _ in range(requests):
        first = rng.randrange(1, size)
        start = time.perf_counter()
        path = tree.consistency_proof(first, size)
        cons_latency.append(time.perf_counter() - start)
        assert merkle.verify_consistency(first, size, path, tree.root(first), root)
    for name, latencies in (("inclusion", leaf_latency), ("consistency", cons_latency)):
        p50, p99 = percentiles(latencies)
        print(f"  StoredTree {name:11} in process: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({load()})")


def start_server(url: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ROD_DATABASE_URL": url, "ROD_DATA_DIR": str(data_dir), "ROD_LOG_ORIGIN": ORIGIN,
           "ROD_CATALOGUE": str(ROOT / "tests" / "fixtures" / "catalogue.csv")}
    command = [sys.executable, "-m", "uvicorn", "--factory", "services.app:app_from_env",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"the API did not start (exit {server.returncode})")
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the API did not answer /healthz within 120 s")


def timed(client: httpx.Client, url: str, params: dict | None = None) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = client.get(url, params=params)
    return time.perf_counter() - start, response


def http_proofs(url: str, data_dir: Path, tree: StoredTree, size: int, root: bytes, requests: int) -> None:
    port = free_port()
    server = start_server(url, data_dir, port)
    rng = random.Random(15)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Host": "localhost"}) as client:
            probe = client.get("/v1/log/proofs/inclusion", params={"position": 1, "tree_size": size})
            if probe.status_code != 200:
                print(f"  HTTP proofs: GET /v1/log/proofs/inclusion answers {probe.status_code}: "
                      "not measured")
                return
            for _ in range(200):  # warm-up of both routes
                client.get("/healthz")
                client.get("/v1/log/proofs/inclusion", params={"position": rng.randrange(1, size + 1),
                                                              "tree_size": size})
            health = []
            for _ in range(requests):
                seconds, response = timed(client, "/healthz")
                assert response.status_code == 200
                health.append(seconds)
            leaf_latency, checks = [], []
            for _ in range(requests):
                position = rng.randrange(1, size + 1)
                seconds, response = timed(client, "/v1/log/proofs/inclusion",
                                          {"position": position, "tree_size": size})
                assert response.status_code == 200, response.text
                leaf_latency.append(seconds)
                checks.append(("inclusion", position, response.json()))
            cons_latency = []
            for _ in range(requests):
                first = rng.randrange(1, size)
                seconds, response = timed(client, "/v1/log/proofs/consistency",
                                          {"first": first, "second": size})
                assert response.status_code == 200, response.text
                cons_latency.append(seconds)
                checks.append(("consistency", first, response.json()))
        for kind, at, body in checks:  # outside the timing: every answer proves what it should
            hashes = [base64.b64decode(h) for h in body["hashes"]]
            if kind == "inclusion":
                ok = merkle.verify_inclusion(tree.leaf(at - 1), at - 1, size, hashes, root)
            else:
                ok = merkle.verify_consistency(at, size, hashes, tree.root(at), root)
            assert ok, f"{kind} proof at {at} does not verify"
        b50, b99 = percentiles(health)
        print(f"  HTTP GET /healthz (baseline)       : p50 {b50:6.2f} ms  p99 {b99:6.2f} ms")
        for name, latencies in (("inclusion", leaf_latency), ("consistency", cons_latency)):
            p50, p99 = percentiles(latencies)
            verdict = "met" if p99 < P99_GOAL_MS else "MISSED"
            print(f"  HTTP {name:11} proof, {size:,} leaves: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                  f"(p50 {p50 / b50:.1f}x /healthz; goal p99 < {P99_GOAL_MS:.0f} ms: {verdict})  ({load()})")
        print(f"  {len(checks):,} proofs answered over HTTP verified against the root")
    finally:
        server.terminate()
        server.wait(10)


# --- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite",
                        help="'sqlite' (a file per store) or a PostgreSQL URL")
    parser.add_argument("--requests", type=int, default=2000, help="proofs of each kind measured")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out: concurrent,http")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rod_logging.configure(stream=open(os.devnull, "w"), json=True)  # noqa: SIM115 - lives as long as the run
    n = args.events
    drops: list[Callable[[], None]] = []
    stores: list[EventStore] = []

    with tempfile.TemporaryDirectory(prefix="rod-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "results.csv"
        write_csv(path, sample_rows(n))
        print(f"bulk file: {n:,} records, {path.stat().st_size / 2**20:.1f} MB CSV; "
              f"database {'SQLite' if args.database == 'sqlite' else 'PostgreSQL'}; {os.cpu_count()} cores")
        try:
            # 1. import, then build the tree, then the bare hashlib ceiling
            url, drop = fresh_store_url(args.database, workdir, "built")
            drops.append(drop)
            store = EventStore(url)
            stores.append(store)
            before = load()
            rate, cpu = import_rate(store, path, n)
            print(f"1. registrar import (baseline)   {rate:9,.0f} results/s  ({cpu:.0f} µs CPU a result; "
                  f"{before} -> {load()})")
            tree = StoredTree(store)
            start = time.perf_counter()
            added = tree.catch_up()
            build_s = time.perf_counter() - start
            assert added == n
            nodes = count_nodes(store)
            hashes = event_hashes(store)
            bare_s, _ = bare_hashlib(hashes)
            build_rate, bare_rate = n / build_s, n / bare_s
            verdict = "met" if build_rate >= BUILD_GOAL * rate else "MISSED"
            print(f"   StoredTree.catch_up()         {build_rate:9,.0f} leaves/s  ({nodes:,} nodes stored, "
                  f"{build_s:.1f} s)  ratio {build_rate / rate:.1f}x the import (goal >= {BUILD_GOAL:.0f}x: "
                  f"{verdict})  ({load()})")
            print(f"   bare hashlib.sha256 (ceiling) {bare_rate:9,.0f} leaves/s  (leaf + inner hashes in "
                  f"memory)  catch_up at {build_rate / bare_rate:.2f}x of it")
            size = tree.size()
            root = tree.root(size)
            signer = Signer.generate(ORIGIN)
            keep_verifier(store, signer.verifier.text())
            CheckpointLog(store).sign_next(tree, signer, ORIGIN)

            # 2. the same import into a fresh store with the log component in its own process
            if "concurrent" not in skip:
                url2, drop2 = fresh_store_url(args.database, workdir, "concurrent")
                drops.append(drop2)
                store2 = EventStore(url2)
                stores.append(store2)
                context = multiprocessing.get_context("spawn")
                stop = context.Event()
                builder = context.Process(target=log_component,
                                          args=(url2, str(workdir / "log-var"), signer.text(), stop))
                builder.start()
                try:
                    before = load()
                    rate2, cpu2 = import_rate(store2, path, n)
                    ended = time.perf_counter()
                    tree2 = StoredTree(store2)
                    lag = n - tree2.size()
                    while tree2.size() < n:
                        time.sleep(0.1)
                    caught = time.perf_counter() - ended
                    verdict = "met" if rate2 >= IMPORT_GOAL * rate else "MISSED"
                    print(f"2. import with the log component {rate2:9,.0f} results/s  "
                          f"ratio {rate2 / rate:.2f}x step 1 (goal >= {IMPORT_GOAL}x: {verdict})  "
                          f"({cpu2:.0f} µs CPU a result, {cpu / cpu2:.2f}x step 1's; {before} -> {load()})")
                    print(f"   tree {lag:,} leaves behind when the import ended; "
                          f"caught up {caught:.1f} s later")
                    time.sleep(6)  # one more checkpoint, of the whole tree
                finally:
                    stop.set()
                    builder.join(60)
                verify_store, verifier = store2, signer.verifier
            else:
                verify_store, verifier = store, signer.verifier

            # 3. proofs at n leaves
            print(f"3. proofs at {size:,} leaves, {args.requests:,} of each kind")
            in_process_proofs(tree, size, root, args.requests)
            if "http" not in skip:
                http_proofs(url, workdir / "api-var", tree, size, root, args.requests)

            # 4. rod log verify
            start = time.perf_counter()
            verdict_log = verify_log(verify_store, verifier, ORIGIN)
            verify_s = time.perf_counter() - start
            assert verdict_log.ok, verdict_log
            verdict = "met" if verify_s < VERIFY_GOAL_S * n / 1_000_000 else "MISSED"
            print(f"4. verify_log: {verdict_log.events:,} events, {verdict_log.checkpoints} checkpoints in "
                  f"{verify_s:.1f} s ({verdict_log.events / verify_s:,.0f} events/s; "
                  f"goal < 60 s at 1,000,000, scaled: {verdict})  ({load()})")
        finally:
            for opened in stores:
                opened.dispose()
            for drop in drops:
                drop()


if __name__ == "__main__":
    main()
