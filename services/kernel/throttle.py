"""Limits per client address: attempts of the extract verification, failed logins everywhere.

    limit = AttemptLimit(per_minute=30, event="verification_throttled")
    wait = limit.check(client_address(request.scope))  # None: go ahead; else seconds to wait

    logins = FailedLogins(per_minute=10)  # one for the whole app: the gate and the console
    wait = logins.blocked(client, "console")  # before the token is even looked at
    logins.failed(client, "console", "invalid", "/ops/login")  # log line, metric, count

The client address is the peer of the connection as the server hands it over (uvicorn puts the
address a trusted proxy forwards there: its `FORWARDED_ALLOW_IPS`, by default 127.0.0.1 and ::1).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter

from services.kernel.logging import get_logger

log = get_logger("throttle")

AUTH_FAILURES = Counter(
    "rod_auth_failures_total",
    "Failed authentications by surface (institution, consumer, portal, console) and outcome "
    "(missing, invalid, forbidden).",
    ["surface", "outcome"],
)
AUTH_THROTTLED = Counter(
    "rod_auth_throttled_total",
    "Requests refused with 429 because their client address failed to log in too often, by surface.",
    ["surface"],
)
OUTCOMES = ("missing", "invalid", "forbidden")


class AttemptLimit:
    """At most `per_minute` counted attempts per client in any sliding minute; memory stays bounded.

    Only counted attempts hold a client up, so one that keeps trying is let in again a minute
    after its oldest counted attempt. Clients idle for a minute are forgotten, and beyond
    `max_clients` the least recently seen ones go first (at most `per_minute` timestamps each).
    """

    def __init__(
        self, per_minute: int = 30, window: float = 60.0, max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic, event: str = "verification_throttled",
    ) -> None:
        self.per_minute = per_minute
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self.event = event  # the log line when a client is first held up
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()  # least recently seen first
        self._held: set[str] = set()  # clients refused since their last counted attempt
        self._lock = threading.Lock()

    def check(self, client: str) -> float | None:
        """Count an attempt of `client`: None when it may go ahead, else the seconds to wait."""
        with self._lock:
            now = self.clock()
            wait = self._wait(client, now)
            if wait is None:
                self._seen[client].append(now)
            return wait

    def waiting(self, client: str) -> float | None:
        """The seconds `client` must wait, or None; counts nothing (an unknown client costs no memory)."""
        with self._lock:
            return self._wait(client, self.clock()) if client in self._seen else None

    def count(self, client: str) -> None:
        """Count an attempt of `client` that already went ahead (a failed login)."""
        with self._lock:
            now = self.clock()
            self._times(client, now).append(now)

    def __len__(self) -> int:
        return len(self._seen)

    def _times(self, client: str, now: float) -> deque[float]:
        """The client's counted attempts within the window, as its most recent entry."""
        self._forget(now)
        times = self._seen.pop(client, None) or deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        self._seen[client] = times
        return times

    def _wait(self, client: str, now: float) -> float | None:
        times = self._times(client, now)
        if len(times) < self.per_minute:
            self._held.discard(client)
            return None
        if client not in self._held:  # one line per run of refusals, not one per request
            self._held.add(client)
            log.warning(self.event, client=client, attempts=len(times))
        return times[0] + self.window - now

    def _forget(self, now: float) -> None:
        # from the front: clients idle for a whole window, and the least recent beyond the cap
        while self._seen:
            times = next(iter(self._seen.values()))
            if len(self._seen) <= self.max_clients and times and times[-1] > now - self.window:
                return
            self._held.discard(self._seen.popitem(last=False)[0])


class FailedLogins:
    """What every login surface does with a failed authentication: a log line without the token,
    the metric, and per client address a block after `per_minute` unknown tokens in a minute.

    Only unknown tokens (outcome invalid) count towards the block: a missing token guesses
    nothing and a forbidden one is a real token used in the wrong place. A blocked address is
    refused whatever it sends, a correct token included, until its oldest failure is a minute
    old; a success does not wipe the count (else one real token would let guesses through).
    """

    def __init__(self, per_minute: int = 10, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = AttemptLimit(per_minute, max_clients=max_clients, clock=clock,
                                  event="authentication_throttled")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FailedLogins:
        """The limit of ROD_AUTH_FAILURES_PER_MINUTE (default 10)."""
        return cls(per_minute=max(1, int(environ.get("ROD_AUTH_FAILURES_PER_MINUTE") or 10)))

    def watch(self, surfaces: Iterable[str]) -> None:
        """Export the surfaces' series at 0 from the start, so a rate over them has something to read."""
        for surface in surfaces:
            AUTH_THROTTLED.labels(surface)
            for outcome in OUTCOMES:
                AUTH_FAILURES.labels(surface, outcome)

    def blocked(self, client: str, surface: str) -> float | None:
        """The seconds `client` must wait before it may authenticate again, or None."""
        wait = self.limit.waiting(client)
        if wait is not None:
            AUTH_THROTTLED.labels(surface).inc()
        return wait

    def failed(self, client: str, surface: str, outcome: str, route: str) -> None:
        """Record one failed authentication (`outcome` one of OUTCOMES); never pass the token."""
        AUTH_FAILURES.labels(surface, outcome).inc()
        log.warning("authentication_failed", surface=surface, outcome=outcome, route=route, client=client)
        if outcome == "invalid":
            self.limit.count(client)


def client_address(scope: Mapping[str, Any]) -> str:
    """The client address limits count by (an IPv6 client by its /64: one host has many)."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def retry_after(wait: float) -> str:
    """A Retry-After value: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
