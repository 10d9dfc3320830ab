"""A second reader of rodchain's wire format that shares no code with services.kernel.codec.

It reads messages as a downstream organisation would, from the Avro specification and the
schema files alone: `C3 01`, then the CRC-64-AVRO fingerprint of the writer schema's
Parsing Canonical Form as 8 bytes little-endian, then the Avro binary body.

- The Parsing Canonical Form and CRC-64-AVRO are written out here from the specification
  ("Parsing Canonical Form for Schemas", "Schema Fingerprints"); tests/unit/test_wire_format.py
  checks them against Apache Avro's shared test vectors, fastavro's canonical form and
  Apache's Python `avro` package.
- Bodies are decoded by Apache's Python `avro` package (avro.io.DatumReader), not fastavro,
  which the services write with; every byte of the body must be used.

Why not Apache's `Schema.fingerprint()` alone: `avro` 1.12 keeps a primitive with a logical
type as an object in its canonical form (`{"type":"long"}` for a timestamp-millis), where the
specification, Java's SchemaNormalization and fastavro write `"long"`; for our schemas (all
have timestamps) its fingerprints match no other library's. The test shows that difference.

`scan_broker` reads every rodchain topic on a broker with this reader: the integration suite
runs it when the session's broker stops (tests/conftest.py). Importing this module imports
nothing from `services`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import avro.io
import avro.schema

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "avro"
MARKER = b"\xc3\x01"
HEADER = 10

# --- CRC-64-AVRO (Avro specification, "Schema Fingerprints") ------------------------------

EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint of `data`, as an unsigned integer."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


# --- Parsing Canonical Form (Avro specification) ------------------------------------------

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_COMPLEX = ("record", "error", "enum", "fixed", "array", "map")
_ORDER = ("name", "type", "fields", "symbols", "items", "values", "size")  # [ORDER]; the rest [STRIP]ped


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _canonical(node: Any, namespace: str | None, defined: set[str]) -> Any:
    if isinstance(node, str):  # a primitive or a reference to a named type
        if node in PRIMITIVES:
            return node
        full = _fullname(node, namespace)  # [FULLNAMES]; else a name in the null namespace
        return full if full in defined else node
    if isinstance(node, list):  # a union
        return [_canonical(branch, namespace, defined) for branch in node]
    kind = node["type"]
    if not isinstance(kind, str) or (kind not in PRIMITIVES and kind not in _COMPLEX):
        # {"type": <a schema or a name>} is that schema
        return _canonical(kind, namespace, defined)
    if kind in PRIMITIVES:  # [PRIMITIVES]: {"type":"long","logicalType":...} is "long"
        return kind
    out: dict[str, Any] = {}
    if kind in ("record", "error", "enum", "fixed"):
        name = node["name"]
        if "." not in name and "namespace" in node:
            namespace = node["namespace"] or None
        full = _fullname(name, namespace)
        if "." in name:
            namespace = name.rsplit(".", 1)[0]
        if full in defined:  # a second use of a named type is its name (Java's form)
            return full
        defined.add(full)
        out["name"] = full
        out["type"] = "record" if kind == "error" else kind
        if kind in ("record", "error"):
            out["fields"] = [
                {"name": f["name"], "type": _canonical(f["type"], namespace, defined)} for f in node["fields"]
            ]
        elif kind == "enum":
            out["symbols"] = list(node["symbols"])
        else:
            out["size"] = int(node["size"])
    elif kind == "array":
        out = {"type": "array", "items": _canonical(node["items"], namespace, defined)}
    else:
        out = {"type": "map", "values": _canonical(node["values"], namespace, defined)}
    return {key: out[key] for key in _ORDER if key in out}


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of a schema given as parsed JSON (json.loads of the text)."""
    return json.dumps(_canonical(schema, None, set()), separators=(",", ":"), ensure_ascii=False)


def fingerprint(schema: Any) -> bytes:
    """The 8 bytes a single-object message carries for `schema`: CRC-64-AVRO, little-endian."""
    return crc64_avro(canonical_form(schema).encode("utf-8")).to_bytes(8, "little")


# --- the reader ---------------------------------------------------------------------------


class WireError(ValueError):
    """The bytes are not a message this reader can decode; the text says why."""


@dataclass(frozen=True)
class Known:
    file: str  # e.g. ResultRegistered.v1.avsc
    name: str  # the record's short name, e.g. ResultRegistered
    reader: avro.io.DatumReader


