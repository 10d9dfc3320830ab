"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from services.kernel.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaConsumer

ROOT = Path(__file__).resolve().parents[1]

# Every person number the fixtures use (domain.md's documented examples).
# SIGKILLs each crash test lands: a bounded number in `make test` (every kind of kill at least
# twice); bench/crash.sh runs the long version (ROD_CRASH_KILLS=100).
CRASH_KILLS = int(os.environ.get("ROD_CRASH_KILLS") or 8)

PERSON_NUMBERS = [
    "111222333",
    "123456782",
    "249566758",
    "319072356",
    "012345672",
    "12345672",
    "101222331",
    "106071665",
    "111252333",
    "123456789",
    "101222333",
    "211222337",
]


class _LogSink(io.TextIOBase):
    """Collects everything logged, for the person-number scan at the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def isatty(self) -> bool:
        return False


LOG_SINK = _LogSink()


def run_rod(
    *args: str, env: dict[str, str], check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `rod` console script as a user would; its output joins the log scan."""
    rod = Path(sys.executable).with_name("rod")
    proc = subprocess.run([str(rod), *args], env=env, capture_output=True, text=True, timeout=timeout)
    LOG_SINK.write(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"rod {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a `rod` subprocess needs to act on the same system as `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    env.update(
        ROD_DATA_DIR=str(settings.data_dir),
        ROD_DATABASE_URL=settings.database_urls["registrar"],
        ROD_TOPIC_PREFIX=settings.topic_prefix,
    )
    if settings.kafka_bootstrap:
        env["ROD_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if settings.catalogue:
        env["ROD_CATALOGUE"] = str(settings.catalogue)
    return env


def topic_partitions(consumer: KafkaConsumer, topic: str, timeout: float = 30.0) -> list:
    """The partitions of `topic`, waiting until the broker knows the topic ([] after `timeout`)."""
    import time

    from kafka import TopicPartition

    deadline = time.monotonic() + timeout
    while not (found := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 30.0) -> list:
    """Every record on `topic` from the beginning, waiting until there are `at_least`."""
    import time

    from services.kernel import kafka

    consumer = kafka.consumer(bootstrap, group_id=None)
    try:
        deadline = time.monotonic() + timeout
        partitions = topic_partitions(consumer, topic, timeout)
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=200, max_records=10_000).values()
            for batch in batches:
                records.extend(batch)
            if batches:
                quiet_since = time.monotonic()
            elif len(records) >= at_least and time.monotonic() - quiet_since > 1.0:
                break  # enough, and nothing more arrived for a second: the end of the topic
        return records
    finally:
        consumer.close()


def start_rod_up(
    env: dict[str, str], data_dir: Path, port: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`rod up` as a user starts it (its own local broker, HTTP on `port` or a free one); returns
    the process and the broker address once it is written to the data dir."""
    import time

    from services.kernel.broker import free_port

    rod = Path(sys.executable).with_name("rod")
    proc = subprocess.Popen(
        [str(rod), "up", "--data-dir", str(data_dir), "--port", str(port or free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    bootstrap_file = data_dir / "kafka.bootstrap"
    while not bootstrap_file.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "rod up did not start the broker"
        time.sleep(0.1)
    drain_stderr(proc)
    return proc, bootstrap_file.read_text().strip()


_DRAINS: dict[int, tuple[threading.Thread, list[str]]] = {}


def drain_stderr(proc: subprocess.Popen[str]) -> None:
    """Read a server's log as it comes, in a thread: a pipe nobody reads fills up (64 KiB, a few
    hundred access-log lines) and then blocks the server. `drained_stderr` gives it all."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    reader = threading.Thread(target=read, name=f"stderr-{proc.pid}", daemon=True)
    reader.start()
    _DRAINS[proc.pid] = (reader, lines)


def drained_stderr(proc: subprocess.Popen[str]) -> str:
    """Everything the process logged, once it has ended (see drain_stderr)."""
    reader, lines = _DRAINS.pop(proc.pid)
    reader.join(30)
    return "".join(lines)


def stop_rod_up(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C, as a user stops it: it must end cleanly; returns what it printed."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=90)
    out, err = proc.stdout.read() if proc.stdout else "", drained_stderr(proc)
    LOG_SINK.write(out + err)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out
    return out
