"""Reading an HTTP/1.1 answer from a raw asyncio stream: the benchmarks' load clients keep one
plain connection each (httpx's pool hands out 200 connections too slowly to measure a server)."""

from __future__ import annotations

import asyncio


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of the next answer on `reader` (Content-Length framed)."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)
