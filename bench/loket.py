"""Het Loket (issue 14's benchmark): the registration form against the JSON API, and the feedback
table of a 200,000-record batch.

1. One server (the app `rod up` serves, through HttpServer with its limits, in its own process,
   as bench/api.py --compare-limits starts it) on a fresh database with institution 25BE.
2. Registrations: 16 concurrent clients post for 30 s in all, in alternating rounds (which goes
   first alternates too):
   - form: each client logs in at /loket/login with the institution's token (its own session
     cookie), reads the CSRF token from GET /loket/registreren, then posts the registration form
     (application/x-www-form-urlencoded, the cookie, the CSRF token and the Origin a browser
     sends) and expects the 303 to the new result's page (the redirect is not followed: that
     GET is the result page, not the registration);
   - API: `POST /v1/results` with the bearer token and a JSON body (bench/api.py's client).
   Throughput, p50/p99 of each and the ratio form/API. Goal: >= 0.7x, form p99 < 150 ms.
3. Feedback table: a 200,000-record CSV (every 10th record refused: a BSN that fails the eleven
   test) uploaded with `POST /v1/batches`; then, logged in, `GET /loket/aanleveringen/{id}` pages:
   the first, the middle, the last, the next-page link of the first, and with the filter "only
   rejected" its first and last pages, each fetched several times. Goal: every page < 200 ms.

The clients are raw asyncio HTTP/1.1 with keep-alive, one connection each (bench/rawhttp.py).
Person numbers: the documented examples only (domain.md); every registration has its own
diploma number.

    .venv/bin/python bench/loket.py                         # SQLite, 16 clients, 30 s a kind, 200,000 records
    .venv/bin/python bench/loket.py --seconds 6 --records 20000
    .venv/bin/python bench/loket.py --db postgres           # a fresh schema on ROD_TEST_POSTGRES_URL
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import PEOPLE, drop_schema, figures, load, postgres_schema, start_server  # noqa: E402
from bench.rawhttp import read_answer  # noqa: E402
from services.kernel.broker import free_port  # noqa: E402
from services.registrar.catalogue import Catalogue  # noqa: E402
from services.registrar.commands import Registrar  # noqa: E402
from services.registrar.loket.router import COOKIE, PAGE_SIZE  # noqa: E402
from services.registrar.store import EventStore  # noqa: E402
from tests.fixtures.bulkfiles import sample_row, write_csv  # noqa: E402

CATALOGUE = ROOT / "tests" / "fixtures" / "catalogue.csv"
BAD_BSN = "111222334"  # fails the eleven test: the record is refused (BSN_INVALID)
CSRF = re.compile(rb'name="csrf" value="([^"]+)"')


class FormClient:
    """One browser-like client of the registration form on one keep-alive connection."""

    def __init__(self, port: int, number: int) -> None:
        self.port, self.number, self.sent = port, number, 0
        self.host = f"127.0.0.1:{port}"
        self.cookie = ""
        self.csrf = ""
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """A fresh connection (the server closes one left idle while the other kind had its round)."""
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def open(self, token: str) -> None:
        await self.connect()
        status, headers, _ = await self.request("POST", "/loket/login", urlencode({"token": token}).encode())
        assert status == 303 and COOKIE in headers.get("set-cookie", ""), (status, headers)
        self.cookie = headers["set-cookie"].split(";", 1)[0]
        status, _, page = await self.request("GET", "/loket/registreren")
        found = CSRF.search(page)
        assert status == 200 and found, status
        self.csrf = found.group(1).decode()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if self.cookie:
            head += f"Cookie: {self.cookie}\r\n"
        if method == "POST":
            head += (f"Origin: http://{self.host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\n")
        assert self.writer is not None
        self.writer.write(head.encode() + b"\r\n" + body)
        return await read_answer(self.reader)

    def form(self) -> bytes:
        self.sent += 1
        return urlencode({
            "csrf": self.csrf, "bsn": PEOPLE[self.sent % len(PEOPLE)], "onderwijsnummer": "",
            "vestigingscode": "25BE01", "onderwijsaanbieder": "", "sector": "HO", "opleidingscode": "56551",
            "diplomavolgnummer": f"L{self.number}-{self.sent}", "diplomadatum": "2026-07-01"}).encode()

    async def post_until(self, deadline: float, latencies: list[float], statuses: dict[int, int]) -> None:
        await self.connect()  # the session stays: its cookie and CSRF token
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, headers, _ = await self.request("POST", "/loket/registreren", self.form())
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 303 or not headers.get("location", "").startswith("/loket/resultaten/"):
                raise RuntimeError(f"the form answered {status} {headers.get('location')}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def form_load(clients: list[FormClient], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(*(c.post_until(started + seconds, latencies, statuses) for c in clients))
    return figures(latencies, time.perf_counter() - started, statuses)


def registrations(port: int, token: str, clients: int, seconds: float, rounds: int) -> None:
    async def run() -> None:
        forms = [FormClient(port, c) for c in range(clients)]
        await asyncio.gather(*(f.open(token) for f in forms))
        await load(port, token, "healthz", clients, 2)  # warm up
        each = seconds / rounds
        kept: dict[str, list[dict[str, Any]]] = {"form": [], "api": []}
        print(f"registrations: {clients} clients, {rounds} rounds of {each:.0f} s per kind, alternating")
        try:
            for r in range(rounds):
                for kind in (("form", "api") if r % 2 == 0 else ("api", "form")):
                    if kind == "form":
                        f = await form_load(forms, each)
                    else:
                        f = await load(port, token, "register", clients, each, first_client=r * clients)
                    kept[kind].append(f)
                    print(f"round {r + 1} {kind:4} {f['per_second']:7.0f}/s  p50 {f['p50_ms']:6.1f} ms  "
                          f"p99 {f['p99_ms']:6.1f} ms  {f['statuses']}")
        finally:
            for f in forms:
                f.close()
        means = {}
        for kind, name in (("form", "POST /loket/registreren (form)"), ("api", "POST /v1/results (JSON)")):
            per_second = statistics.fmean(f["per_second"] for f in kept[kind])
            every = [t for f in kept[kind] for t in f["latencies"]]
            cuts = statistics.quantiles(every, n=100)
            means[kind] = (per_second, cuts[98] * 1000)
            print(f"{name:32} {per_second:7.0f}/s  p50 {cuts[49] * 1000:6.1f} ms  "
                  f"p99 {cuts[98] * 1000:6.1f} ms  ({len(every)} requests in {rounds} rounds)")
        ratio = means["form"][0] / means["api"][0]
        met = ratio >= 0.7 and means["form"][1] < 150
        print(f"form/API {ratio:.2f}x; goal (>= 0.7x, form p99 < 150 ms): {'met' if met else 'MISSED'}")

    asyncio.run(run())


def feedback_table(url: str, token: str, records: int, tmp: Path, repeat: int) -> None:
    path = tmp / "batch.csv"
    write_csv(path, (sample_row(i, bsn=BAD_BSN if i % 10 == 9 else PEOPLE[i % len(PEOPLE)],
                                diplomavolgnummer=f"F-{i}") for i in range(records)))
    with httpx.Client(base_url=url, timeout=3600) as api:
        started = time.perf_counter()
        answer = api.post("/v1/batches", content=path.read_bytes(), headers={
            "Authorization": f"Bearer {token}", "content-type": "text/csv"})
        assert answer.status_code in (200, 201), (answer.status_code, answer.text[:300])
        batch = answer.json()["batch_id"]
        print(f"feedback table: a {records:,}-record batch ({path.stat().st_size / 1e6:.1f} MB) imported in "
              f"{time.perf_counter() - started:.1f} s: {answer.json().get('summary', '')}")
    with httpx.Client(base_url=url, timeout=60, headers={"Origin": url}) as browser:
        assert browser.post("/loket/login", data={"token": token}).status_code == 303
        first = browser.get(f"/loket/aanleveringen/{batch}")
        following = re.search(r'href="(/loket/aanleveringen/[^"]+\?na=\d+)"', first.text)
        assert first.status_code == 200 and following, first.status_code
        rejected_last = records - 10 * PAGE_SIZE  # every 10th is refused: the last rejected page starts here
        pages = {
            "first page": "", "next-page link of the first": following.group(1).split("?", 1)[1],
            "middle page": f"na={records // 2}", "last page": f"na={records - PAGE_SIZE}",
            "only rejected, first page": "afgekeurd=1",
            "only rejected, last page": f"na={rejected_last}&afgekeurd=1",
        }
        worst = 0.0
        print(f"  page ({PAGE_SIZE} rows)                    median     max  ({repeat} fetches each)")
        for name, query in pages.items():
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                page = browser.get(f"/loket/aanleveringen/{batch}" + (f"?{query}" if query else ""))
                times.append((time.perf_counter() - started) * 1000)
                rows = page.text.count("<tr><td class=\"n\">")
                assert page.status_code == 200 and rows == PAGE_SIZE, (name, page.status_code, rows)
            worst = max(worst, max(times))
            print(f"  {name:37} {statistics.median(times):6.1f} ms {max(times):6.1f} ms")
    print(f"feedback table goal (every page < 200 ms): {'met' if worst < 200 else 'MISSED'} "
          f"(slowest fetch {worst:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30, help="load per kind, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=200_000, help="the feedback table's batch")
    parser.add_argument("--repeat", type=int, default=10, help="fetches of each feedback page")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    schema = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{tmp}/registrar.db"
        else:
            made = postgres_schema()
            if made is None:
                raise SystemExit("postgres: not reachable")
            url, schema = made
        store = EventStore(url)
        registrar = Registrar(store, Catalogue.load(CATALOGUE))
        token = registrar.add_institution("25BE", "Bench University", ["HO"])
        store.dispose()
        port = free_port()
        (Path(tmp) / "data").mkdir()
        proc = start_server(url, Path(tmp) / "data", port, limits=True)
        try:
            registrations(port, token, args.clients, args.seconds, args.rounds)
            feedback_table(f"http://127.0.0.1:{port}", token, args.records, Path(tmp), args.repeat)
        finally:
            proc.terminate()
            proc.wait(30)
            if schema:
                drop_schema(schema)


if __name__ == "__main__":
    main()
