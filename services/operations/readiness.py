"""`GET /readyz`: does every dependency answer? Each service's database and the broker.

Every check runs at once in a thread of its own and the answer waits at most DEADLINE
seconds: a database that hangs (a dropped network path never answers) must not hang the
probe too. Whatever has not answered by then is "timeout". 200 only when all say "ok".
The body names each dependency and its state, never an address or a password.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from services.kernel import kafka
from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.logging import get_logger
from services.kernel.settings import SERVICES, Settings

log = get_logger("operations.readiness")

DEADLINE = 1.0  # seconds the whole probe may take


def _probe_engine(url: str) -> Engine:
    """An engine that opens a fresh connection per check (a pooled one would hide a lost database)."""
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": DEADLINE})
    # libpq's connect_timeout has a floor of 2 s; the deadline below answers sooner anyway
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 2})


class Readiness:
    """The checks of one process: each service's database and the broker."""

    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.engines = {service: _probe_engine(settings.database_urls[service]) for service in SERVICES}
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def checks(self) -> dict[str, Callable[[], None]]:
        found: dict[str, Callable[[], None]] = {
            f"database:{service}": (lambda engine=engine: _select_one(engine))
            for service, engine in self.engines.items()
        }
        found["broker"] = self._broker
        return found

    def _broker(self) -> None:
        bootstrap = self.bootstrap or resolve_bootstrap(self.settings)
        consumer = kafka.consumer(bootstrap, group_id=None, bootstrap_timeout_ms=int(DEADLINE * 1000),
                                  request_timeout_ms=int(DEADLINE * 1000) + 500)
        try:
            consumer.topics()  # a metadata request
        finally:
            consumer.close()

    def report(self) -> dict[str, Any]:
        """{"status": "ready" | "not ready", "dependencies": {name: "ok" | "unreachable" | "timeout"}}."""
        states: dict[str, str] = {}
        lock = threading.Lock()

        def run(name: str, check: Callable[[], None]) -> None:
            try:
                check()
                state = "ok"
            except BrokerUnavailable:
                state = "unknown"  # no broker configured and none started by `rod up`
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; the type goes to the log
                log.warning("dependency_not_ready", dependency=name, error=type(exc).__name__)
                state = "unreachable"
            with lock:
                states[name] = state

        checks = self.checks()
        threads = []
        for name, check in checks.items():
            with self._lock:
                running = self._running.get(name)
                if running is not None and running.is_alive():
                    continue  # stuck since an earlier probe: one thread per dependency, not per probe
                thread = threading.Thread(target=run, args=(name, check), name=f"readyz-{name}", daemon=True)
                self._running[name] = thread
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + DEADLINE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            answer = {name: states.get(name, "timeout") for name in checks}
        ready = all(state == "ok" for state in answer.values())
        return {"status": "ready" if ready else "not ready", "dependencies": answer}

    def dispose(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()


def readiness_router(settings: Settings, bootstrap: str | None = None) -> APIRouter:
    """`GET /readyz` for the process serving `settings`."""
    router = APIRouter(tags=["operations"])
    readiness = Readiness(settings, bootstrap)

    @router.get("/readyz", responses={503: {"description": "A dependency does not answer"}})
    def readyz() -> JSONResponse:
        """200 when every service's database and the broker answer, else 503; names each one's state."""
        body = readiness.report()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503,
                            headers={"cache-control": "no-store"})

    return router
