"""The hash chain over the whole event store, in position order.

hash(event) = SHA-256(prev_hash || canonical bytes), where the canonical bytes are the
event's single-object encoding with its writer schema and `hash` set to empty bytes.
The first event's prev_hash is 32 zero bytes. Any reader holding all events can check it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from services.kernel.codec import Codec

GENESIS = bytes(32)


def link(prev_hash: bytes, canonical: bytes) -> bytes:
    """The hash of an event whose canonical bytes are `canonical`."""
    return hashlib.sha256(prev_hash + canonical).digest()


def seal(codec: Codec, name: str, record: dict[str, Any], prev_hash: bytes) -> tuple[bytes, bytes]:
    """Encode `record` as the event after `prev_hash`; returns (message bytes, hash).

    `hash` is the last field of every chained schema (the codec checks), and empty bytes
    encode as the single byte 0x00: so the sealed message is the canonical bytes with that
    byte replaced by the 32-byte value (length 32 zigzag-encodes as 0x40). One encode, not two.
    """
    record["prev_hash"] = prev_hash
    record["hash"] = b""
    canonical = codec.encode(name, record)
    digest = link(prev_hash, canonical)
    record["hash"] = digest
    return canonical[:-1] + b"\x40" + digest, digest


def recompute(codec: Codec, data: bytes) -> tuple[dict[str, Any], bytes]:
    """Decode a stored message as written and recompute its hash: (record, recomputed hash)."""
    writer = codec.writer_schema(data)
    _name, record = codec.decode(data, as_written=True)
    canonical = codec.encode_with(writer, {**record, "hash": b""})
    return record, link(record["prev_hash"], canonical)
