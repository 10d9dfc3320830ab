"""Avro single-object encoding over the schemas in `schemas/avro/`.

A message is `C3 01` + the writer schema's CRC-64-AVRO fingerprint (8 bytes, little endian)
+ the Avro binary body (Avro specification, "Single-object encoding"). Any reader finds the
writer schema by that fingerprint; this codec resolves it to the newest version of the
same record (`Name.vN.avsc`, highest N), so old messages keep decoding after a
backward-compatible change.

ROD_SCHEMA_PATH (directories, separated by os.pathsep) adds schema files to those shipped in
`schemas/avro/`: a newer schema version can be deployed to a running installation without a
new release, e.g. to read an event some producer already writes with it. Until then such an
event is a dead letter (SCHEMA_UNKNOWN), replayed by an operator once the file is in place.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "avro"
MARKER = b"\xc3\x01"
HEADER_SIZE = 10
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*)\.v(?P<version>\d+)\.avsc$")


class DecodeError(ValueError):
    """The bytes are not a message this codec can read (stable `code` for dead letters)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class SchemaVersion:
    """One stored schema file: record name, version, parsed schema and its fingerprint."""

    name: str
    version: int
    parsed: Any
    fingerprint: bytes


def schema_fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 little-endian bytes on the wire."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema, named_schemas={}))
    # fastavro's hex already spells the little-endian bytes (the "null" vector: 8a8f25cce724dd63)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _load(path: Path, name: str, version: int) -> SchemaVersion:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(raw, named_schemas={})
    return SchemaVersion(name, version, parsed, schema_fingerprint(raw))


class Codec:
    """Encode with the newest schema of a record; decode any stored version."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR, extra_dirs: list[Path] | None = None) -> None:
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        self.current: dict[str, SchemaVersion] = {}
        if extra_dirs is None:
            extra_dirs = [Path(d) for d in os.environ.get("ROD_SCHEMA_PATH", "").split(os.pathsep) if d]
        paths = [p for d in [schema_dir, *extra_dirs] for p in sorted(d.glob("*.avsc"))]
        for path in paths:
            match = _FILE_NAME.match(path.name)
            if not match:
                raise ValueError(f"schema file name must be Name.vN.avsc: {path.name}")
            schema = _load(path, match["name"], int(match["version"]))
            fields = [f["name"] for f in schema.parsed.get("fields", [])]
            if "hash" in fields and fields[-1] != "hash":
                raise ValueError(f"{path.name}: a chained event keeps `hash` as its last field")
            self.by_fingerprint[schema.fingerprint] = schema
            newest = self.current.get(schema.name)
            if newest is None or schema.version > newest.version:
                self.current[schema.name] = schema

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Single-object encoding of `record` with the newest schema of `name`."""
        return self.encode_with(self.current[name], record)

    def encode_with(self, schema: SchemaVersion, record: dict[str, Any]) -> bytes:
        """Single-object encoding of `record` with a given (possibly older) schema version."""
        out = io.BytesIO()
        out.write(MARKER)
        out.write(schema.fingerprint)
        fastavro.schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def writer_schema(self, data: bytes) -> SchemaVersion:
        """The schema a message was written with; DecodeError if it is not ours."""
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise DecodeError("NOT_SINGLE_OBJECT", "no Avro single-object marker")
        schema = self.by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if schema is None:
            raise DecodeError("SCHEMA_UNKNOWN", f"fingerprint {data[2:HEADER_SIZE].hex()}")
        return schema

    def decode(self, data: bytes, *, as_written: bool = False) -> tuple[str, dict[str, Any]]:
        """(record name, record) resolved to the newest schema, or as written when asked."""
        writer = self.writer_schema(data)
        reader = writer if as_written else self.current[writer.name]
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[HEADER_SIZE:]), writer.parsed, reader.parsed
            )
        except Exception as exc:  # fastavro raises several types for truncated/garbled bodies
            raise DecodeError("BODY_UNREADABLE", type(exc).__name__) from None
        return writer.name, record
