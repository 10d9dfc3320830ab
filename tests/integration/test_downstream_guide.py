"""docs/downstream.md, run: every command and program in the guide for downstream organisations
against a running `rod up` (its own local broker, data dir and topic prefix), as an organisation
would run them: the Python programs as separate processes that import nothing of rodchain, the
curl commands with bash, the operator's `rod` commands as DUO's operator types them.

Each fenced block in the guide follows a marker `<!-- guide-test: NAME -->`; an example output
block is compared with what the program really printed. A block that is not run here fails the
test, so the guide cannot grow a command that nobody ran.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.kernel.codec import SCHEMA_DIR, Codec
from services.registrar.transparency.checkpoint import Checkpoint, Signer, parse_signer, sign_checkpoint
from tests import rfc9162_reference as rfc
from tests.support import LOG_SINK, ROOT, read_topic, run_rod, start_rod_up, stop_rod_up

GUIDE = ROOT / "docs" / "downstream.md"
CATALOGUE = ROOT / "tests" / "fixtures" / "catalogue.csv"
ORIGIN = "rodchain.local/log"  # the log's default origin, the name of its checkpoints
PREFIX = "acc."  # as on a shared cluster: the guide's programs take the topic name from TOPIC
ENVELOPE = ["delivery_id", "kind", "event_id", "result_id", "delivered_at", "withdraws"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
READER_LINE = re.compile(rf"^(DELIVERY {UUID} {UUID}|WITHDRAWAL {UUID} {UUID} {UUID})$")
READER_SUMMARY = re.compile(r"^(\d+) new, (\d+) repeats dropped$")
LOG_LINES = [re.compile(pattern) for pattern in (  # what the guide's log check prints
    r"^checkpoint ok: (?P<origin>\S+), (?P<size>\d+) events, root (?P<root>[A-Za-z0-9+/]{43}=)$",
    r"^included: the event at position (?P<position>\d+) is in the log of (?P<size>\d+) events$",
    r"^consistent: the log of (?P<size>\d+) events extends the log of (?P<kept>\d+) you kept$",
    r"^no checkpoint kept yet: this one is kept for the next check$")]

_MARKED = re.compile(r"<!-- guide-test: (?P<name>[\w-]+) -->\n(?P<rest>```.*?\n```\n|(?:\|[^\n]*\n)+)", re.S)
_FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*)\n```\n$", re.S)


@dataclass(frozen=True)
class Block:
    name: str
    lang: str  # python, sh, text, json; "table" for a marked table
    body: str


def guide_blocks() -> dict[str, Block]:
    """Every marked block and table of the guide, by name."""
    text = GUIDE.read_text()
    found: dict[str, Block] = {}
    for match in _MARKED.finditer(text):
        name, rest = match["name"], match["rest"]
        assert name not in found, f"two blocks are named {name}"
        fence = _FENCE.match(rest)
        found[name] = Block(name, fence["lang"], fence["body"]) if fence else Block(name, "table", rest)
    return found


def table_rows(block: Block) -> list[list[str]]:
    """The cells of a markdown table, header and rule left out, backticks removed."""
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in block.body.splitlines()]
    return rows[2:]


# --- the guide's claims that need no running system ---------------------------------------


def test_every_fenced_block_of_the_guide_is_marked_for_this_test() -> None:
    text = GUIDE.read_text()
    fences = len(re.findall(r"^```", text, re.M))
    marked = [b for b in guide_blocks().values() if b.lang != "table"]
    assert fences == 2 * len(marked), "a fenced block without a <!-- guide-test: NAME --> marker"
    for block in marked:
        assert block.lang in {"python", "sh", "text", "json"}, block.name
        if block.lang == "python":  # an organisation has the schemas, not our code
            assert not re.search(r"^\s*(from|import) services\b", block.body, re.M), block.name


def test_the_entitlement_table_is_what_the_subscriptions_and_schemas_say() -> None:
    subscriptions = {s["name"]: s for s in tomllib.loads(
        (ROOT / "deploy" / "subscriptions.toml").read_text())["subscription"]}
    rows = table_rows(guide_blocks()["entitlements"])
    assert [r[0] for r in rows] == list(subscriptions)
    for name, topic, _which, fields in rows:
        sub = subscriptions[name]
        assert topic == sub["topic"]
        renamed = [sub.get("rename", {}).get(f, f) for f in sub["fields"]]
        schema = json.loads((SCHEMA_DIR / f"{sub['schema']}.v1.avsc").read_text())
        in_schema = [f["name"] for f in schema["fields"]]
        listed = [f.strip().strip("`") for f in fields.split(",")]
        assert listed == renamed == in_schema[len(ENVELOPE):], name
        assert in_schema[: len(ENVELOPE)] == ENVELOPE


def test_the_envelope_table_is_the_feed_schemas_envelope() -> None:
    assert [r[0] for r in table_rows(guide_blocks()["envelope"])] == ENVELOPE


# --- the guide, run against a running system ---------------------------------------------


@dataclass
class Guide:
    """Runs the guide's blocks as an organisation (or DUO's operator) would, and keeps track."""

    blocks: dict[str, Block]
    workdir: Path  # where an organisation keeps its copy of schemas/avro
    rod_env: dict[str, str]  # the operator's environment: rod reaches the running system
    ran: set[str]

    def _env(self, extra: dict[str, str], rod: bool) -> dict[str, str]:
        base = self.rod_env if rod else {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
        return {**base, **extra}

    def python(self, name: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """A Python program of the guide, in a process of its own that cannot import rodchain."""
        block = self.blocks[name]
        assert block.lang == "python", name
        self.ran.add(name)
        proc = subprocess.run([sys.executable, "-I", str(self.script(name))], cwd=self.workdir,
                              env=self._env(env, rod=False), capture_output=True, text=True, timeout=90)
        if check:
            assert proc.returncode == 0, f"{name} exited {proc.returncode}: {proc.stderr[-3000:]}"
        return proc

    def script(self, name: str) -> Path:
        """The program's file, written when it is not there yet as the guide has it (so several
        runs at once never see it half written)."""
        script, text = self.workdir / f"{name}.py", self.blocks[name].body + "\n"
        if not script.exists() or script.read_text() != text:
            script.write_text(text)
        return script

    def sh(self, name: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A shell block of the guide (curl, or the operator's rod) with bash."""
        proc = self.start_sh(name, **env)
        out, err = proc.communicate(timeout=90)
        if self.blocks[name].body.startswith("rod "):
            LOG_SINK.write(out + err)  # rod's own output joins the person-number scan
        assert proc.returncode == 0, f"{name} exited {proc.returncode}: {err[-3000:]}"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start_sh(self, name: str, **env: str) -> subprocess.Popen[str]:
        block = self.blocks[name]
        assert block.lang == "sh", name
        self.ran.add(name)
        return subprocess.Popen(["bash", "-eu", "-o", "pipefail", "-c", block.body], cwd=self.workdir,
                                env=self._env(env, rod=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def output(self, name: str) -> str:
        """An example output block, marked as checked by the caller."""
        self.ran.add(name)
        return self.blocks[name].body


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def reader_lines(proc: subprocess.CompletedProcess[str]) -> tuple[list[list[str]], int, int]:
    """The Kafka reader's message lines (split), and its summary: new, repeats."""
    lines = proc.stdout.strip().splitlines()
    summary = READER_SUMMARY.match(lines[-1])
    assert summary, proc.stdout
    for line in lines[:-1]:
        assert READER_LINE.match(line), line
    return [line.split() for line in lines[:-1]], int(summary[1]), int(summary[2])


def test_the_guide_runs_against_a_running_system(tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the guide's HTTP commands need curl and bash")
    data_dir = tmp_path / "var"
    workdir = tmp_path / "downstream"
    workdir.mkdir()
    (workdir / "schemas").symlink_to(ROOT / "schemas")  # the organisation's copy of the schemas
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    env.update(ROD_DATA_DIR=str(data_dir), ROD_CATALOGUE=str(CATALOGUE), ROD_TOPIC_PREFIX=PREFIX,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env["ROD_LOG_CHECKPOINT_SECONDS"] = "1"  # the log's checkpoints follow the guide's events quickly
    guide = Guide(guide_blocks(), workdir, env, set())

    institution = run_rod("institution", "add", "25BE", "--name", "Universiteit Gids", "--sectors", "HO,VO",
                          env=env, check=True).stdout.strip().splitlines()[-1]
    proc, bootstrap = start_rod_up(env, data_dir)
    try:
        host = f"http://127.0.0.1:{proc.args[-1]}"
        wait_for(lambda: _healthy(host), 60, "rod up's HTTP API")
        with httpx.Client(base_url=host, timeout=60,
                          headers={"Authorization": f"Bearer {institution}"}) as registrar:
            _run_the_guide(guide, host, bootstrap, registrar)
    finally:
        stop_rod_up(proc)
    assert guide.ran == set(guide.blocks) - {"entitlements", "envelope"}, "a block of the guide was not run"


def _healthy(host: str) -> bool:
    try:
        return httpx.get(f"{host}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _run_the_guide(guide: Guide, host: str, bootstrap: str, registrar: httpx.Client) -> None:
    """The guide from top to bottom; `registrar` is the institution 25BE's client."""
    # DUO's operator makes CIBG's consumer token: the last line printed
    token = guide.sh("consumer-add").stdout.strip().splitlines()[-1]
    assert len(token) > 30 and " " not in token
    with httpx.Client(base_url=host, timeout=60, headers={"Authorization": f"Bearer {token}"}) as consumer:
        _read_and_acknowledge(guide, host, bootstrap, registrar, consumer, token)


def _read_and_acknowledge(guide: Guide, host: str, bootstrap: str, registrar: httpx.Client,
                          consumer: httpx.Client, token: str) -> None:
    """Results registered and deleted; the feeds read over Kafka and HTTP; acknowledged; the chain."""
    schema_dir = str(guide.workdir / "schemas" / "avro")
    kafka_env = {"BOOTSTRAP": bootstrap, "SCHEMA_DIR": schema_dir, "IDLE_SECONDS": "3"}

    def http_feed() -> list[dict]:
        messages: list[dict] = []
        after: dict[str, str] = {}
        while page := consumer.get("/v1/feeds/cibg-big/messages", params={"limit": 1000, **after}).json():
            if not page["messages"]:
                return messages
            messages += page["messages"]
            after = {"after": page["next"]}
        return messages

    def register(bsn: str, programme: str, number: str) -> str:
        answer = registrar.post("/v1/results", json={
            "person": {"bsn": bsn}, "institution": "25BE", "branch": "25BE01", "sector": "HO",
            "programme_code": programme, "diploma_number": number, "diploma_date": "2026-07-01"})
        assert answer.status_code == 201, answer.text
        return answer.json()["result_id"]

    # three BIG results (B Geneeskunde: arts), one without a BIG profession; then one deleted
    persons = ["111222333", "123456782", "249566758"]
    big = [register(bsn, "56551", f"GEN-{i}") for i, bsn in enumerate(persons)]
    law = register("111222333", "50625", "LAW-1")
    wait_for(lambda: len(http_feed()) == 3, 60, "three deliveries on cibg-big")
    deleted = registrar.post(f"/v1/results/{big[1]}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
    assert deleted.status_code == 201, deleted.text
    feed = wait_for(lambda: (f := http_feed()) and len(f) == 4 and f, 60, "the withdrawal on cibg-big")
    _check_the_log_first(guide, host, bootstrap)  # five events: the checkpoint kept for later

    # --- the Kafka reader: each feed holds what its subscription is entitled to
    seen = guide.workdir / "seen-cibg.txt"
    cibg_topic = f"{PREFIX}rod.feed.cibg-big.v1"
    seen_files = {"cibg-big": seen, "mijnoverheid": guide.workdir / "seen-mijnoverheid.txt",
                  "extract": guide.workdir / "seen-extract.txt"}

    def read_feed(name: str) -> subprocess.CompletedProcess[str]:
        return guide.python("kafka-reader", TOPIC=f"{PREFIX}rod.feed.{name}.v1",
                            SEEN_FILE=str(seen_files[name]), **kafka_env)

    guide.script("kafka-reader")
    with ThreadPoolExecutor(len(seen_files)) as pool:  # three organisations, each its own reader
        read = dict(zip(seen_files, pool.map(read_feed, seen_files), strict=True))
    lines, new, repeats = reader_lines(read["cibg-big"])
    assert (new, repeats) == (4, 0)
    deliveries = {line[2]: line[1] for line in lines if line[0] == "DELIVERY"}
    assert set(deliveries) == set(big)  # the law degree is not CIBG's
    [withdrawal] = [line for line in lines if line[0] == "WITHDRAWAL"]
    assert withdrawal[2] == big[1] and withdrawal[3] == deliveries[big[1]]
    assert lines.index(withdrawal) > [line[1] for line in lines].index(withdrawal[3])  # a result's order
    taken_back = next(m for m in feed if m["kind"] == "WITHDRAWAL")
    assert feed.index(taken_back) > [m["delivery_id"] for m in feed].index(taken_back["withdraws"])
    assert {line[1] for line in lines} == {m["delivery_id"] for m in feed}  # the same ids as over HTTP
    assert seen.read_text().split() == [line[1] for line in lines]
    example = guide.output("kafka-reader-output").splitlines()
    assert all(READER_LINE.match(line) for line in example[:-1]) and READER_SUMMARY.match(example[-1])

    for name in ("mijnoverheid", "extract"):  # every BSN result / every result, the law degree too
        lines_other, new, _ = reader_lines(read[name])
        assert new == 5 and {line[2] for line in lines_other} == {*big, law}, name

    # --- the wire format: Avro's test vector, and the first ten bytes of a real cibg-big message
    first = read_topic(bootstrap, cibg_topic, 1)[0].value
    printed = guide.python("fingerprints").stdout.split()
    assert printed == ["8a8f25cce724dd63", "7195948357588979594", first[:10].hex()]

    # --- delivery ids are what the guide says they are
    for message in (feed[0], next(m for m in feed if m["kind"] == "WITHDRAWAL")):
        made = guide.python("delivery-id", SUBSCRIPTION="cibg-big", EVENT_ID=message["event_id"],
                            KIND=message["kind"]).stdout.strip()
        assert made == message["delivery_id"]

    # --- a replay: the same messages again on Kafka, dropped by the reader; nothing new over HTTP
    assert guide.sh("replay").stdout.strip() == "subscription cibg-big: replay requested"
    wait_for(lambda: _mode(guide.rod_env, "cibg-big") == "live", 60, "the replay to end")
    wait_for(lambda: len(read_topic(bootstrap, cibg_topic, 8, timeout=5)) >= 8, 30, "the replayed messages")
    again = guide.python("kafka-reader", TOPIC=cibg_topic, SEEN_FILE=str(seen), **kafka_env)
    lines, new, repeats = reader_lines(again)
    assert (lines, new) == ([], 0) and repeats >= 8
    assert http_feed() == feed

    # --- over HTTP: two pages, the same messages as the guide shows them
    page = json.loads(guide.sh("http-first-page", TOKEN=token, HOST=host).stdout)
    assert page["messages"] == feed[:2] and page["next"] == feed[1]["cursor"]
    example_page = json.loads(guide.output("http-page-output"))
    keys = {frozenset(m) for m in example_page["messages"]}
    assert keys == {frozenset(m) for m in feed} and len(keys) == 1
    for shown in example_page["messages"]:  # as in the guide: a withdrawal repeats no personal data
        real = next(m for m in feed if m["kind"] == shown["kind"])
        entitled = set(shown) - set(ENVELOPE) - {"cursor"}
        assert all(shown[f] is None for f in entitled) == all(real[f] is None for f in entitled)
        assert (shown["withdraws"] is None) == (real["withdraws"] is None) == (shown["kind"] == "DELIVERY")
    began = time.monotonic()
    rest = json.loads(guide.sh("http-next-page", TOKEN=token, HOST=host, CURSOR=page["next"]).stdout)
    assert rest["messages"] == feed[2:] and rest["next"] == feed[-1]["cursor"]
    assert time.monotonic() - began < 10  # `wait` waits only when there is nothing to give

    answers = guide.sh("http-errors", TOKEN=token, HOST=host).stdout.strip().splitlines()
    refused = [(int(status), json.loads(body)["errors"][0])
               for body, status in (line.rsplit(" ", 1) for line in answers)]
    assert [(status, e["code"], e["field"]) for status, e in refused] == [
        (401, "TOKEN_MISSING", None), (403, "TOKEN_FORBIDDEN", None), (400, "CURSOR_INVALID", "after"),
        (422, "PARAMETER_INVALID", "limit")]

    # the long poll: waiting at the end of the feed, answered by the next registration, here the
    # deleted diploma registered again: a new DELIVERY of the same result
    waiting = guide.start_sh("http-next-page", TOKEN=token, HOST=host, CURSOR=feed[-1]["cursor"])
    time.sleep(1.0)
    newest = register("123456782", "56551", "GEN-1")
    assert newest == big[1]
    began = time.monotonic()
    out, err = waiting.communicate(timeout=45)
    assert waiting.returncode == 0, err
    arrived = json.loads(out)["messages"]
    assert [(m["kind"], m["result_id"]) for m in arrived] == [("DELIVERY", newest)]
    first_time = next(m for m in feed if m["delivery_id"] == deliveries[newest])
    assert arrived[0]["event_id"] != first_time["event_id"]
    assert time.monotonic() - began < 20, "the waiting request was not answered when the message arrived"
    feed = http_feed()
    assert len(feed) == 5

    # --- acknowledgements: over HTTP, idempotent and monotonic
    acked = [json.loads(guide.sh("http-ack", TOKEN=token, HOST=host, CURSOR=cursor).stdout)
             for cursor in (feed[1]["cursor"], feed[1]["cursor"], feed[0]["cursor"])]
    assert [a["acknowledged"] for a in acked] == [2, 0, 0]

    # a Kafka reader: the cursor up to which it processed everything (the newest it has not read),
    # acknowledged by DUO's operator
    cursor = guide.python("find-cursor", HOST=host, TOKEN=token, SEEN_FILE=str(seen)).stdout.strip()
    assert cursor == feed[3]["cursor"]
    from_last = guide.python("find-cursor", HOST=host, TOKEN=token, SEEN_FILE=str(seen),
                             AFTER=feed[1]["cursor"]).stdout.strip()
    assert from_last == cursor
    assert guide.sh("consumer-ack", CURSOR=cursor).stdout.strip() == "2 newly acknowledged on cibg-big"

    # each acknowledged message: one ACKNOWLEDGED receipt on rod.deliveries.v1 ...
    codec = Codec()

    def receipts() -> list[dict]:
        records = read_topic(bootstrap, f"{PREFIX}rod.deliveries.v1", 0, timeout=5)
        return [r for r in (codec.decode(rec.value)[1] for rec in records) if r["kind"] == "ACKNOWLEDGED"]

    found = wait_for(lambda: (r := receipts()) and len({x["delivery_id"] for x in r}) == 4 and r, 30,
                     "four ACKNOWLEDGED receipts")
    confirmed = {(r["delivery_id"], r["message_kind"]) for r in found}
    assert confirmed == {(m["delivery_id"], m["kind"]) for m in feed[:4]}
    assert all(r["acknowledged_at"] >= r["delivered_at"] for r in found)

    # ... so the chain impact tells the institution CIBG confirmed it
    def impact() -> dict:
        answer = registrar.post(f"/v1/results/{big[0]}/deletions", params={"dry_run": "true"},
                                json={"reason": "ADMINISTRATIVE_ERROR"})
        assert answer.status_code == 200, answer.text
        return answer.json()["impact"]

    shown = wait_for(lambda: (i := impact()) and "cibg-big" in i["acknowledged"] and i, 30,
                     "the confirmation in the chain impact")
    assert "bevestigd" in shown["message"]

    # --- the hash chain of rod.results.v1: 5 registrations and 1 deletion
    checked = guide.python("chain-check", BOOTSTRAP=bootstrap, TOPIC=f"{PREFIX}rod.results.v1",
                           SCHEMA_DIR=schema_dir).stdout.strip()
    events = registrar.get(f"/v1/results/{newest}").json()["events"]
    assert checked == f"chain ok: 6 events, head {events[-1]['hash']}"
    for keep_original, complaint in ((False, "the event does not match its hash"),
                                     (True, "two different events")):
        copy = _tampered_copy(bootstrap, f"{PREFIX}rod.results.v1", codec, keep_original)
        broken = guide.python("chain-check", check=False, BOOTSTRAP=bootstrap, TOPIC=copy,
                              SCHEMA_DIR=schema_dir)
        assert broken.returncode == 1 and broken.stdout == ""
        assert broken.stderr.strip() == f"chain broken at position 2: {complaint}"

    _check_the_log_again(guide, host, bootstrap, events[-1]["hash"])  # six events


def _mode(env: dict[str, str], subscription: str) -> str:
    """A subscription's mode (live, backfilling) as `rod subscription list --json` shows it."""
    rows = [json.loads(line) for line in run_rod("subscription", "list", "--json", env=env, check=True)
            .stdout.splitlines() if line.startswith("{")]
    return next(r["mode"] for r in rows if r["name"] == subscription)


def _tampered_copy(bootstrap: str, topic: str, codec: Codec, keep_original: bool) -> str:
    """rod.results.v1 copied to a topic of its own with the diploma number at position 2 changed:
    instead of the original event, or after it (two events claim one position)."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    copy = f"{'forked' if keep_original else 'tampered'}.{topic}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(copy, 1, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for record in read_topic(bootstrap, topic, 6):
            _name, event = codec.decode(record.value, as_written=True)
            if event["position"] != 2 or keep_original:
                producer.send(copy, key=record.key, value=record.value)
            if event["position"] == 2:
                writer = codec.writer_schema(record.value)
                changed = codec.encode_with(writer, {**event, "diploma_number": "GEN-9"})
                producer.send(copy, key=record.key, value=changed)
        producer.flush()
    finally:
        producer.close()
    return copy


# --- the log: checking that the register never rewrote its past ----------------------------


def log_lines(text: str) -> list[tuple[int, dict[str, str]]]:
    """Each line the guide's log check printed: which of LOG_LINES it is, and what it names."""
    found = []
    for line in text.strip().splitlines():
        kinds = [(i, m.groupdict()) for i, pattern in enumerate(LOG_LINES) if (m := pattern.match(line))]
        assert len(kinds) == 1, line
        found.append(kinds[0])
    return found


def _event_hashes(bootstrap: str, count: int) -> list[bytes]:
    """The `hash` field of every event on rod.results.v1, ordered by `position` (1..count)."""
    codec = Codec()
    by_position = {}
    for record in read_topic(bootstrap, f"{PREFIX}rod.results.v1", count):
        event = codec.decode(record.value)[1]
        by_position[event["position"]] = event["hash"]
    assert sorted(by_position) == list(range(1, count + 1))
    return [by_position[position] for position in sorted(by_position)]


def _served_size(host: str) -> int | None:
    """The tree size of the checkpoint the register serves now (None before the first)."""
    answer = httpx.get(f"{host}/v1/log/checkpoint", timeout=10)
    return int(answer.text.split("\n")[1]) if answer.status_code == 200 else None


def _log_signer(guide: Guide) -> Signer:
    """The key `rod up` made for the log's checkpoints (the embedded default, in its data dir)."""
    return parse_signer((Path(guide.rod_env["ROD_DATA_DIR"]) / "log" / "signing-key.txt").read_text().strip())


def _refused(guide: Guide, host: str, kept: Path, why: str, **env: str) -> None:
    """The log check fails with `why`, leaves the kept checkpoint as it was and keeps the one the
    register serves beside it, as the evidence for DUO."""
    before = kept.read_text()
    proc = guide.python("log-check", check=False, HOST=host, KEPT_FILE=kept.name, **env)
    assert proc.returncode == 1, proc
    rejected = kept.with_name(f"{kept.name}.rejected")
    told = f"LOG CHECK FAILED: {why}. Keep {kept.name} and {rejected.name} and tell DUO."
    assert proc.stderr.strip() == told
    assert kept.read_text() == before and rejected.read_text() == httpx.get(f"{host}/v1/log/checkpoint").text
    rejected.unlink()


def _check_the_log_first(guide: Guide, host: str, bootstrap: str) -> None:
    """Five events: the key pinned, a first checkpoint verified and kept, one event of
    rod.results.v1 proved in it; a wrong event or another key refused."""
    pinned = guide.sh("log-key", HOST=host).stdout.strip()
    assert pinned == _log_signer(guide).verifier.text()
    assert (guide.workdir / "rodchain-log.key").read_text().strip() == pinned
    hashes = _event_hashes(bootstrap, 5)
    wait_for(lambda: _served_size(host) == 5, 30, "a checkpoint of the five events")

    checked = guide.python("log-check", HOST=host, POSITION="2", EVENT_HASH=hashes[1].hex())
    (first, signed), (second, included), (third, _) = log_lines(checked.stdout)
    assert (first, second, third) == (0, 1, 3)
    assert (signed["origin"], signed["size"], included) == (ORIGIN, "5", {"position": "2", "size": "5"})
    # the checkpoint's root is the root of the `hash` fields read from rod.results.v1
    assert base64.b64decode(signed["root"]) == rfc.mth(hashes[:5])
    kept = guide.workdir / "rodchain-checkpoint.txt"
    note = kept.read_text()
    assert note == httpx.get(f"{host}/v1/log/checkpoint").text and note.startswith(f"{ORIGIN}\n5\n")

    # every checkpoint is on rod.checkpoints.v1, this one too (a repeat has the same tree_size)
    codec = Codec()

    def published() -> dict[int, dict]:
        records = read_topic(bootstrap, f"{PREFIX}rod.checkpoints.v1", 1, timeout=5)
        return {c["tree_size"]: c for c in (codec.decode(r.value)[1] for r in records)}

    on_topic = wait_for(lambda: (p := published()) and 5 in p and p, 30, "the checkpoint on the topic")
    assert (on_topic[5]["note"], on_topic[5]["root_hash"]) == (note, rfc.mth(hashes[:5]))

    (guide.workdir / "other.key").write_text(Signer.generate(ORIGIN).verifier.text())
    _refused(guide, host, kept, "the checkpoint has no valid signature by the pinned key",
             KEY_FILE="other.key")
    _refused(guide, host, kept, "the event at position 2 is not in the log of 5 events", POSITION="2",
             EVENT_HASH=hashes[2].hex())


def _check_the_log_again(guide: Guide, host: str, bootstrap: str, newest_hash: str) -> None:
    """Six events: the newest proved in the log, and the log of six consistent with the kept one
    of five, as the guide's example output shows; a forked or a longer kept checkpoint refused."""
    hashes = _event_hashes(bootstrap, 6)
    assert hashes[5].hex() == newest_hash  # the re-registration, as the register answered it
    wait_for(lambda: _served_size(host) == 6, 30, "a checkpoint of the six events")
    kept = guide.workdir / "rodchain-checkpoint.txt"
    forked, longer = guide.workdir / "forked.txt", guide.workdir / "longer.txt"
    signer = _log_signer(guide)
    # what a register that rewrote its fifth event signed earlier, and a checkpoint of a longer log
    forked.write_text(sign_checkpoint(Checkpoint(ORIGIN, 5, rfc.mth([*hashes[:4], hashes[5]])), signer))
    longer.write_text(sign_checkpoint(Checkpoint(ORIGIN, 7, rfc.mth([*hashes, hashes[0]])), signer))

    checked = guide.python("log-check", HOST=host, POSITION="6", EVENT_HASH=hashes[5].hex())
    lines, example = log_lines(checked.stdout), log_lines(guide.output("log-check-output"))
    assert [kind for kind, _ in lines] == [kind for kind, _ in example] == [0, 1, 2]
    for (_, real), (_, shown) in zip(lines, example, strict=True):
        assert {**real, "root": ""} == {**shown, "root": ""}  # the same sizes and position as the guide
    assert base64.b64decode(lines[0][1]["root"]) == rfc.mth(hashes)
    assert kept.read_text() == httpx.get(f"{host}/v1/log/checkpoint").text

    _refused(guide, host, forked, "FORK: the log of 6 events does not extend the log of 5 you kept")
    _refused(guide, host, longer, "the log shrank from 7 to 6 events")
