"""What a client can hold of the HTTP server (issue 13, findings 1, 7 and 9's server header):
the real app behind HttpServer on a free port, attacked with raw sockets."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client import REGISTRY

from services.kernel.settings import Settings
from tests.integration.apiserver import RunningApi, running_api


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("rod_http_refused_total", {"reason": reason}) or 0.0

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@contextmanager
def serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[RunningApi]:
    """The API on SQLite with the ROD_* variables `env` (no broker: these tests need none)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env({"ROD_DATA_DIR": str(tmp_path / "var"),
                                  "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'registrar.db'}"})
    with running_api(settings) as api:
        yield api


def connect(api: RunningApi) -> socket.socket:
    address = urlsplit(api.url)
    return socket.create_connection((address.hostname, address.port), timeout=5)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the next answer; status 0 when the server closed instead."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, b""
            data += chunk
    except ConnectionResetError:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (readable with nothing left to read)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


def test_a_header_over_the_limit_gets_431_and_rss_stays_bounded(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path, monkeypatch) as api:  # the default limit, 16 KiB
        with connect(api) as sock:
            sock.sendall(HEAD + b"X-Padding: " + b"a" * 15_000 + b"\r\n\r\n")
            assert answer(sock)[0] == 200  # under the limit
            sock.sendall(HEAD + b"X-Padding: " + b"a" * 40_000 + b"\r\n\r\n")
            status, _, body = answer(sock)
            assert (status, codes(body)) == (431, ["HEADERS_TOO_LARGE"])
            assert closed_by_server(sock) or answer(sock)[0] == 0

        with connect(api) as sock:  # 10 MB on GET /healthz: refused or cut off, never answered 200
            with suppress(OSError):
                sock.sendall(HEAD + b"X-Padding: " + b"a" * 10_000_000 + b"\r\n\r\n")
            assert answer(sock)[0] in (0, 431)

        # ten connections that never finish a 20 MB header: each is closed early, memory stays put
        process = psutil.Process()
        before = process.memory_info().rss
        socks = [connect(api) for _ in range(10)]
        chunk, open_ = b"a" * 262_144, set(range(10))
        for sock in socks:
            sock.sendall(HEAD + b"X-Padding: ")
        deadline = time.monotonic() + 15
        for _ in range(80):  # 80 x 256 KiB = 20 MiB each
            for i in sorted(open_):
                try:
                    socks[i].sendall(chunk)
                except OSError:
                    open_.discard(i)
            if not open_ or time.monotonic() > deadline:
                break
        grown = process.memory_info().rss - before
        for sock in socks:
            sock.close()
        assert not open_, f"{len(open_)} of 10 unfinished 20 MB headers still being read"
        assert grown < 20_000_000, f"RSS grew by {grown / 1e6:.0f} MB"


def test_idle_and_half_sent_and_slow_connections_are_closed_after_the_timeouts_while_healthz_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = {"ROD_HTTP_HEADER_TIMEOUT_SECONDS": "1", "ROD_HTTP_BODY_TIMEOUT_SECONDS": "1",
             "ROD_HTTP_KEEPALIVE_SECONDS": "1"}
    with serving(tmp_path, monkeypatch, **short) as api:
        timed_out, too_slow = refused("header_timeout"), refused("body_too_slow")
        started = time.monotonic()
        idle = [connect(api) for _ in range(50)]
        half_sent = [connect(api) for _ in range(10)]
        for sock in half_sent:
            sock.sendall(HEAD + b"X-Not-Finished: yes")
        kept_alive = connect(api)
        kept_alive.sendall(HEAD + b"\r\n")
        assert answer(kept_alive)[0] == 200
        uploads = [connect(api) for _ in range(3)]  # 1,000,000 bytes promised, 4 bytes a second sent
        for sock in uploads:
            sock.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                         b"Authorization: Bearer " + api.tokens["25BE"].encode() +
                         b"\r\nContent-Length: 1000000\r\n\r\n")
        waiting = {"idle": set(idle), "half-sent": set(half_sent), "kept alive": {kept_alive}}
        dripping, slowest_healthz = set(uploads), 0.0
        with httpx.Client(base_url=api.url, timeout=5) as client:
            while (dripping or any(waiting.values())) and time.monotonic() - started < 10:
                for sock in list(dripping):
                    try:
                        sock.sendall(b"x")
                    except OSError:
                        dripping.discard(sock)
                for socks in waiting.values():
                    socks.difference_update({sock for sock in socks if closed_by_server(sock)})
                asked = time.monotonic()
                assert client.get("/healthz").status_code == 200
                slowest_healthz = max(slowest_healthz, time.monotonic() - asked)
                time.sleep(0.25)
        elapsed = time.monotonic() - started
        for sock in [*idle, *half_sent, kept_alive, *uploads]:
            sock.close()
        still_open = {kind: len(socks) for kind, socks in waiting.items() if socks}
        assert not still_open and not dripping, (still_open, f"{len(dripping)} slow uploads")
        assert 0.9 < elapsed < 10  # 1 s timeouts; slack for a loaded machine
        assert slowest_healthz < 2
        assert (refused("header_timeout") - timed_out, refused("body_too_slow") - too_slow) == (60, 3)


def test_connections_over_the_cap_get_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path, monkeypatch, ROD_HTTP_MAX_CONNECTIONS="5",
                 ROD_HTTP_HEADER_TIMEOUT_SECONDS="1") as api:
        idle = [connect(api) for _ in range(5)]
        assert httpx.get(f"{api.url}/healthz").status_code == 503
        time.sleep(1)  # the idle ones are closed after the header timeout: room again
        deadline = time.monotonic() + 5
        while (status := httpx.get(f"{api.url}/healthz").status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200
        for sock in idle:
            sock.close()


def test_a_foreign_host_gets_400(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path, monkeypatch) as api:
        port = urlsplit(api.url).port
        with httpx.Client(base_url=api.url) as client:
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.:80"):
                for path in ("/healthz", "/healthz/", "/metrics", "/openapi.json"):
                    response = client.get(path, headers={"Host": host})
                    assert response.status_code == 400, (host, path)
                    assert codes(response.content) == ["HOST_NOT_ALLOWED"]
            for host in ("localhost", f"LOCALHOST:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
                assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
            redirect = client.get("/healthz/", headers={"Host": f"localhost:{port}"})
            assert (redirect.status_code, redirect.headers["location"]) == (307, f"http://localhost:{port}/healthz")
        with connect(api) as sock:  # HTTP/1.0 without Host: answered, naming the bound address
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert answer(sock)[0] == 200

    proxied = tmp_path / "behind-a-proxy"
    proxied.mkdir()
    with serving(proxied, monkeypatch, ROD_ALLOWED_HOSTS="register.example.nl, localhost") as api, \
            httpx.Client(base_url=api.url) as client:
        assert client.get("/healthz", headers={"Host": "register.example.nl"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "127.0.0.1"}).status_code == 400


def test_answers_carry_no_server_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path, monkeypatch) as api, httpx.Client(base_url=api.url) as client:
        for response in (client.get("/healthz"), client.get("/nowhere"), client.get("/v1/batches/x"),
                         client.get("/healthz", headers={"Host": "evil.example"})):
            assert "server" not in response.headers, response.request.url
        with connect(api) as sock:
            sock.sendall(HEAD + b"X-Padding: " + b"a" * 40_000 + b"\r\n\r\n")
            assert "server" not in answer(sock)[1]
