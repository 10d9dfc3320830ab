"""What every HTTP request passes through before and after the endpoints (pure ASGI).

In order: time the request (by route template, never the raw path); turn an unexpected
exception into a 500 with a correlation id and nothing else; authenticate `/v1/` requests by
bearer token before anything reads their body; cap JSON bodies.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from services.kernel.logging import get_logger
from services.kernel.tokens import hash_token
from services.registrar.codes import Problem, problem
from services.registrar.metrics import REQUEST_SECONDS, method_label
from services.registrar.store import tokens

log = get_logger("registrar.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_LIMIT = 64 * 1024  # bytes of a JSON body; a registration is well under 1 KiB
TOKEN_MAX = 256
UPLOAD_PATH = "/v1/batches"


def error_body(problems: list[Problem], **extra: Any) -> dict[str, Any]:
    """The one 4xx/5xx body: {"errors": [{"field", "code", "message"}]}."""
    return {"errors": [p.as_dict() for p in problems], **extra}


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class TokenBook:
    """Bearer token → institution, from the hashes in registrar_tokens (known ones cached briefly)."""

    def __init__(self, engine: Engine, ttl: float = 60.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> str | None:
        hit = self._known.get(hash_token(token))
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def lookup(self, token: str) -> str | None:
        """The institution this token acts for, or None."""
        digest = hash_token(token)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens.c.token_hash, tokens.c.institution).where(tokens.c.token_hash == digest)
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        with self._lock:
            self._known[digest] = (row.institution, time.monotonic() + self.ttl)
        return row.institution


class Gate:
    """ASGI middleware: metrics, crash answer, authentication, JSON body cap."""

    def __init__(self, app: ASGIApp, token_book: TokenBook, json_limit: int = JSON_LIMIT) -> None:
        self.app = app
        self.tokens = token_book
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500, False]  # status, response started

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], status[1] = message["status"], True
            await send(message)

        try:
            await self._guarded(scope, receive, tracking_send)
        except ClientDisconnect:
            status[0] = 499  # the client went away mid-request (nginx's code): nobody to answer
            log.info("client_disconnected", method=method_label(scope["method"]), route=_route(scope))
        except Exception as exc:
            correlation_id = new_correlation_id()
            log.error("request_failed", correlation_id=correlation_id, method=method_label(scope["method"]),
                      route=_route(scope), error=type(exc).__name__, exc_info=True)
            if not status[1]:
                await send_json(tracking_send, 500,
                                error_body([problem("INTERNAL_ERROR")], correlation_id=correlation_id))
        finally:
            REQUEST_SECONDS.labels(method_label(scope["method"]), _route(scope), str(status[0])).observe(
                time.perf_counter() - started
            )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/v1/"):
            institution = await self._authenticate(scope, send)
            if institution is None:
                return
            scope.setdefault("state", {})["institution"] = institution
            if path != UPLOAD_PATH and scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await _read_capped(receive, self.json_limit)
                if too_large:
                    await send_json(send, 413, error_body([problem("BODY_TOO_LARGE")]))
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, send: Send) -> str | None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await send_json(send, 401, error_body([problem("TOKEN_MISSING")]), {"www-authenticate": "Bearer"})
            return None
        institution = None
        if len(token) <= TOKEN_MAX:
            institution = self.tokens.cached(token) or await run_in_threadpool(self.tokens.lookup, token)
        if institution is None:
            await send_json(send, 401, error_body([problem("TOKEN_INVALID")]),
                            {"www-authenticate": 'Bearer error="invalid_token"'})
        return institution


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_correlation_id() -> str:
    """32 random letters: no digit runs, so the log's person-number mask never touches it."""
    return uuid.uuid4().hex.translate(_NO_DIGITS)


def _route(scope: Scope) -> str:
    """The route template (`/v1/results/{result_id}`), also for requests the gate answered itself."""
    route = scope.get("route")
    if route is None and "app" in scope:
        routes = getattr(scope["app"], "routes", ())
        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


async def _read_capped(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (b"", True) once it passes `limit` (the rest is read and dropped)."""
    parts: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            parts.append(chunk)
        elif size > limit * 64:
            break  # answer now; the server closes the connection on the unread rest
        more = message.get("more_body", False)
    return (b"", True) if size > limit else (b"".join(parts), False)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
