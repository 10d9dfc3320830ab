"""What every HTTP request passes through before and after the endpoints (pure ASGI).

In order: give the request an id (the `X-Request-ID` answer header); time it (by route
template, never the raw path) and log one access line when it ends; turn an unexpected
exception into a 500 with the request id as its correlation id and nothing else;
authenticate requests by bearer token before anything reads their body; cap JSON bodies;
mark the answers of `/v1/` and `/ops` (they carry personal data) `Cache-Control: no-store`
unless the route chose its own.

Each kind of token has its own paths (a `Realm`, given by the service that owns the kind):
institution tokens `/v1/` at large, consumer tokens `/v1/feeds/`, portal tokens
`/v1/extracts`. The longest prefix wins; a realm without a lookup is public. A token of
another kind is refused with 403, an unknown one 401; each refusal is logged and counted, and
an address that sends too many unknown tokens gets 429 for a while (`FailedLogins`).

The access line (`http_request`): method, route template, status, duration in milliseconds,
request id, the principal known when the request ends (`institution`, `operator`, `consumer`
or `portal`: the gate's realm puts it on `request.state`, a cookie session may put it there
later) and, for a refusal, its outcome codes (`note_refusal`, called by the error handlers
and by the gate's own refusals). Never a body, a query string or a token; every
line that is logged while the request runs carries its `request_id`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Histogram
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from services.kernel.blocking import in_thread
from services.kernel.codes import Problem, problem
from services.kernel.logging import get_logger
from services.kernel.throttle import FailedLogins, client_address, retry_after

log = get_logger("http")

REQUEST_SECONDS = Histogram(
    "rod_http_request_duration_seconds",
    "HTTP request latency by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    """The HTTP method, or OTHER: a label value never comes straight from the client."""
    return method if method in _METHODS else "OTHER"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_LIMIT = 64 * 1024  # bytes of a JSON body; a registration is well under 1 KiB
TOKEN_MAX = 256
UPLOAD_PATH = "/v1/batches"
PRIVATE_PREFIXES = ("/v1/", "/ops", "/loket")  # answers that may carry person numbers: never kept in a cache


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


@dataclass(frozen=True)
class Realm:
    """Paths under `prefix` take tokens that `lookup` (blocking) resolves; the principal goes to
    `request.state.<state_key>`."""

    prefix: str
    state_key: str
    lookup: Callable[[str], Any | None] | None  # None: public, no token asked
    cached: Callable[[str], Any | None] = lambda _token: None  # a recent answer, without a thread


class Gate:
    """ASGI middleware: metrics, crash answer, authentication, JSON body cap."""

    def __init__(
        self, app: ASGIApp, json_limit: int = JSON_LIMIT,
        realms: Sequence[Realm] = (), other_tokens: Sequence[Callable[[str], Any | None]] = (),
        failed_logins: FailedLogins | None = None,
    ) -> None:
        self.app = app
        self.json_limit = json_limit
        self.realms = sorted(realms, key=lambda r: -len(r.prefix))
        # token kinds with no /v1/ paths of their own (operators): known, so 403 rather than 401
        self.other_tokens = list(other_tokens)
        self.failed_logins = failed_logins or FailedLogins()
        self.failed_logins.watch(r.state_key for r in self.realms if r.lookup)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500, False]  # status, response started
        request_id = new_correlation_id()
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)

        private = scope["path"].startswith(PRIVATE_PREFIXES)

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], status[1] = message["status"], True
                if private and not any(name.lower() == b"cache-control" for name, _ in message["headers"]):
                    message["headers"] = [*message["headers"], (b"cache-control", b"no-store")]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self._guarded(scope, receive, tracking_send)
        except ClientDisconnect:
            status[0] = 499  # the client went away mid-request (nginx's code): nobody to answer
            log.info("client_disconnected", method=method_label(scope["method"]), route=_route(scope))
        except Exception as exc:
            log.error("request_failed", correlation_id=request_id, method=method_label(scope["method"]),
                      route=_route(scope), error=type(exc).__name__, exc_info=True)
            if not status[1]:
                await send_json(tracking_send, 500,
                                error_body([problem("INTERNAL_ERROR")], correlation_id=request_id))
        finally:
            seconds = time.perf_counter() - started
            method, route = method_label(scope["method"]), _route(scope)
            REQUEST_SECONDS.labels(method, route, str(status[0])).observe(seconds)
            log.info("http_request", method=method, route=route, status=status[0],
                     duration_ms=round(seconds * 1000, 1), **_known(scope.get("state") or {}))
            structlog.contextvars.reset_contextvars(**bound)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        realm = next((r for r in self.realms if path.startswith(r.prefix)), None)
        if realm is not None and realm.lookup is not None:
            principal = await self._authenticate(scope, send, realm)
            if principal is None:
                return
            scope.setdefault("state", {})[realm.state_key] = principal
            if path != UPLOAD_PATH and scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await _read_capped(receive, self.json_limit)
                if too_large:
                    await _refuse(scope, send, 413, "BODY_TOO_LARGE")
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, send: Send, realm: Realm) -> Any | None:
        client = client_address(scope)
        wait = self.failed_logins.blocked(client, realm.state_key)
        if wait is not None:  # before the token is looked at: a correct one waits too
            await _refuse(scope, send, 429, "TOO_MANY_FAILED_LOGINS", {"retry-after": retry_after(wait)})
            return None
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.failed_logins.failed(client, realm.state_key, "missing", _route(scope))
            await _refuse(scope, send, 401, "TOKEN_MISSING", {"www-authenticate": "Bearer"})
            return None
        principal = None
        if len(token) <= TOKEN_MAX:
            principal = realm.cached(token) or await in_thread("tokens", realm.lookup, token)
        if principal is None:
            if len(token) <= TOKEN_MAX and await in_thread("tokens", self._known_elsewhere, token, realm):
                self.failed_logins.failed(client, realm.state_key, "forbidden", _route(scope))
                await _refuse(scope, send, 403, "TOKEN_FORBIDDEN")
            else:
                self.failed_logins.failed(client, realm.state_key, "invalid", _route(scope))
                await _refuse(scope, send, 401, "TOKEN_INVALID",
                              {"www-authenticate": 'Bearer error="invalid_token"'})
        return principal

    def _known_elsewhere(self, token: str, realm: Realm) -> bool:
        """Is `token` one of another kind (it opens other paths, not these)?"""
        lookups = [r.lookup for r in self.realms if r is not realm and r.lookup] + self.other_tokens
        return any(lookup(token) is not None for lookup in lookups)


async def _refuse(
    scope: Scope, send: Send, status: int, code: str, headers: dict[str, str] | None = None
) -> None:
    """The gate's own refusal: answered, and its code kept for the access line."""
    note_refusal(scope, [code])
    await send_json(send, status, error_body([problem(code)]), headers)


