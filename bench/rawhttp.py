"""Reading an HTTP/1.1 answer from a raw asyncio stream: the benchmarks' load clients keep one
plain connection each (httpx's pool hands out 200 connections too slowly to measure a server)."""

from __future__ import annotations

import asyncio


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of the next answer on `reader` (Content-Length
    framed; of a repeated header the last one)."""
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of the next answer on `reader` (Content-Length framed)."""
    status, _, body = await read_answer(reader)
    return status, body
