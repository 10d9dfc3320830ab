"""The Avro single-object codec and the hash chain, without a broker."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from services.kernel import chain
from services.kernel.codec import SCHEMA_DIR, Codec, DecodeError, schema_fingerprint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avro"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.mark.parametrize(
    ("schema", "value"),
    [  # Apache Avro share/test/data/schema-tests.txt: the CRC-64-AVRO value as a signed long
        ("null", 7195948357588979594),
        ("int", 8247732601305521295),
        ("string", -8142146995180207161),
    ],
)
def test_fingerprint_is_the_reference_vector_little_endian(schema: str, value: int) -> None:
    assert schema_fingerprint(schema) == value.to_bytes(8, "little", signed=True)


def test_the_null_schema_on_the_wire_reads_as_the_specification_writes_it() -> None:
    assert schema_fingerprint("null") == bytes.fromhex("8a8f25cce724dd63")


def test_first_version_samples_still_decode_and_link(codec: Codec) -> None:
    registered = (FIXTURES / "ResultRegistered.v1.bin").read_bytes()
    deleted = (FIXTURES / "ResultDeleted.v1.bin").read_bytes()
    name, reg = codec.decode(registered)
    assert name == "ResultRegistered"
    assert (reg["position"], reg["programme_code"], reg["big_profession"]) == (1, "56551", "arts")
    assert reg["diploma_date"] == dt.date(2026, 7, 1)
    assert reg["prev_hash"] == chain.GENESIS
    name, dele = codec.decode(deleted)
    assert (name, dele["reason"], dele["registered_event_id"]) == (
        "ResultDeleted", "ADMINISTRATIVE_ERROR", reg["event_id"],
    )
    assert dele["prev_hash"] == reg["hash"]
    for data in (registered, deleted):
        record, recomputed = chain.recompute(codec, data)
        assert recomputed == record["hash"]


def test_an_old_version_resolves_to_the_newest_schema(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    v2 = json.loads((SCHEMA_DIR / "ResultDeleted.v1.avsc").read_text())
    v2["fields"].insert(-2, {"name": "note", "type": "string", "default": "none"})
    (tmp_path / "ResultDeleted.v2.avsc").write_text(json.dumps(v2))
    newer = Codec(tmp_path)
    old_bytes = (FIXTURES / "ResultDeleted.v1.bin").read_bytes()
    _, record = newer.decode(old_bytes)
    assert record["note"] == "none"
    # the chain is checked against the schema the event was written with
    record, recomputed = chain.recompute(newer, old_bytes)
    assert recomputed == record["hash"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not avro at all", "NOT_SINGLE_OBJECT"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "SCHEMA_UNKNOWN"),
    ],
)
def test_foreign_bytes_are_refused_with_a_code(codec: Codec, data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as error:
        codec.decode(data)
    assert error.value.code == code


def test_a_truncated_body_is_refused(codec: Codec) -> None:
    data = (FIXTURES / "ResultRegistered.v1.bin").read_bytes()
    with pytest.raises(DecodeError) as error:
        codec.decode(data[:40])
    assert error.value.code == "BODY_UNREADABLE"


def test_no_schema_uses_a_named_type_twice() -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        names: list[str] = []

        def walk(node: object, names: list[str] = names) -> None:
            if isinstance(node, dict):
                if node.get("type") in ("record", "enum", "fixed"):
                    names.append(node["name"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(path.read_text()))
        assert len(names) == len(set(names)), path.name


def test_a_changed_byte_changes_the_hash(codec: Codec) -> None:
    data = bytearray((FIXTURES / "ResultRegistered.v1.bin").read_bytes())
    index = data.index(b"B Geneeskunde")
    data[index] = ord("C")
    record, recomputed = chain.recompute(codec, bytes(data))
    assert recomputed != record["hash"]


def test_the_hash_from_the_message_bytes_equals_the_hash_of_the_message_encoded_again(codec: Codec) -> None:
    """The short way (the message minus its 33-byte `hash` trailer) against the long way."""
    for name in ("ResultRegistered.v1.bin", "ResultDeleted.v1.bin"):
        data = (FIXTURES / name).read_bytes()
        _, record = codec.decode(data, as_written=True)
        long_way = chain.link(record["prev_hash"], chain.reencoded(codec, data, record))
        assert chain.recomputed_hash(codec, data, record) == long_way == record["hash"]
        altered = bytearray(data)
        altered[20] ^= 1
        assert chain.recomputed_hash(codec, bytes(altered), codec.decode(bytes(altered))[1]) != record["hash"]
