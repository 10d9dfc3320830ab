"""The system put together: one HTTP app from every service's router, and `rod up`'s parts.

Each service contributes a router (and the token realms it owns); only this module and
services/cli.py know them all, so no service imports a sibling.

    uvicorn --factory services.app:app_from_env   # the HTTP API alone, from ROD_* settings
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

import services.replayers  # noqa: F401 - installs the dead-letter replays
from services.audit.http import ReportShelf, reports_router
from services.distributor.feed import FeedStore
from services.distributor.http import feed_router
from services.distributor.ledger import Ledger
from services.extract.http import extract_realms, extract_router
from services.extract.service import ExtractService
from services.kernel.gate import Gate
from services.kernel.logging import get_logger
from services.kernel.server import HttpServer
from services.kernel.settings import Settings, private_data_dir
from services.kernel.throttle import AttemptLimit, FailedLogins
from services.operations.console import console_router
from services.operations.identity import operator_for
from services.operations.readiness import readiness_router
from services.registrar.api import UPLOAD_LIMIT, document_the_gate, install_error_handlers, registrar_router
from services.registrar.batches import BatchStore
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.impact import ImpactReader, ImpactStore
from services.registrar.loket.router import loket_router
from services.registrar.store import SerialisedStore
from services.registrar.tokens import TokenBook
from services.registrar.transparency.http import log_realms, log_router
from services.registrar.writer import RegistrationWriter

log = get_logger("app")


@dataclass
class Api:
    """The HTTP app with the stores behind it."""

    app: Any
    registrar: Registrar
    impact_store: ImpactStore
    extract: ExtractService
    parts: list[Any] = field(default_factory=list)  # more to dispose of (the console's stores)

    def dispose(self) -> None:
        self.registrar.store.dispose()
        for part in self.parts:
            part.dispose()


def build_app(
    settings: Settings, upload_limit: int | None = None, bootstrap: str | None = None
) -> Api:
    """Every service's routes over their databases from `settings`, behind one gate.

    The upload limit is `upload_limit`, else ROD_MAX_UPLOAD_BYTES, else 100 MiB. `bootstrap`
    is the broker (else ROD_KAFKA_BOOTSTRAP or the one `rod up` wrote down, looked up when needed).
    """
    event_store = SerialisedStore(settings.database_urls["registrar"])
    registrar = Registrar(event_store, Catalogue.load(settings.catalogue))
    impact_store = ImpactStore(event_store.engine)
    limit = upload_limit or int(os.environ.get("ROD_MAX_UPLOAD_BYTES") or UPLOAD_LIMIT)
    institutions = TokenBook(event_store.engine)
    failed_logins = FailedLogins.from_env(os.environ)  # one count per address for the API and /ops
    console = console_router(settings, lambda token: institutions.lookup(token) is not None,
                             event_store.engine, bootstrap, failed_logins)
    ledger = Ledger(settings.database_urls["distributor"])  # the HTTP feed: the distributor's tables
    feeds = FeedStore(ledger)
    extract = ExtractService(settings)

    # no /docs or /redoc: they pull Swagger UI from a CDN onto the console's origin; /openapi.json stays
    app = FastAPI(title="rodchain", version="1", summary="The education result register's front door.",
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    document_the_gate(app)
    batch_store = BatchStore(event_store.engine)
    writer = RegistrationWriter(registrar)  # one group-committing writer for the API and the Loket
    app.include_router(registrar_router(registrar, batch_store, impact_store,
                                        upload_dir=settings.data_dir / "uploads", upload_limit=limit,
                                        writer=writer))
    app.include_router(feed_router(feeds))
    app.include_router(log_router(event_store))  # the log's checkpoints and proofs: public
    app.include_router(extract_router(extract.store, extract.identity, extract.public_url,
                                      AttemptLimit(per_minute=extract.attempts_per_minute)))
    app.include_router(reports_router(settings.data_dir / "reports"))  # the audit service's files
    app.include_router(console)  # /ops: operator tokens only, the gate guards the realms alone
    app.include_router(readiness_router(settings, bootstrap))
    realms = [institutions.realm(), feeds.realm(), *extract_realms(extract.store), *log_realms()]
    other_lookups = [r.lookup for r in realms[1:] if r.lookup] + [
        lambda token: operator_for(console.console.store, token)]
    # /loket: institution tokens by a login form; the audit's reports reach it through the shelf
    app.include_router(loket_router(
        registrar, batch_store, impact_store, writer, institutions,
        lambda token: any(lookup(token) is not None for lookup in other_lookups), failed_logins,
        ReportShelf(settings.data_dir / "reports"), settings.data_dir / "uploads", limit))
    app.add_middleware(Gate, realms=realms,
                       other_tokens=[lambda token: operator_for(console.console.store, token)],
                       failed_logins=failed_logins)
    return Api(app, registrar, impact_store, extract, [console.console, ledger, extract])


def app_from_env() -> Any:
    """uvicorn factory: the HTTP API alone, configured by ROD_* variables."""
    from services.kernel import logging as rod_logging

    rod_logging.configure()
    settings = Settings.from_env()
    private_data_dir(settings.data_dir)
    return build_app(settings).app


Component = tuple[str, Callable[[threading.Event], None]]


def http_components(settings: Settings, bootstrap: str, port: int,
                    names: Collection[str] = ("http", "impact")) -> list[Component]:
    """The parts that share the HTTP app's stores: the server and the registrar's impact reader."""
    api = build_app(settings, bootstrap=bootstrap)
    parts: dict[str, Callable[[], Callable[[threading.Event], None]]] = {
        "http": lambda: HttpServer(api.app, port).run,
        "impact": lambda: ImpactReader(api.impact_store, settings, bootstrap).run,
    }
    return [(name, make()) for name, make in parts.items() if name in names]
