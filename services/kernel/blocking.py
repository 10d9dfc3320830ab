"""Blocking work (database reads) from async HTTP handlers on a few threads of its own.

Starlette's `run_in_threadpool` shares one pool of 40 threads: 200 consumers whose long polls
arrive together would start 40 threads for a moment. A small limiter per kind of work keeps
that to a handful while queueing the rest, each call a short database round trip.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
THREADS = 4

_limiters: dict[tuple[asyncio.AbstractEventLoop, str], anyio.CapacityLimiter] = {}


async def in_thread(kind: str, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on one of at most THREADS threads for `kind` in this event loop."""
    key = (asyncio.get_running_loop(), kind)
    limiter = _limiters.get(key)
    if limiter is None:
        limiter = _limiters[key] = anyio.CapacityLimiter(THREADS)
    return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=limiter)
