"""The wire format as a downstream organisation reads it, without services.kernel.codec.

tests/independent_avro.py is a second reader written from the Avro specification: its own
Parsing Canonical Form and CRC-64-AVRO, checked here against Apache Avro's shared test
vectors (share/test/data/schema-tests.txt), against fastavro's canonical form and against
Apache's Python `avro` package; bodies decoded by Apache's `avro`. Every stored sample
under tests/fixtures/avro must decode with it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from tests.independent_avro import (
    SCHEMA_DIR,
    Reader,
    Scan,
    WireError,
    _check,
    base_name,
    canonical_form,
    crc64_avro,
    fingerprint,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "avro"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"), key=lambda p: p.name)
FIXTURE_FILES = sorted(FIXTURES.glob("*.bin"), key=lambda p: p.name)

# Apache Avro share/test/data/schema-tests.txt: input, canonical form, CRC-64-AVRO as a signed long
VECTORS = [
    ('"null"', '"null"', 7195948357588979594),
    ('"boolean"', '"boolean"', -6970731678124411036),
    ('"int"', '"int"', 8247732601305521295),
    ('{"type":"long"}', '"long"', -3434872931120570953),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    ('{"fields":[], "type":"record", "name":"foo"}', '{"name":"foo","type":"record","fields":[]}',
     -4824392279771201922),
    ('{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
     '{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ('{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
     '{"name":"a.b.foo","type":"record","fields":[]}', -4616218487480524110),
    ('{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}',
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    ('{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},'
     ' {"order":"descending","name":"f2","doc":"Hello","type":"int"}], "type":"record", "name":"foo"}',
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
     -4860222112080293046),
    ('{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
     '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ('{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
     '{"name":"x.y.z.foo","type":"fixed","size":32}', -3064184465700546786),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}', -589620603366471059),
    ('{ "values":"string", "type":"map"}', '{"type":"map","values":"string"}', -8732877298790414990),
    ('{"name":"PigValue","type":"record",'
     ' "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
     '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
     -1759257747318642341),
]


def _fastavro_canonical(schema: Any) -> str:
    # one vector has a default of the wrong type ("true" for a boolean), which fastavro refuses
    parsed = fastavro.parse_schema(schema, named_schemas={}, _ignore_default_error=True)
    return to_parsing_canonical_form(parsed)


@pytest.mark.parametrize(("text", "canonical", "value"), VECTORS, ids=[v[1][:40] for v in VECTORS])
def test_the_reference_vectors(text: str, canonical: str, value: int) -> None:
    wire = value.to_bytes(8, "little", signed=True)
    assert canonical_form(json.loads(text)) == canonical
    assert crc64_avro(canonical.encode()) == value & 0xFFFF_FFFF_FFFF_FFFF
    assert fingerprint(json.loads(text)) == wire
    assert avro.schema.parse(text).fingerprint("CRC-64-AVRO") == wire  # Apache's own routine
    assert _fastavro_canonical(json.loads(text)) == canonical


def test_the_null_schema_on_the_wire() -> None:
    assert fingerprint("null") == bytes.fromhex("8a8f25cce724dd63")  # interfaces.md, as the spec writes it


def _collapse_primitive_objects(node: Any) -> Any:
    """Apache's Python canonical form with {"type":"long"} written as "long", as the spec says."""
    if isinstance(node, list):
        return [_collapse_primitive_objects(n) for n in node]
    if isinstance(node, dict):
        if set(node) == {"type"} and isinstance(node["type"], str):
            return node["type"]
        return {k: _collapse_primitive_objects(v) for k, v in node.items()}
    return node


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=[p.name for p in SCHEMA_FILES])
def test_every_schema_file_has_one_fingerprint_in_every_implementation(path: Path) -> None:
    raw = json.loads(path.read_text())
    ours = canonical_form(raw)
    assert ours == _fastavro_canonical(raw)
    wire = crc64_avro(ours.encode()).to_bytes(8, "little")
    assert fingerprint(raw) == wire
    # Apache's CRC-64-AVRO over the same canonical form (it is its own canonical form)
    assert avro.schema.parse(ours).fingerprint("CRC-64-AVRO") == wire
    # Apache's `avro` (1.12) writes a logical-typed primitive as {"type":"long"} in its
    # canonical form, against the spec's [PRIMITIVES] rule (Java and fastavro write "long"):
    # that is its only difference, and its fingerprint() of our files is therefore not the
    # wire's. When Apache fixes it, the first branch holds and nothing here needs changing.
    apache = avro.schema.parse(path.read_text()).canonical_form
    if apache != ours:
        assert json.dumps(_collapse_primitive_objects(json.loads(apache)), separators=(",", ":")) == ours


