"""The registrar's app as its own process: the uvicorn command of production's
process-per-service layout, on a free port, for tests that need a server of its own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from services.kernel.broker import free_port
from tests.support import LOG_SINK, drain_stderr, drained_stderr


@contextmanager
def api_process(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the API with `env`, wait for /healthz, yield the process and its URL; stop it with
    Ctrl-C and check it exited cleanly. Its output joins the log scan."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "services.app:app_from_env",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    drain_stderr(proc)  # its log is read as it comes: a full pipe would block the server
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the API did not serve /healthz"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out, err = proc.stdout.read() if proc.stdout else "", drained_stderr(proc)
        LOG_SINK.write(out + err)
    assert proc.returncode == 0, err[-2000:]
