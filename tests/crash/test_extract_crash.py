"""The extract service killed with SIGKILL again and again (CRASH_KILLS) while a portal issues extracts.

The front door (`rod up --components http,relay,distributor,impact`) stays up and takes the
portal's requests; the extract service (`rod up --components extract`, which reads its feed and
publishes its outbox of ExtractIssued) is killed at random moments and started again. Afterwards
every extract that answered 201 has exactly one ExtractIssued per result on rod.extracts.v1
(key = result id), and there is none without an extract.

The kills land during start-up and recovery, right after a life put its outbox on the broker (while
it marks the rows published), and while it publishes what the portal issues meanwhile. Each kill is
checked for rows it left on the topic but not marked published: the next start sends those again.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer
from sqlalchemy import func, literal_column, select
from sqlalchemy.engine import Engine

from services.extract.service import EXTRACTS_TOPIC
from services.extract.store import items
from services.kernel import kafka
from services.kernel.broker import free_port
from services.kernel.codec import Codec
from services.kernel.database import make_engine
from services.kernel.settings import Settings
from tests.fixtures.bulkfiles import COLUMNS, write_csv
from tests.support import CRASH_KILLS, LOG_SINK, read_topic, run_rod, settings_env, topic_partitions

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"
ROD = Path(sys.executable).with_name("rod")
KILLS = CRASH_KILLS
EXTRACTS = 25 * KILLS
RESULTS_EACH = 8
# documented person numbers only (the session's log scan looks for them)
PEOPLE = [("bsn", n) for n in ("111222333", "123456782", "249566758", "319072356")] + [
    ("onderwijsnummer", n) for n in ("101222331", "106071665")
]
STARTED = "rodchain up: running extract"


@dataclass
class Issued:
    """What the portal got back: 201s by extract id, the rest by kind."""

    extracts: dict[str, set[str]] = field(default_factory=dict)  # extract_id -> result ids
    unavailable: list[str] = field(default_factory=list)  # connection errors and 5xx
    refused: list[str] = field(default_factory=list)  # 4xx: never for a standing result
    done: int = 0


def _register(env: dict[str, str], tmp_path: Path) -> None:
    """Institution 25BE, RESULTS_EACH results for each person through `rod import`."""
    run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env,
            check=True)
    rows = (
        {
            kind: number,
            "instellingscode": "25BE",
            "vestigingscode": "25BE01",
            "sector": "HO",
            "opleidingscode": "56551" if i % 2 else "50625",
            "diplomavolgnummer": f"X{p}-{i}",
            "diplomadatum": "2026-07-01",
        }
        for p, (kind, number) in enumerate(PEOPLE)
        for i in range(RESULTS_EACH)
    )
    write_csv(tmp_path / "results.csv", rows, columns=COLUMNS)
    run_rod("import", str(tmp_path / "results.csv"), "--institution", "25BE", env=env, check=True)


def _up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`rod up` with its output in `log` (nobody reads a pipe while the test waits)."""
    with log.open("ab") as out:
        return subprocess.Popen([str(ROD), "up", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"{log.name} ended: {log.read_text(errors='replace')[-2000:]}"
        assert time.monotonic() < deadline, f"no {marker!r} in {log.name} after {timeout} s"
        time.sleep(0.01)


def _grown(count: Callable[[], int], before: int, proc: subprocess.Popen[bytes], every: float) -> None:
    """Wait until `count()` passed `before`, the process ended or 30 s passed (the kill comes anyway)."""
    deadline = time.monotonic() + 30
    while count() <= before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(every)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C: it must end cleanly."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=90)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "stopped" in text


def _outbox(engine: Engine) -> tuple[int, set[tuple[str, str]]]:
    """(items published, the (extract_id, result_id) of those not published yet)."""
    with engine.connect() as conn:
        published = conn.execute(
            select(func.count()).select_from(items).where(items.c.published == literal_column("true"))
        ).scalar_one()
        waiting = conn.execute(
            select(items.c.extract_id, items.c.result_id).where(items.c.published == literal_column("false"))
        ).all()
    return int(published), {(r.extract_id, r.result_id) for r in waiting}


class Topic:
    """Everything on rod.extracts.v1 so far, read on from where it stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer: KafkaConsumer = kafka.consumer(bootstrap, group_id=None)
        self.partitions = topic_partitions(self.consumer, topic)
        assert self.partitions, f"no topic {topic}"
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.codec = Codec()
        self.pairs: Counter[tuple[str, str]] = Counter()

    def end(self) -> int:
        """How many messages the topic holds (its partitions' end offsets)."""
        return sum(self.consumer.end_offsets(self.partitions).values())

    def read_to_end(self, timeout: float = 30) -> Counter[tuple[str, str]]:
        ends = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout
        while any(self.consumer.position(tp) < ends[tp] for tp in self.partitions):
            assert time.monotonic() < deadline, "the topic could not be read to its end"
            for records in self.consumer.poll(timeout_ms=200).values():
                for record in records:
                    name, event = self.codec.decode(record.value)
                    assert name == "ExtractIssued"
                    assert record.key == event["result_id"].encode()
                    self.pairs[(event["extract_id"], event["result_id"])] += 1
        return self.pairs

    def close(self) -> None:
        self.consumer.close()


def _standing(base: str, token: str) -> list[tuple[str, str, str]]:
    """(kind, number, result id) of every result, once the portal's lookup shows them all; people
    interleaved, so consecutive extracts are of different persons."""
    found: list[list[tuple[str, str, str]]] = []
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for kind, number in PEOPLE:
            while True:
                answer = client.post("/v1/extracts/lookup", json={"person": {kind: number}})
                assert answer.status_code == 200, answer.text
                if len(results := answer.json()["results"]) == RESULTS_EACH:
                    break
                assert time.monotonic() < deadline, f"the lookup shows {len(results)} of {RESULTS_EACH}"
                time.sleep(0.3)
            found.append([(kind, number, r["result_id"]) for r in results])
    return [person[i] for i in range(RESULTS_EACH) for person in found]


def _extracts_issued(settings: Settings, at_least: int) -> Counter[tuple[str, str]]:
    """How often each (extract_id, result_id) is on rod.extracts.v1, read from the start."""
    topic = settings.topic(EXTRACTS_TOPIC)
    codec = Codec()
    counts: Counter[tuple[str, str]] = Counter()
    for record in read_topic(settings.kafka_bootstrap or "", topic, at_least, timeout=60):
        name, event = codec.decode(record.value)
        assert name == "ExtractIssued" and record.key == event["result_id"].encode()
        counts[(event["extract_id"], event["result_id"])] += 1
    return counts


def _issue(base: str, token: str, targets: list[tuple[str, str, str]], permits: threading.Semaphore,
           issued: Issued) -> None:
    """The portal: EXTRACTS extracts of one result each, one per permit."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for i in range(EXTRACTS):
            permits.acquire()
            kind, number, result_id = targets[i % len(targets)]
            body = {"person": {kind: number}, "result_ids": [result_id], "language": "en" if i % 2 else "nl"}
            try:
                answer = client.post("/v1/extracts", json=body)
            except httpx.TransportError as exc:
                issued.unavailable.append(type(exc).__name__)
            else:
                if answer.status_code == 201:
                    shown = {r["result_id"] for r in answer.json()["results"]}
                    issued.extracts[answer.json()["extract_id"]] = shown
                elif answer.status_code >= 500:
                    issued.unavailable.append(str(answer.status_code))
                else:
                    issued.refused.append(f"{answer.status_code} {answer.text[:200]}")
            issued.done += 1


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_extract_service_survives_sigkill_while_extracts_are_issued(
    settings: Settings, tmp_path: Path
) -> None:
    began = time.monotonic()
    phases: dict[str, float] = {}
    extract_db = f"sqlite:///{tmp_path / 'extract.db'}"
    env = {
        **settings_env(settings),
        "ROD_CATALOGUE": str(CATALOGUE),
        "ROD_EXTRACT_DATABASE_URL": extract_db,
        "ROD_DISTRIBUTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'distributor.db'}",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs: list[Path] = []
    running: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"{name}.log")
        running.append(_up(env, logs[-1], *args))
        return running[-1]

    front = start("front", "--components", "http,relay,distributor,impact", "--port", str(port))
    engine = make_engine(extract_db)
    topic: Topic | None = None
    try:
        _register(env, tmp_path)  # while the front door starts
        token = run_rod("portal", "add", "mijn-duo", env=env, check=True).stdout.strip().splitlines()[-1]
        _wait_for_line(front, logs[0], "rodchain up: HTTP API")
        proc = start("extract-0", "--components", "extract")
        _wait_for_line(proc, logs[-1], STARTED)
        targets = _standing(base, token)  # the first extract process has read the feed
        phases["setup"] = time.monotonic() - began

        topic = Topic(settings.kafka_bootstrap or "", settings.topic(EXTRACTS_TOPIC))
        issued = Issued()
        permits = threading.Semaphore(0)
        client = threading.Thread(target=_issue, args=(base, token, targets, permits, issued), daemon=True)
        client.start()
        rng = random.Random(20261124)
        after_sending = 0  # kills of a life that had put messages on the topic
        between_send_and_mark = 0  # kills that left rows on the topic but not marked published
        resent_by_kill: dict[int, int] = {}  # kill -> those rows: the next start sends them again
        for k in range(KILLS):
            for _ in range(EXTRACTS // KILLS):  # the portal issues while the service dies and starts
                permits.release()
            published_before, _waiting = _outbox(engine)
            on_topic_before = topic.end()
            if k:
                proc = start(f"extract-{k}", "--components", "extract")
                _wait_for_line(proc, logs[-1], STARTED)
            if k % 4 == 1 or k % 4 == 2:  # once its outbox is on the broker: while it marks the rows
                _grown(topic.end, on_topic_before, proc, every=0.001)
                time.sleep(0.0 if k % 4 == 1 else rng.uniform(0.0, 0.05))
            elif k % 4 == 3:  # once it marked a batch: while it publishes what the portal issues now
                _grown(lambda: _outbox(engine)[0], published_before, proc, every=0.01)
                time.sleep(rng.uniform(0.0, 0.5))
            else:  # during start-up and recovery
                time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            running.remove(proc)
            _published, waiting = _outbox(engine)
            in_flight = set(topic.read_to_end()) & waiting
            after_sending += topic.end() > on_topic_before
            between_send_and_mark += bool(in_flight)
            if in_flight:
                resent_by_kill[k] = len(in_flight)
        phases["kills"] = time.monotonic() - began

        proc = start(f"extract-{KILLS}", "--components", "extract")  # the last start publishes what is left
        _wait_for_line(proc, logs[-1], STARTED)
        client.join(timeout=120)
        assert not client.is_alive(), f"the portal issued only {issued.done} of {EXTRACTS} in time"
        deadline = time.monotonic() + 90
        while waiting := _outbox(engine)[1]:
            assert time.monotonic() < deadline, f"{len(waiting)} outbox rows never published"
            time.sleep(0.2)
        phases["drained"] = time.monotonic() - began

        assert not issued.refused, f"{len(issued.refused)} extracts refused: {issued.refused[:5]}"
        assert len(issued.extracts) + len(issued.unavailable) == EXTRACTS
        assert all(len(results) == 1 for results in issued.extracts.values())
        expected = {(e, r) for e, results in issued.extracts.items() for r in results}
        counts = _extracts_issued(settings, len(expected))
        with engine.connect() as conn:  # what the extract service wrote: items of extracts it issued
            query = select(items.c.extract_id, items.c.result_id)
            stored = {(r.extract_id, r.result_id) for r in conn.execute(query)}
        doubled = {pair: n for pair, n in counts.items() if n > 1}
        duplicates = sum(n - 1 for n in doubled.values())
        print(
            f"\nextract crash: {len(issued.extracts)} extracts answered 201, {len(issued.unavailable)} "
            f"unavailable; {counts.total()} ExtractIssued for {len(counts)} (extract, result) pairs, "
            f"{duplicates} duplicates on {len(doubled)} pairs; {after_sending} of {KILLS} kills after the "
            f"life sent, {between_send_and_mark} between send and mark (rows to send again by kill: "
            f"{resent_by_kill}); seconds: {', '.join(f'{k} {v:.0f}' for k, v in phases.items())}"
        )
        missing = expected - set(counts)
        assert not missing, f"{len(missing)} results of extracts that answered 201 have no ExtractIssued"
        orphans = set(counts) - stored
        assert not orphans, f"{len(orphans)} ExtractIssued without an extract"
        unanswered = {e for e, _ in set(counts) - expected}
        assert len(unanswered) <= len(issued.unavailable), "ExtractIssued of extracts nobody was told of"
        assert not doubled, (
            f"{duplicates} duplicate ExtractIssued on {len(doubled)} (extract, result) pairs: "
            f"{between_send_and_mark} of {KILLS} kills landed after the send and before the mark"
        )
        assert after_sending >= KILLS // 4, f"only {after_sending} kills landed after the life sent"
        _stop(proc, logs[-1])
        running.remove(proc)
        _stop(front, logs[0])
        running.remove(front)
    finally:
        for leftover in running:
            leftover.send_signal(signal.SIGKILL)
            leftover.wait(timeout=30)
        if topic is not None:
            topic.close()
        engine.dispose()
        for log in logs:
            LOG_SINK.write(log.read_text(errors="replace"))
