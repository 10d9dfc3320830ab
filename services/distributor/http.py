"""The HTTP feed: `GET /v1/feeds/{subscription}/messages` and `POST .../acknowledgements`.

For downstream organisations that run no Kafka client. Served from the distributor's ledger
(what it delivered), never by reading a topic per request. The gate has resolved the
consumer token (`request.state.consumer`) before a request gets here.

A waiting request (`wait`) holds no thread: it awaits a future that one poller per process
completes when a subscription's feed head moves past the request's cursor. The poller
reads the heads (one small query) every POLL_SECONDS while anyone waits, and not at all
otherwise, so 200 idle consumers cost one query per POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from services.distributor.feed import Consumer, CursorError, FeedStore, decode_cursor
from services.kernel.blocking import in_thread
from services.kernel.codes import problem
from services.kernel.gate import error_body
from services.kernel.text import JsonBody

POLL_SECONDS = 0.2
NO_STORE = {"cache-control": "no-store"}  # feed messages carry person numbers


class AcknowledgementIn(JsonBody):
    cursor: str


class FeedHeads:
    """The newest position of every feed, and the requests waiting for it to move."""

    def __init__(self, store: FeedStore, interval: float = POLL_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self.heads: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def refresh(self) -> dict[str, int]:
        found = await in_thread("feed", self.store.heads)
        self.heads = {sub: last for sub, (last, _acked) in found.items()}
        return self.heads

    async def wait_beyond(self, subscription: str, seq: int, timeout: float) -> None:
        """Return once the feed holds a position after `seq`, or after `timeout` seconds."""
        if self.heads.get(subscription, 0) > seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._waiting.setdefault(subscription, []).append(entry)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self._waiting.get(subscription, [])
            if entry in waiting:
                waiting.remove(entry)

    async def _poll(self) -> None:
        while any(self._waiting.values()):
            try:
                heads = await self.refresh()
            except Exception:  # noqa: BLE001 - the database is away: the waiters time out as usual
                heads = self.heads
            for sub, waiting in self._waiting.items():
                for seq, future in waiting:
                    if heads.get(sub, 0) > seq and not future.done():
                        future.set_result(None)
            await asyncio.sleep(self.interval)


def _refused(status: int, code: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(error_body([problem(code, field)]), status_code=status)


def feed_router(store: FeedStore) -> APIRouter:
    """The HTTP feed over `store` (the distributor's ledger)."""
    router = APIRouter(tags=["feeds"])
    heads = FeedHeads(store)

    def consumer_of(request: Request, subscription: str) -> Consumer | None:
        consumer: Consumer = request.state.consumer
        return consumer if consumer.subscription == subscription else None

    async def position(subscription: str, cursor: str | None, field: str) -> int | JSONResponse:
        """The position a cursor names, checked against what was handed out (400 otherwise)."""
        if cursor is None:
            return 0
        try:
            seq = decode_cursor(subscription, cursor)
        except CursorError:
            return _refused(400, "CURSOR_INVALID", field)
        if seq > heads.heads.get(subscription, 0) and seq > (await heads.refresh()).get(subscription, 0):
            return _refused(400, "CURSOR_INVALID", field)
        return seq

    @router.get("/v1/feeds/{subscription}/messages", responses={400: {}, 401: {}, 403: {}})
    async def messages(
        subscription: str,
        request: Request,
        after: Annotated[str | None, Query(max_length=64, description="A cursor; none: the start.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for a message.")] = 0,
    ) -> Any:
        """The feed's messages after `after`, in the feed's order, each with its cursor."""
        consumer = consumer_of(request, subscription)
        if consumer is None:
            return _refused(403, "TOKEN_FORBIDDEN")
        seq = await position(subscription, after, "after")
        if isinstance(seq, JSONResponse):
            return seq
        await in_thread("feed", store.fetched, consumer, time.monotonic())
        body, count = (b"", 0)
        if heads.heads.get(subscription, seq + 1) > seq or wait == 0:  # at the known head: nothing to read
            body, count = await in_thread("feed", store.page_body, subscription, seq, limit)
        if not count and wait > 0:
            await heads.wait_beyond(subscription, seq, wait)
            body, count = await in_thread("feed", store.page_body, subscription, seq, limit)
        return Response(body, media_type="application/json", headers=NO_STORE)

    @router.post("/v1/feeds/{subscription}/acknowledgements", responses={400: {}, 401: {}, 403: {}})
    async def acknowledge(subscription: str, body: AcknowledgementIn, request: Request) -> Any:
        """Confirm everything up to and including `cursor`; repeats and older cursors change nothing."""
        consumer = consumer_of(request, subscription)
        if consumer is None:
            return _refused(403, "TOKEN_FORBIDDEN")
        seq = await position(subscription, body.cursor, "cursor")
        if isinstance(seq, JSONResponse):
            return seq
        try:
            count = await in_thread("feed", store.acknowledge, consumer, seq)
        except CursorError:
            return _refused(400, "CURSOR_INVALID", "cursor")
        return JSONResponse({"acknowledged": count, "cursor": body.cursor}, headers=NO_STORE)

    return router
