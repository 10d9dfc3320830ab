"""Extracts (issue 12's benchmark): issuing signed extracts through the API, and verifying them.

1. Setup: the extract store filled directly (`ExtractStore.apply`) with N standing results, one
   per person, as DELIVERY messages shaped like ExtractFeedMessage, and a portal token
   (`ExtractStore.add_portal`). The API runs as its own process (`uvicorn --factory
   services.app:app_from_env`, the app `rod up` serves), so the server and the clients measured
   here do not share one GIL.
2. Baseline: the same documents (one result each, the same verification address) rendered and
   signed in a loop in this process with `document.render` + `document.sign`: no HTTP, no
   database, no Kafka. Extracts/s, and each document's time.
3. Issue: C concurrent portal clients (raw asyncio HTTP/1.1, keep-alive, one connection each)
   issue the N extracts with `POST /v1/extracts`, one result each; every answer must be 201.
   Extracts/s and p50/p99 latency; the ratio against the baseline (goal >= 0.7x, p99 < 500 ms).
   One issued PDF is fetched and its signature checked against the served chain.
4. Verifications: the store is filled through SQL to S extracts (one result each, every 20th
   result withdrawn, the signed PDF of step 3 as every filler's document, each code's digest
   by `store.code_digest`), then V clients ask `GET /v1/verifications/{id}?code=` for
   extracts in random order for T seconds, against a baseline of `GET /healthz` from the same
   clients. Goal: >= 1,000/s with p99 < 50 ms.

The limit of 30 verifications a minute per client address cannot be configured. The server
takes the client address from `X-Forwarded-For` when the connection comes from a trusted proxy
(uvicorn's default: 127.0.0.1, as `rod up` serves), so every verifying client sends one and
moves to a new address every 10 requests, like many employers behind one proxy; the limit
itself still runs on every request. The script first checks that 31 requests from one
address do get a 429.

Person numbers: `--people synthetic` (default) makes N distinct numbers that pass the eleven
test, at run time, only in the temporary database (never printed; the PDFs mask them), so each
person has one standing result as in life. `--people documented` uses only the documented
numbers (domain.md), which piles N/7 results on each person and makes every issue read them all.

    .venv/bin/python bench/extracts.py                       # 2,000 extracts, 8 clients, 100,000 store
    .venv/bin/python bench/extracts.py --extracts 200 --store 10000 --seconds 5
    .venv/bin/python bench/extracts.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rawhttp import read_response  # noqa: E402
from services.extract.document import WORDS, ExtractDocument, ExtractResult, check_signature, render, sign  # noqa: E402
from services.extract.signing import SigningIdentity, load_or_create  # noqa: E402
from services.extract.store import (  # noqa: E402
    CODE_ALPHABET,
    CODE_LENGTH,
    DELIVERY,
    ExtractStore,
    code_digest,
    extracts,
    items,
    new_code,
    results,
)
from services.kernel.broker import free_port  # noqa: E402
from services.kernel.identifiers import is_valid_bsn, is_valid_onderwijsnummer, mask_person_number  # noqa: E402
from services.kernel.settings import Settings  # noqa: E402

CATALOGUE = ROOT / "tests" / "fixtures" / "catalogue.csv"
PUBLIC_URL = "https://rod.example.nl"
DOCUMENTED = [("bsn", "111222333"), ("bsn", "123456782"), ("bsn", "249566758"), ("bsn", "319072356"),
              ("bsn", "012345672"), ("onderwijsnummer", "101222331"), ("onderwijsnummer", "106071665")]
PROGRAMMES = [("56551", "B Bedrijfskunde"), ("34401", "B Geneeskunde"), ("59317", "M Public Administration"),
              ("39215", "B Technische Informatica"), ("25005", "M Verpleegkunde")]
RETRIES_PER_ADDRESS = 10  # verifications per forwarded client address before the client moves on
ISSUE_GOAL, ISSUE_P99_MS = 0.7, 500.0
VERIFY_GOAL, VERIFY_P99_MS = 1000.0, 50.0


# --- people and results ------------------------------------------------------------------------


def synthetic_people(count: int) -> list[tuple[str, str]]:
    """`count` distinct numbers that pass the BSN eleven test, made here and kept only in the
    temporary database; from a fixed start, so every run uses the same ones."""
    people: list[tuple[str, str]] = []
    n = 700_000_000
    while len(people) < count:
        n += 1
        number = f"{n:09d}"
        if is_valid_bsn(number):
            people.append(("bsn", number))
    return people


def documented_people(count: int) -> list[tuple[str, str]]:
    return [DOCUMENTED[i % len(DOCUMENTED)] for i in range(count)]


def delivery(i: int, person: tuple[str, str], prefix: str = "b") -> dict[str, Any]:
    """One DELIVERY as the feed reader hands it to the store (a decoded ExtractFeedMessage)."""
    code, name = PROGRAMMES[i % len(PROGRAMMES)]
    moment = datetime(2026, 7, 1, 12, tzinfo=UTC) + timedelta(seconds=i)
    return {
        "delivery_id": f"{prefix}d-{i:08d}", "kind": DELIVERY, "event_id": f"{prefix}e-{i:08d}",
        "result_id": f"{prefix}r-{i:08d}", "delivered_at": moment, "withdraws": None,
        "person_kind": "BSN" if person[0] == "bsn" else "ONDERWIJSNUMMER", "person_number": person[1],
        "institution": "25BE", "branch": "25BE01", "provider": None, "sector": "HO",
        "programme_code": code, "programme_name": name, "big_profession": None,
        "diploma_number": f"D{i:07d}", "diploma_date": date(2026, 7, 1) - timedelta(days=i % 900),
        "registered_at": moment - timedelta(minutes=1),
    }


def fill_results(store: ExtractStore, people: list[tuple[str, str]]) -> list[dict[str, Any]]:
    messages = [delivery(i, person) for i, person in enumerate(people)]
    for start in range(0, len(messages), 1000):
        store.apply(messages[start:start + 1000], {("rod.feed.extract.v1", 0): (start + 1000, None)})
    return messages


# --- the baseline: render and sign in a loop -------------------------------------------------------


def document_of(message: dict[str, Any]) -> ExtractDocument:
    """The document the API makes for an extract of this one result (http.signed_document)."""
    extract_id, code = str(uuid.uuid4()), new_code()
    moment = datetime.now(UTC)
    return ExtractDocument(
        extract_id=extract_id, verification_code=code,
        issued_at=moment.replace(microsecond=moment.microsecond // 1000 * 1000),
        person_kind=message["person_kind"], person_number_masked=mask_person_number(message["person_number"]),
        language="nl",
        results=[ExtractResult(message["result_id"], message["institution"], message["sector"],
                               message["programme_code"], message["programme_name"],
                               message["diploma_number"], message["diploma_date"])],
        verify_url=f"{PUBLIC_URL}/verify?{urlencode({'id': extract_id, 'code': code})}",
    )


def baseline(messages: list[dict[str, Any]], identity: SigningIdentity) -> dict[str, Any]:
    """Render and sign one document per message, one after another; each one's time."""
    times: list[float] = []
    render_time = 0.0
    started, cpu = time.perf_counter(), time.process_time()
    for message in messages:
        t0 = time.perf_counter()
        doc = document_of(message)
        pdf = render(doc)
        t1 = time.perf_counter()
        signed = sign(pdf, identity, reason=WORDS["nl"]["title"])
        times.append(time.perf_counter() - t0)
        render_time += t1 - t0
        assert signed.startswith(b"%PDF")
    return {"latencies": times, "seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
            "render": render_time}