class Reader:
    """Decodes single-object messages written with any schema file in `schema_dir`."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.by_fingerprint: dict[bytes, Known] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            text = path.read_text()
            parsed = avro.schema.parse(text)
            known = Known(path.name, parsed.name, avro.io.DatumReader(parsed))
            fp = fingerprint(json.loads(text))
            if fp in self.by_fingerprint:  # same canonical form: the same schema to a reader
                continue
            self.by_fingerprint[fp] = known

    def writer(self, data: bytes) -> Known:
        """The schema file `data` was written with; WireError when there is none."""
        if len(data) < HEADER:
            raise WireError(f"{len(data)} bytes: shorter than the 10-byte single-object header")
        if data[:2] != MARKER:
            raise WireError(f"no C3 01 single-object marker (starts {data[:2].hex(' ')})")
        fp = bytes(data[2:HEADER])
        known = self.by_fingerprint.get(fp)
        if known is None:
            reversed_match = self.by_fingerprint.get(fp[::-1])
            if reversed_match is not None:
                raise WireError(
                    f"fingerprint {fp.hex(' ')} is {reversed_match.file}'s written big-endian: "
                    "the Avro specification writes CRC-64-AVRO little-endian"
                )
            raise WireError(f"fingerprint {fp.hex(' ')} is no schema in {SCHEMA_DIR.name}/")
        return known

    def read(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(record name, record) of one message; WireError when it does not decode."""
        known = self.writer(data)
        body = io.BytesIO(data[HEADER:])
        try:
            record = known.reader.read(avro.io.BinaryDecoder(body))
        except Exception as exc:  # Apache's reader raises many types on a bad body
            raise WireError(f"the body does not decode with {known.file}: {type(exc).__name__}") from None
        left = len(data) - HEADER - body.tell()
        if left:
            raise WireError(f"{left} bytes after the body written with {known.file}")
        return known.name, record


# --- every rodchain topic on a broker -----------------------------------------------------

# base name (after a test's ROD_TOPIC_PREFIX) -> the records it may carry (None: any)
TOPIC_RECORDS: dict[str, frozenset[str] | None] = {
    "rod.results.v1": frozenset({"ResultRegistered", "ResultDeleted"}),
    "rod.feed.cibg-big.v1": frozenset({"CibgBigFeedMessage"}),
    "rod.feed.mijnoverheid.v1": frozenset({"MijnOverheidFeedMessage"}),
    "rod.feed.extract.v1": frozenset({"ExtractFeedMessage"}),
    "rod.deliveries.v1": frozenset({"DeliveryReceipt"}),
    "rod.extracts.v1": frozenset({"ExtractIssued"}),
    "rod.reports.v1": frozenset({"ReportPublished"}),
    "rod.operations.v1": frozenset({"OperatorAction"}),
    "rod.checkpoints.v1": frozenset({"Checkpoint"}),
    "rod.deadletter.v1": None,
}
_FEED = re.compile(r"^rod\.feed\.[A-Za-z0-9_-]+\.v1$")  # a feed a subscription file adds
_TOPIC = re.compile(r"^(?P<prefix>.*?)(?P<base>rod\.[A-Za-z0-9_.-]+\.v\d+)$")
DEADLETTER = "rod.deadletter.v1"
ORIGIN_HEADERS = ("__connect.errors.topic", "__connect.errors.partition", "__connect.errors.offset")


def base_name(topic: str) -> str | None:
    """The rodchain topic `topic` is (without its prefix), or None for any other topic."""
    match = _TOPIC.match(topic)
    if not match:
        return None
    base = match["base"]
    return base if base in TOPIC_RECORDS or _FEED.match(base) else None


@dataclass
class Scan:
    """What scan_broker read: counts and the messages that failed."""

    topics: int = 0
    decoded: int = 0
    by_record: Counter[str] = field(default_factory=Counter)
    excused: int = 0  # refused by the independent reader and dead-lettered by the system too
    deadletters: int = 0
    deadletters_decoded: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # (base topic, BLAKE2b-128 of the bytes) -> (record name, problem): the same bytes on the same
    # topic decode the same, so a message sent again (a relay or a feed after a kill, a replay)
    # is decoded once and counted each time
    verdicts: dict[tuple[str, bytes], tuple[str, str | None]] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        return (
            f"wire format: {self.decoded} messages on {self.topics} rodchain topics decoded by the "
            f"independent reader ({', '.join(f'{n} {r}' for r, n in sorted(self.by_record.items()))}); "
            f"{len(self.verdicts)} distinct values decoded, once each; "
            f"{self.deadletters} dead letters ({self.deadletters_decoded} of them decodable), "
            f"{self.excused} refused that the system dead-lettered too (test poison); "
            f"{len(self.problems)} problems; {self.seconds:.1f} s"
        )


