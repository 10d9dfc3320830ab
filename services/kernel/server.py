"""One uvicorn server in a thread of `rod up`, until `stop` is set.

A server that cannot start (port taken) sets `stop`, so the whole process goes down rather
than running without its front door.

Every HTTP surface runs through `HttpServer`, which bounds what a client can hold: the
request line and headers (ROD_HTTP_MAX_HEADER_BYTES, else 431 and the connection closed),
the time to send them (ROD_HTTP_HEADER_TIMEOUT_SECONDS), the pace of a body (at least
ROD_HTTP_BODY_MIN_BYTES_PER_SECOND over every window of ROD_HTTP_BODY_TIMEOUT_SECONDS), an
idle keep-alive connection (ROD_HTTP_KEEPALIVE_SECONDS) and the number of connections
(ROD_HTTP_MAX_CONNECTIONS, above it 503). Requests naming a host not in ROD_ALLOWED_HOSTS get
400. uvicorn has no header timeout or header size limit of its own with httptools, hence the
protocol subclass below.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.kernel.codes import problem
from services.kernel.gate import ASGIApp, Receive, Scope, Send, error_body, send_json
from services.kernel.logging import get_logger

log = get_logger("http")

HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

# a counter, not a log line each: under attack these come by the hundred a second
REFUSED = Counter("rod_http_refused_total",
                  "Connections closed and requests refused by the HTTP limits, by reason.", ["reason"])


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the server; every field from a ROD_HTTP_* variable."""

    max_header_bytes: int = 16 * 1024
    header_seconds: float = 10.0  # from connecting (or the first byte after keep-alive) to the blank line
    body_seconds: float = 30.0  # the window over which a body must keep its pace
    body_min_bytes_per_second: int = 1024
    keepalive_seconds: float = 5.0
    max_connections: int = 4096

    @classmethod
    def from_env(cls) -> HttpLimits:
        """The limits from ROD_HTTP_* variables, the defaults for those not set."""
        env, d = os.environ, cls()
        return cls(
            max_header_bytes=int(env.get("ROD_HTTP_MAX_HEADER_BYTES") or d.max_header_bytes),
            header_seconds=float(env.get("ROD_HTTP_HEADER_TIMEOUT_SECONDS") or d.header_seconds),
            body_seconds=float(env.get("ROD_HTTP_BODY_TIMEOUT_SECONDS") or d.body_seconds),
            body_min_bytes_per_second=int(env.get("ROD_HTTP_BODY_MIN_BYTES_PER_SECOND")
                                          or d.body_min_bytes_per_second),
            keepalive_seconds=float(env.get("ROD_HTTP_KEEPALIVE_SECONDS") or d.keepalive_seconds),
            max_connections=int(env.get("ROD_HTTP_MAX_CONNECTIONS") or d.max_connections),
        )