# --- the API as its own process, and raw HTTP clients ----------------------------------------------


def start_server(env: dict[str, str], port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "services.app:app_from_env",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if workers > 1:
        command += ["--workers", str(workers)]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


def figures(latencies: list[float], elapsed: float) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"count": len(latencies), "per_second": len(latencies) / elapsed, "seconds": elapsed,
            "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "max_ms": max(latencies) * 1000}


def combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one kind as one figure: every latency, their total time and CPU."""
    latencies = [t for r in rounds for t in r["latencies"]]
    out = figures(latencies, sum(r["seconds"] for r in rounds))
    out["cpu_ms"] = sum(r["cpu"] for r in rounds) / len(latencies) * 1000
    out["statuses"] = {}
    for r in rounds:
        for status, count in r.get("statuses", {}).items():
            out["statuses"][status] = out["statuses"].get(status, 0) + count
    return out


def post(path: str, token: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def issue_client(port: int, token: str, work: list[dict[str, Any]], latencies: list[float],
                       statuses: dict[int, int], issued: list[dict[str, Any]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for message in work:
            body = json.dumps({"person": {message["_field"]: message["person_number"]},
                               "result_ids": [message["result_id"]], "language": "nl"}).encode()
            started = time.perf_counter()
            writer.write(post("/v1/extracts", token, body))
            status, answer = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                issued.append(json.loads(answer))
    finally:
        writer.close()


async def issue_load(port: int, token: str, messages: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued: list[dict[str, Any]] = []
    started = time.perf_counter()
    await asyncio.gather(*(issue_client(port, token, messages[c::clients], latencies, statuses, issued)
                           for c in range(clients)))
    elapsed = time.perf_counter() - started
    return {"latencies": latencies, "seconds": elapsed, "statuses": statuses, "issued": issued}


_ADDRESSES = itertools.count(1)  # forwarded client addresses used so far in this run


def addresses() -> Iterator[str]:
    """Forwarded client addresses for one load client: one not used before in this run, for
    RETRIES_PER_ADDRESS requests, then the next (10.0.0.1, 10.0.0.2, ...)."""
    while True:
        n = next(_ADDRESSES)
        address = f"10.{(n >> 16) % 256}.{(n >> 8) % 256}.{n % 256}"
        for _ in range(RETRIES_PER_ADDRESS):
            yield address


async def get_client(port: int, paths: list[str], deadline: float, latencies: list[float],
                     statuses: dict[int, int], forwarded: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    froms = addresses()
    i = 0
    try:
        while time.perf_counter() < deadline:
            path = paths[i % len(paths)]
            via = f"X-Forwarded-For: {next(froms)}\r\n" if forwarded else ""
            started = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{via}\r\n".encode())
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            i += 1
    finally:
        writer.close()


async def get_load(port: int, paths: list[str], clients: int, seconds: float,
                   forwarded: bool = True) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    share = [paths[c::clients] or paths for c in range(clients)]
    await asyncio.gather(*(get_client(port, share[c], deadline, latencies, statuses, forwarded)
                           for c in range(clients)))
    return {"latencies": latencies, "seconds": time.perf_counter() - started, "statuses": statuses}


async def limit_holds(port: int, path: str) -> list[int]:
    """31 verifications from one address (no X-Forwarded-For): the statuses of the last two."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen = []
    try:
        for _ in range(31):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            seen.append((await read_response(reader))[0])
    finally:
        writer.close()
    return seen[-2:]


# --- the verification store through SQL ----------------------------------------------------------


def filler_code() -> str:
    """A code as `store.new_code` makes them (16 Crockford base32 characters in groups of four),
    from one read of 10 random bytes instead of 16 `secrets.choice` calls."""
    n = int.from_bytes(os.urandom(10))
    chars = "".join(CODE_ALPHABET[(n >> (5 * k)) & 31] for k in range(CODE_LENGTH))
    return "-".join(chars[i:i + 4] for i in range(0, CODE_LENGTH, 4))



def fill_extracts(store: ExtractStore, total: int, existing: int, pdf: bytes) -> tuple[list[str], float]:
    """Extracts up to `total`, one result each, straight into the extract tables; the
    verification paths of the new ones, and the seconds it took."""
    started = time.perf_counter()
    paths: list[str] = []
    people = DOCUMENTED  # the filler's people are never looked up
    chunk = 10_000
    issued_at = datetime(2026, 8, 1, 9, tzinfo=UTC)
    for start in range(existing, total, chunk):
        result_rows, extract_rows, item_rows = [], [], []
        for i in range(start, min(total, start + chunk)):
            m = delivery(i, people[i % len(people)], prefix="f")
            extract_id, code = str(uuid.uuid4()), filler_code()
            withdrawn = m["delivered_at"] + timedelta(days=30) if i % 20 == 0 else None
            result_rows.append({
                **{k: m[k] for k in ("delivery_id", "event_id", "result_id", "person_kind", "person_number",
                                     "institution", "branch", "provider", "sector", "programme_code",
                                     "programme_name", "diploma_number", "diploma_date", "registered_at",
                                     "delivered_at")},
                "withdrawn_at": withdrawn, "withdrawal_id": f"fw-{i:08d}" if withdrawn else None,
            })
            extract_rows.append({
                "extract_id": extract_id, "portal": "bench", "language": "nl",
                "issued_at": issued_at + timedelta(seconds=i), "code_digest": code_digest(extract_id, code),
                "pdf": pdf, "person_kind": m["person_kind"],
                "person_number_masked": mask_person_number(m["person_number"]),
            })
            item_rows.append({"extract_id": extract_id, "result_id": m["result_id"],
                              "event_id": m["event_id"], "delivery_id": m["delivery_id"],
                              "institution": m["institution"], "published": True})
            paths.append(f"/v1/verifications/{extract_id}?code={code}")  # the alphabet needs no escaping
        with store.engine.begin() as conn:
            conn.execute(results.insert(), result_rows)
            conn.execute(extracts.insert(), extract_rows)
            conn.execute(items.insert(), item_rows)
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            for table in ("extract_results", "extract_extracts", "extract_items"):
                conn.exec_driver_sql(f"ANALYZE {table}")
    return paths, time.perf_counter() - started


# --- databases ---------------------------------------------------------------------------------------


def postgres_schema(base: str) -> tuple[str, str]:
    engine = sqlalchemy.create_engine(base, connect_args={"connect_timeout": 3})
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    joiner = "&" if "?" in base else "?"
    return f"{base}{joiner}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


# --- the run -------------------------------------------------------------------------------------------


def line(name: str, f: dict[str, Any], unit: str) -> str:
    return (f"  {name:34} {f['per_second']:9.1f} {unit}/s  p50 {f['p50_ms']:7.1f} ms"
            f"  p99 {f['p99_ms']:7.1f} ms  max {f['max_ms']:7.1f} ms  ({f['count']} in {f['seconds']:.1f} s;"
            f" CPU {f['cpu_ms']:.2f} ms each)")


class CpuMeter:
    """CPU time (user + system, every thread) of the server process and its workers over a load:
    less sensitive to other work on the machine than the wall-clock rates."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def used(self) -> float:
        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> CpuMeter:
        self.start = self.used()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = self.used() - self.start

    def of(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "cpu": self.seconds}


def run(args: argparse.Namespace, data_dir: Path, url: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_") and k != "FORWARDED_ALLOW_IPS"}
    env.update(ROD_DATA_DIR=str(data_dir), ROD_CATALOGUE=str(CATALOGUE), ROD_PUBLIC_URL=PUBLIC_URL)
    if url:
        env["ROD_DATABASE_URL"] = url
    settings = Settings.from_env(env)
    identity, _ = load_or_create(settings.data_dir)  # the server loads the same one
    store = ExtractStore(settings.database_urls["extract"])
    people = (synthetic_people if args.people == "synthetic" else documented_people)(args.extracts)
    started = time.perf_counter()
    messages = fill_results(store, people)
    for m, (field, _) in zip(messages, people, strict=True):
        m["_field"] = field
    token = store.add_portal("bench-portal")
    assert all(is_valid_bsn(p) or is_valid_onderwijsnummer(p) for _, p in people)
    print(f"setup: {len(messages)} standing results for {len(set(people))} people ({args.people}) "
          f"in {time.perf_counter() - started:.1f} s")

    port = free_port()
    proc = start_server(env, port, args.workers)
    try:
        # warm up both: fonts, the signer (the server's warm-up extracts are stored too)
        baseline(messages[:3], identity)
        warm = asyncio.run(issue_load(port, token, messages[:args.clients], args.clients))
        bases, issues = [], []
        for r in range(args.rounds):  # alternating, so a change in the machine's load hits both
            part = messages[r::args.rounds]
            bases.append(baseline(part, identity))
            with CpuMeter(proc.pid) as meter:
                raw = asyncio.run(issue_load(port, token, part, args.clients))
            issues.append(meter.of(raw))
            print(f"  round {r + 1}: baseline {len(part) / bases[-1]['seconds']:.1f}/s, "
                  f"issue {len(part) / issues[-1]['seconds']:.1f}/s, "
                  f"{bases[-1]['seconds'] / issues[-1]['seconds']:.2f}x")
        base, issued = combined(bases), combined(issues)
        render_ms = sum(b["render"] for b in bases) / base["count"] * 1000
        sign_ms = sum(sum(b["latencies"]) for b in bases) / base["count"] * 1000 - render_ms
        print(line("baseline: render + sign in a loop", base, "extracts"))
        print(f"  {'':34} render {render_ms:.1f} ms + sign {sign_ms:.1f} ms a document (mean)")
        print(line(f"issue: POST /v1/extracts, {args.clients} clients", issued, "extracts"))
        print(f"  {'':34} statuses {issued['statuses']}")
        ratio = issued["per_second"] / base["per_second"]
        ok = ratio >= ISSUE_GOAL and issued["p99_ms"] < ISSUE_P99_MS
        print(f"  issue / baseline: {ratio:.2f}x  p99 {issued['p99_ms']:.0f} ms  "
              f"goal (>= {ISSUE_GOAL}x, p99 < {ISSUE_P99_MS:.0f} ms): {'met' if ok else 'MISSED'}")
        answers = [a for r in issues for a in r["issued"]]
        stored = store.counts().extracts
        bearer = {"authorization": f"Bearer {token}"}
        pdf = httpx.get(f"http://127.0.0.1:{port}{answers[0]['pdf']}", headers=bearer,
                        timeout=30).content if answers else b""
        check = check_signature(pdf, identity.chain_pem) if pdf else None
        good = check is not None and check.intact and check.trusted and check.covers_whole_document
        print(f"  stored extracts {stored} ({len(warm['issued'])} of them the warm-up's); "
              f"one PDF ({len(pdf)} bytes), its signature: {'intact and trusted' if good else check}")

        paths = [f"/v1/verifications/{a['extract_id']}?{urlencode({'code': a['verification_code']})}"
                 for a in answers]
        more, took = fill_extracts(store, args.store, stored, pdf)
        paths += more
        random.Random(12).shuffle(paths)
        print(f"verification store: {store.counts().extracts} extracts "
              f"({len(more)} through SQL in {took:.1f} s, each with a {len(pdf)}-byte PDF)")
        last = asyncio.run(limit_holds(port, paths[0]))
        print(f"  limit check, 31 from one address without X-Forwarded-For: the last two answered {last}")
        asyncio.run(get_load(port, paths, args.verifiers, 2))  # warm up
        healths, verifieds = [], []
        for r in range(args.rounds):  # alternating, as above; each round asks about other extracts
            turn = r * len(paths) // args.rounds
            with CpuMeter(proc.pid) as meter:
                raw = asyncio.run(get_load(port, ["/healthz"], args.verifiers, args.seconds / args.rounds))
            healths.append(meter.of(raw))
            with CpuMeter(proc.pid) as meter:
                raw = asyncio.run(get_load(port, paths[turn:] + paths[:turn], args.verifiers,
                                           args.seconds / args.rounds))
            verifieds.append(meter.of(raw))
        health, verified = combined(healths), combined(verifieds)
        print(line(f"baseline: GET /healthz, {args.verifiers} clients", health, "req"))
        print(line(f"GET /v1/verifications, {args.verifiers} clients", verified, "verif"))
        print(f"  {'':34} statuses {verified['statuses']}")
        ok = verified["per_second"] >= VERIFY_GOAL and verified["p99_ms"] < VERIFY_P99_MS
        print(f"  verifications / healthz: {verified['per_second'] / health['per_second']:.2f}x  "
              f"goal (>= {VERIFY_GOAL:.0f}/s, p99 < {VERIFY_P99_MS:.0f} ms): {'met' if ok else 'MISSED'}")
    finally:
        proc.terminate()
        proc.wait(30)
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extracts", type=int, default=2000, help="extracts to issue (one result each)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent portal clients")
    parser.add_argument("--store", type=int, default=100_000, help="extracts in the verification store")
    parser.add_argument("--verifiers", type=int, default=16, help="concurrent verifying clients")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of each verification load")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes (each keeps its own attempt limit)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of baseline and API, alternating (the time is split among them)")
    parser.add_argument("--people", choices=["synthetic", "documented"], default="synthetic")
    parser.add_argument("--database", help="database URL (default: SQLite files in a temporary directory); "
                        "PostgreSQL gets a fresh schema, dropped afterwards")
    args = parser.parse_args()
    print(f"extracts: {args.extracts} to issue by {args.clients} clients; verifications on {args.store} "
          f"extracts by {args.verifiers} clients for {args.seconds:.0f} s; {args.workers} server worker(s); "
          f"load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        schema = None
        url = args.database
        if url and url.startswith("postgresql"):
            url, schema = postgres_schema(args.database)
        print(f"database: {'SQLite, temporary directory' if not url else ('PostgreSQL' if schema else url)}")
        try:
            run(args, Path(tmp), url)
        finally:
            if schema:
                drop_schema(args.database, schema)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
