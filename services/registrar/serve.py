"""Serving the registrar's HTTP API: uvicorn in a thread of `rod up`, plus the impact reader.

`rod up` runs each component as `run(stop)` in a thread. The server stops when `stop` is
set (uvicorn's own graceful shutdown); a server that cannot start (port taken) sets `stop`,
so the whole system goes down rather than running without its front door.

    uvicorn --factory services.registrar.serve:app_from_env   # the API alone, from ROD_* settings
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from services.audit.http import reports_router
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.operations.console import console_router
from services.operations.readiness import readiness_router
from services.registrar.api import UPLOAD_LIMIT, create_app
from services.registrar.batches import BatchStore
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.gate import TokenBook
from services.registrar.impact import ImpactReader, ImpactStore
from services.registrar.store import Appender, EventStore

log = get_logger("registrar.serve")

HOST = "127.0.0.1"


class SerialisedStore(EventStore):
    """The event store with one writer at a time per process.

    Appends are serialised by the database anyway (BEGIN IMMEDIATE, FOR UPDATE); taking a
    process lock first lets the API's threads queue here instead of in SQLite's busy handler,
    which polls with sleeps of up to 100 ms and made p99 latency ten times worse.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._write_lock = threading.Lock()

    @contextmanager
    def appending(self) -> Iterator[Appender]:
        with self._write_lock, super().appending() as tx:
            yield tx


class HttpServer:
    """One uvicorn server on 127.0.0.1:`port`, run in the calling thread until `stop` is set."""

    def __init__(self, app: Any, port: int, host: str = HOST) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                     lifespan="off", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(self.config)
        self.address = f"http://{host}:{port}"

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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass
class RegistrarApi:
    """The API app with the registrar and impact store behind it."""

    app: Any
    registrar: Registrar
    impact_store: ImpactStore
    parts: list[Any] = field(default_factory=list)  # more to dispose of (the console's stores)

    def dispose(self) -> None:
        self.registrar.store.dispose()
        for part in self.parts:
            part.dispose()


def build_app(
    settings: Settings, upload_limit: int | None = None, bootstrap: str | None = None
) -> RegistrarApi:
    """The API over the registrar's database from `settings`, with the operator console and /readyz.

    The upload limit is `upload_limit`, else ROD_MAX_UPLOAD_BYTES, else 100 MiB. `bootstrap`
    is the broker (else ROD_KAFKA_BOOTSTRAP or the one `rod up` wrote down, looked up when needed).
    """
    event_store = SerialisedStore(settings.database_urls["registrar"])
    registrar = Registrar(event_store, Catalogue.load(settings.catalogue))
    impact_store = ImpactStore(event_store.engine)
    limit = upload_limit or int(os.environ.get("ROD_MAX_UPLOAD_BYTES") or UPLOAD_LIMIT)
    app = create_app(registrar, BatchStore(event_store.engine), impact_store,
                     upload_dir=settings.data_dir / "uploads", upload_limit=limit)
    app.include_router(reports_router(settings.data_dir / "reports"))  # the audit service's files
    institution_tokens = TokenBook(event_store.engine)
    console = console_router(settings, lambda token: institution_tokens.lookup(token) is not None,
                             event_store.engine, bootstrap)
    app.include_router(console)  # /ops: operator tokens only, the gate guards /v1/ alone
    app.include_router(readiness_router(settings, bootstrap))
    return RegistrarApi(app, registrar, impact_store, [console.console])


def app_from_env() -> Any:
    """uvicorn factory: the API alone, configured by ROD_* variables."""
    from services.kernel import logging as rod_logging

    rod_logging.configure()
    return build_app(Settings.from_env()).app


Component = tuple[str, Callable[[threading.Event], None]]


def components(settings: Settings, bootstrap: str, port: int,
               names: Collection[str] = ("http", "impact")) -> list[Component]:
    """The registrar's parts for `rod up` besides the relay: the HTTP API and the impact reader
    (those of them in `names`)."""
    api = build_app(settings, bootstrap=bootstrap)
    parts: dict[str, Callable[[], Callable[[threading.Event], None]]] = {
        "http": lambda: HttpServer(api.app, port).run,
        "impact": lambda: ImpactReader(api.impact_store, settings, bootstrap).run,
    }
    return [(name, make()) for name, make in parts.items() if name in names]