class Phase(enum.Enum):
    IDLE = 0  # between requests (uvicorn's keep-alive timer runs once the answer is out)
    HEAD = 1  # request line and headers arriving
    BODY = 2  # the body arriving


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head deadline and a body pace.

    One timer per connection, armed only while the client owes us bytes, so a keep-alive
    request that arrives whole in one read costs no timer at all.
    """

    limits: ClassVar[HttpLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = Phase.IDLE
        self._head_bytes = 0  # read since the current head began (a read may run into the body)
        self._head_since: float | None = self.loop.time()  # a new connection owes its first head
        self._body_bytes = 0  # read in the current body window
        self._too_large = False
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.limits.header_seconds, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is not Phase.BODY:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._too_large or (self._phase is Phase.HEAD and self._head_bytes > self.limits.max_header_bytes):
            self._refuse_head()
        elif self._timer is None and self._phase is Phase.BODY:
            self._timer = self.loop.call_later(self.limits.body_seconds, self._expire)
        elif self._timer is None and (self._phase is Phase.HEAD or self._answered()):
            # a head begun, or bytes that begin none yet (blank lines) after the last answer
            if self._head_since is None:
                self._head_since = self.loop.time()
            self._timer = self.loop.call_at(self._head_since + self.limits.header_seconds, self._expire)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = Phase.HEAD
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self._phase, self._head_since, self._body_bytes = Phase.BODY, None, 0
        # the exact size: a whole head can arrive in one read, which the count in data_received allows
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._too_large = True  # answered after the parser returns; no request reaches the app
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        self._phase, self._head_bytes = Phase.IDLE, 0
        if not self._too_large:
            super().on_message_complete()

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase is Phase.BODY:
            # a paused read is the app taking its time, not the client: a fresh window
            enough = self.limits.body_min_bytes_per_second * self.limits.body_seconds
            if self.flow.read_paused or self._body_bytes >= max(enough, 1):
                self._body_bytes = 0
                self._timer = self.loop.call_later(self.limits.body_seconds, self._expire)
                return
        REFUSED.labels("body_too_slow" if self._phase is Phase.BODY else "header_timeout").inc()
        self.transport.close()

    def _refuse_head(self) -> None:
        REFUSED.labels("headers_too_large").inc()
        body = json.dumps(error_body([problem("HEADERS_TOO_LARGE")])).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _answered(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AllowedHosts:
    """ASGI wrapper: a request whose Host names another host gets 400 before the app sees it,
    so no redirect echoes a foreign host and a DNS-rebinding page cannot reach the API.

    A request without Host (HTTP/1.0) passes: no browser sends one, and answers then name the
    bound address.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts  # None: any host (ROD_ALLOWED_HOSTS=*)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hosts is not None:
            host = next((value for name, value in scope["headers"] if name == b"host"), None)
            if host is not None and host_part(host.decode("latin-1")) not in self.hosts:
                REFUSED.labels("host_not_allowed").inc()
                await send_json(send, 400, error_body([problem("HOST_NOT_ALLOWED")]))
                return
        await self.app(scope, receive, send)


def host_part(host: str) -> str:
    """'Example.org:8080' -> 'example.org', '[::1]:8080' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def allowed_hosts(bound: str) -> frozenset[str] | None:
    """ROD_ALLOWED_HOSTS (comma-separated, `*` for any), else the loopback names and `bound`."""
    configured = os.environ.get("ROD_ALLOWED_HOSTS", "").strip()
    if configured == "*":
        return None
    names = configured.split(",") if configured else [*LOOPBACK_NAMES, bound]
    return frozenset(host_part(name) for name in names if name.strip())


class HttpServer:
    """One uvicorn server on 127.0.0.1:`port`, run in the calling thread until `stop` is set."""

    def __init__(self, app: Any, port: int, host: str = HOST) -> None:
        limits = HttpLimits.from_env()
        protocol = type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
        self.config = uvicorn.Config(
            AllowedHosts(app, allowed_hosts(host)), host=host, port=port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=10, http=protocol, ws="none", server_header=False,
            timeout_keep_alive=limits.keepalive_seconds,  # type: ignore[arg-type]  # a float works
            limit_concurrency=limits.max_connections)
        self.server = uvicorn.Server(self.config)
        self.address = f"http://{host}:{port}"
        _allow_open_files(limits.max_connections)

    def run(self, stop: threading.Event) -> None:
        async def serve() -> None:
            task = asyncio.ensure_future(self.server.serve())
            while not stop.is_set() and not task.done():
                await asyncio.sleep(0.1)
            self.server.should_exit = True
            await task

        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(serve())
        except BaseException as exc:  # uvicorn exits the process on a taken port; here it ends the thread
            log.error("http_server_failed", error=type(exc).__name__)
        finally:
            if not stop.is_set():
                log.error("http_server_stopped_unexpectedly")
                stop.set()

    @property
    def started(self) -> bool:
        return self.server.started


def _allow_open_files(connections: int) -> None:
    """Raise the soft open-file limit to fit the connection cap (plus databases, broker, logs):
    past it, accept() fails and even /healthz goes unanswered instead of getting 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            log.warning("http_open_file_limit_low", limit=raised, max_connections=connections)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