def note_refusal(scope: Scope, codes: list[str]) -> None:
    """Keep a refusal's outcome codes for the request's access line (error handlers call it)."""
    scope.setdefault("state", {})["refused"] = codes


PRINCIPALS = ("institution", "operator", "consumer", "portal")  # request.state keys, by kind


def _known(state: dict[str, Any]) -> dict[str, Any]:
    """The access line's principal (by its kind: code or name) and refusal codes, as far as known."""
    known: dict[str, Any] = {}
    for kind in PRINCIPALS:
        principal = state.get(kind)
        if principal is not None:
            known[kind] = principal if isinstance(principal, str) else getattr(principal, "name", None)
            break
    if state.get("refused"):
        known["codes"] = list(state["refused"])
    return known


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_correlation_id() -> str:
    """32 random letters (request and correlation ids): no digits, nothing for the log's mask to touch."""
    return uuid.uuid4().hex.translate(_NO_DIGITS)


def _route(scope: Scope) -> str:
    """The route template (`/v1/results/{result_id}`), also for requests the gate answered itself."""
    route = scope.get("route")
    routes = getattr(scope.get("app"), "routes", ())
    while route is None and routes:
        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
        # FastAPI keeps an included router whole (its routes, with no prefix here): look inside
        routes = getattr(getattr(route, "original_router", None), "routes", ())
        route = None if routes else route
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
