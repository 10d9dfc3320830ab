"""Idle connections against HttpServer (issue 13): 1,000 held open for 60 s.

Starts the API as `rod up` serves it (through `services.kernel.server.HttpServer`, SQLite),
opens 1,000 connections that send nothing and keeps them open for 60 s, while one client asks
GET /healthz every 10 ms on its own keep-alive connection. Prints the server's RSS growth over
its RSS before the connections (sampled every 0.25 s, the peak) and /healthz p50/p99.

Two phases:
- **held**: ROD_HTTP_HEADER_TIMEOUT_SECONDS raised past the hold, so all 1,000 stay open the
  whole time (the memory of 1,000 idle connections);
- **defaults**: the default limits, where the server closes an idle connection after the header
  timeout (10 s) and the bench opens a new one at once, so 1,000 stay open and ~100 a second are
  accepted and closed (an attacker who reconnects).

    .venv/bin/python bench/idle_connections.py                 # 1,000 connections, 60 s a phase
    .venv/bin/python bench/idle_connections.py --connections 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import start_server  # noqa: E402
from bench.rawhttp import read_response  # noqa: E402
from services.kernel.broker import free_port  # noqa: E402

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def hold(port: int, connections: int, seconds: float, server: psutil.Process) -> dict[str, float]:
    """Keep `connections` idle connections open for `seconds` while timing /healthz."""
    deadline = time.monotonic() + seconds
    reopened = [0]

    async def idle_connection() -> None:
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await asyncio.wait_for(reader.read(), deadline - time.monotonic())  # until the server closes
            except (TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
            if time.monotonic() < deadline:
                reopened[0] += 1

    async def probe(latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(HEALTHZ)
            status, _ = await read_response(reader)
            assert status == 200, status
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
        writer.close()

    async def sample(peak: list[int]) -> None:
        while time.monotonic() < deadline:
            peak[0] = max(peak[0], server.memory_info().rss)
            await asyncio.sleep(0.25)

    before = server.memory_info().rss
    latencies: list[float] = []
    peak = [before]
    idle = [asyncio.ensure_future(idle_connection()) for _ in range(connections)]
    await asyncio.sleep(1)  # all connected before the probe starts
    open_now = len(server.net_connections("tcp")) - 1  # less the listening socket
    await asyncio.gather(probe(latencies), sample(peak), *idle)
    cuts = statistics.quantiles(latencies, n=100)
    return {"open": open_now, "rss_before_mb": before / 1e6, "rss_growth_mb": (peak[0] - before) / 1e6,
            "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "probes": len(latencies),
            "reopened": reopened[0]}


def run(phase: str, connections: int, seconds: float) -> dict[str, float]:
    env = {"ROD_HTTP_HEADER_TIMEOUT_SECONDS": str(seconds + 60)} if phase == "held" else {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(f"sqlite:///{tmp}/registrar.db", Path(tmp), port, limits=True, env=env)
        try:
            return asyncio.run(hold(port, connections, seconds, psutil.Process(proc.pid)))
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the bench's own sockets
    if soft < args.connections + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 256), hard))
    print(f"{args.connections} idle connections for {args.seconds:.0f} s, GET /healthz every 10 ms")
    for phase in ("held", "defaults"):
        f = run(phase, args.connections, args.seconds)
        print(f"{phase:8} open {f['open']:5}  server RSS {f['rss_before_mb']:.0f} MB "
              f"+ {f['rss_growth_mb']:.1f} MB (goal < 50)  /healthz p50 {f['p50_ms']:.2f} ms "
              f"p99 {f['p99_ms']:.2f} ms (goal < 20) "
              f"over {f['probes']} probes  reopened after the server closed them: {f['reopened']}")


if __name__ == "__main__":
    main()
