"""The registrar's HTTP API on a free port in a thread of the test process (real uvicorn,
real database), with two institutions and their tokens."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.app import Api, build_app
from services.kernel.broker import free_port
from services.kernel.server import HttpServer
from services.kernel.settings import Settings

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"

# 25BE is "us" in most tests; 30XX is the other institution whose things we may not touch.
INSTITUTIONS = {"25BE": ["HO", "VO", "PRO", "VSO"], "30XX": ["HO"], "40MB": ["MBO"]}


def registration(**changes: Any) -> dict[str, Any]:
    """A valid JSON registration for 25BE (documented person numbers only)."""
    body: dict[str, Any] = {
        "person": {"bsn": "111222333"}, "institution": "25BE", "branch": "25BE01", "sector": "HO",
        "programme_code": "56551", "diploma_number": "API-1", "diploma_date": "2026-07-01",
    }
    body.update(changes)
    return body


@dataclass
class RunningApi:
    url: str
    tokens: dict[str, str]
    api: Api
    settings: Settings

    def client(self, institution: str | None = "25BE", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[institution]}"} if institution else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def events(self) -> int:
        """Events in the store (what a dry run or a refused request must leave unchanged)."""
        return self.api.registrar.store.last_position()


@contextmanager
def running_api(settings: Settings, **build: Any) -> Iterator[RunningApi]:
    """Start the API for `settings` (test catalogue), yield it, stop it cleanly."""
    settings = dataclasses.replace(settings, catalogue=CATALOGUE)
    api = build_app(settings, **build)
    tokens = {code: api.registrar.add_institution(code, f"Instelling {code}", sectors)
              for code, sectors in INSTITUTIONS.items()}
    server = HttpServer(api.app, free_port())
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield RunningApi(server.address, tokens, api, settings)
    finally:
        stop.set()
        thread.join(30)
        api.dispose()