def test_every_schema_file_has_its_own_fingerprint() -> None:
    fingerprints = {fingerprint(json.loads(p.read_text())): p.name for p in SCHEMA_FILES}
    assert len(fingerprints) == len(SCHEMA_FILES)


def test_every_shipped_schema_has_a_stored_sample_of_its_first_version() -> None:
    names = {re.sub(r"\.v\d+\.avsc$", "", p.name) for p in SCHEMA_FILES}
    assert {f"{n}.v1.bin" for n in names} <= {p.name for p in FIXTURE_FILES}


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def test_every_stored_sample_decodes_with_the_independent_reader(reader: Reader, path: Path) -> None:
    data = path.read_bytes()
    name, version = re.fullmatch(r"(\w+)\.v(\d+)\.bin", path.name).groups()  # type: ignore[union-attr]
    schema = json.loads((SCHEMA_DIR / f"{name}.v{version}.avsc").read_text())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(schema)  # the version the file name says, little-endian
    record_name, record = reader.read(data)
    assert record_name == name
    assert set(record) == {f["name"] for f in schema["fields"]}


def test_the_chained_samples_link(reader: Reader) -> None:
    _, registered = reader.read((FIXTURES / "ResultRegistered.v1.bin").read_bytes())
    _, deleted = reader.read((FIXTURES / "ResultDeleted.v1.bin").read_bytes())
    assert registered["prev_hash"] == bytes(32)
    assert deleted["prev_hash"] == registered["hash"] and len(registered["hash"]) == 32
    assert deleted["registered_event_id"] == registered["event_id"]


def test_a_big_endian_fingerprint_is_refused_and_named(reader: Reader) -> None:
    data = (FIXTURES / "ResultRegistered.v1.bin").read_bytes()
    big_endian = data[:2] + data[2:10][::-1] + data[10:]  # what wave 1 wrote
    with pytest.raises(WireError, match=r"ResultRegistered\.v1\.avsc's written big-endian"):
        reader.read(big_endian)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"bsn 111222333 is not Avro", "no C3 01 single-object marker"),
        (b"\xc3\x01\x00", "shorter than the 10-byte"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "is no schema in avro/"),
    ],
)
def test_foreign_bytes_are_refused(reader: Reader, data: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        reader.read(data)


def test_a_short_or_a_long_body_is_refused(reader: Reader) -> None:
    data = (FIXTURES / "OperatorAction.v1.bin").read_bytes()
    with pytest.raises(WireError, match="does not decode with OperatorAction.v1.avsc"):
        reader.read(data[:30])
    with pytest.raises(WireError, match="1 bytes after the body"):
        reader.read(data + b"\x00")


@pytest.mark.parametrize(
    ("topic", "base"),
    [
        ("t0123456789.rod.results.v1", "rod.results.v1"),
        ("rod.deadletter.v1", "rod.deadletter.v1"),
        ("tabc.rod.feed.cibg-big.v1", "rod.feed.cibg-big.v1"),
        ("tabc.rod.feed.uwv.v1", "rod.feed.uwv.v1"),
        ("tabc.rod.checkpoints.v1", "rod.checkpoints.v1"),
        ("__consumer_offsets", None),
        ("tabc.other.v1", None),
        ("tabc.rod.unknown.v1", None),
    ],
)
def test_rodchain_topics_are_known_by_their_base_name(topic: str, base: str | None) -> None:
    assert base_name(topic) == base


def test_the_reader_imports_nothing_of_the_services() -> None:
    code = "import sys, tests.independent_avro; print([m for m in sys.modules if m.startswith('services')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_fixture_script_writes_the_stored_samples_byte_for_byte() -> None:
    script = ROOT / "tests" / "fixtures" / "make_avro_fixtures.py"
    done = subprocess.run([sys.executable, str(script), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_broker_scan_decodes_a_message_sent_again_once_and_counts_it_each_time(reader: Reader) -> None:
    registered = (FIXTURES / "ResultRegistered.v1.bin").read_bytes()
    broken = registered[:-1]
    scan = Scan()
    assert [_check(reader, "rod.results.v1", registered, scan) for _ in range(3)] == [None] * 3
    assert scan.decoded == 3 and scan.by_record == {"ResultRegistered": 3}
    assert len(scan.verdicts) == 1
    # the same bytes on a topic that does not carry them, and bytes that do not decode: every time
    for _ in range(2):
        assert _check(reader, "rod.deliveries.v1", registered, scan) == (
            "a ResultRegistered, which rod.deliveries.v1 does not carry")
        assert "does not decode" in (_check(reader, "rod.results.v1", broken, scan) or "")
    assert scan.decoded == 3 and len(scan.verdicts) == 3
