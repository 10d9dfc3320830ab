"""`GET /readyz` over real HTTP: 200 while every database and the broker answer, 503 naming the
database that does not, and 200 again once it is back. The audit's database is PostgreSQL
reached through a small TCP proxy the test stops, restarts, and makes hang."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from services.kernel.broker import free_port
from services.kernel.settings import Settings
from tests.conftest import postgres_schema_url
from tests.integration.apiserver import running_api


class TcpProxy:
    """127.0.0.1:`port` → `upstream`; `stop` closes the port and every connection through it,
    `hang` accepts connections and never answers (a network path that swallows packets)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.hang = False
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, []
        for sock in [listener, *sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                self._open.append(client)
            if self.hang:
                continue  # held open, never read, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def audit_url_via_proxy() -> Iterator[tuple[str, TcpProxy]]:
    """A fresh PostgreSQL schema for the audit's database, reached through a TcpProxy."""
    for url in postgres_schema_url():  # skips with the reason when PostgreSQL is not reachable
        direct = make_url(url)
        proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
        proxy.start()
        try:
            yield direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
        finally:
            proxy.stop()


def _ready(url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    answer = httpx.get(f"{url}/readyz", timeout=30)
    return answer.status_code, answer.json(), time.monotonic() - started


def test_readyz_is_503_naming_the_database_while_it_is_unreachable_and_200_after(
    tmp_path: Path, broker: str, audit_url_via_proxy: tuple[str, TcpProxy]
) -> None:
    audit_url, proxy = audit_url_via_proxy
    settings = Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'rod.db'}", "ROD_AUDIT_DATABASE_URL": audit_url,
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
    })
    everything_ok = {"database:registrar": "ok", "database:distributor": "ok", "database:audit": "ok",
                     "database:operations": "ok", "database:extract": "ok", "broker": "ok"}
    with running_api(settings, bootstrap=broker) as api:
        status, body, _ = _ready(api.url)
        assert (status, body) == (200, {"status": "ready", "dependencies": everything_ok})

        proxy.stop()  # the audit's database goes away
        status, body, took = _ready(api.url)
        assert status == 503 and body["status"] == "not ready"
        assert body["dependencies"] == {**everything_ok, "database:audit": "unreachable"}
        assert took < 2.0
        assert str(proxy.port) not in str(body) and "postgres" not in str(body)  # no address, no URL

        proxy.hang = True  # now it accepts and never answers: the probe still answers in about a second
        proxy.start()
        status, body, took = _ready(api.url)
        assert status == 503 and body["dependencies"]["database:audit"] == "timeout"
        assert took < 2.0
        # /healthz is liveness only: the process is alive whatever its dependencies do
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200

        proxy.stop()
        proxy.hang = False
        proxy.start()  # back
        deadline = time.monotonic() + 15
        while (answer := _ready(api.url))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)  # the earlier hung check may still hold its one thread for a moment
        assert answer[:2] == (200, {"status": "ready", "dependencies": everything_ok})