def scan_broker(bootstrap: str, reader: Reader | None = None, timeout: float = 120.0) -> Scan:
    """Read every message of every rodchain topic on the broker from the beginning.

    Every value on a topic other than rod.deadletter.v1 must decode and be a record that topic
    carries, unless the system refused it too: a dead letter on the same prefix names it
    (topic, partition, offset) as its origin (tests put deliberate poison on input topics).
    Dead letters are the original bytes of what could not be processed, so they may be
    undecodable on purpose: they are decoded where they can be, never required to.
    """
    from kafka import KafkaConsumer, TopicPartition

    reader = reader or Reader()
    scan = Scan()
    started = time.monotonic()
    deadline = started + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        request_timeout_ms=30_000,
    )
    failed: list[tuple[str, int, int, str]] = []
    origins: set[tuple[str, int, int]] = set()
    try:
        topics = sorted(t for t in consumer.topics() if base_name(t))
        scan.topics = len(topics)
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not partitions:
            return scan
        begins = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        # The local broker answers a fetch over a thousand partitions with a few of them at a
        # time (a session leaves ~140 partitions per 10 tests): read a hundred at a time.
        for first in range(0, len(partitions), _CHUNK):
            chunk = partitions[first:first + _CHUNK]
            consumer.assign(chunk)
            for tp in chunk:
                consumer.seek(tp, begins[tp])
            quiet = 0
            while quiet < 2:  # the reported end can fall short of the true end: read on a little
                batches = consumer.poll(timeout_ms=50, max_records=100_000)
                for tp, records in batches.items():
                    for record in records:
                        _take(reader, tp, record, scan, failed, origins)
                reached = all(consumer.position(tp) >= ends[tp] for tp in chunk)
                quiet = quiet + 1 if reached and not batches else 0
                if time.monotonic() > deadline:
                    behind = [f"{tp.topic}[{tp.partition}]" for tp in chunk
                              if consumer.position(tp) < ends[tp]]
                    scan.problems.append(
                        f"not read to the end in {timeout:.0f} s: {', '.join(behind[:10]) or 'the rest'}"
                    )
                    return scan
    finally:
        consumer.close()
        for topic, part, offset, problem in failed:
            if (topic, part, offset) in origins:
                scan.excused += 1
            else:
                scan.problems.append(f"{topic} partition {part} offset {offset}: {problem}")
        scan.seconds = time.monotonic() - started
    return scan


_CHUNK = 100


def _take(reader: Reader, tp: Any, record: Any, scan: Scan, failed: list, origins: set) -> None:
    base = base_name(tp.topic) or ""
    if base != DEADLETTER:
        problem = _check(reader, base, record.value, scan)
        if problem:
            failed.append((tp.topic, tp.partition, record.offset, problem))
        return
    scan.deadletters += 1
    headers = dict(record.headers or [])
    if all(h in headers for h in ORIGIN_HEADERS):
        topic, part, offset = (headers[h].decode() for h in ORIGIN_HEADERS)
        origins.add((topic, int(part), int(offset)))
    try:
        reader.read(record.value or b"")
        scan.deadletters_decoded += 1
    except WireError:
        pass


def _check(reader: Reader, base: str, value: bytes | None, scan: Scan) -> str | None:
    if value is None:
        return "no value (a tombstone)"
    key = (base, hashlib.blake2b(value, digest_size=16).digest())
    verdict = scan.verdicts.get(key)
    if verdict is None:
        verdict = scan.verdicts[key] = _verdict(reader, base, value)
    name, problem = verdict
    if problem:
        return problem
    scan.decoded += 1
    scan.by_record[name] += 1
    return None


def _verdict(reader: Reader, base: str, value: bytes) -> tuple[str, str | None]:
    """(record name, None) for a message `base` may carry, else (name or "", the problem)."""
    try:
        name, _record = reader.read(value)
    except WireError as error:
        return "", str(error)
    allowed = TOPIC_RECORDS.get(base)
    if allowed is not None and name not in allowed:
        return name, f"a {name}, which {base} does not carry"
    return name, None