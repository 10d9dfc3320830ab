"""Producing what the distributor owns: feed messages, delivery receipts and dead letters.

Every send is collected and checked after one flush; only then does the caller mark the
rows published. The offsets written are remembered per topic partition, so that on start
the distributor can tell a feed that lost data (missing or shorter than recorded) and
publish it again from the ledger: the same bytes, the same delivery_ids.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.deadletters import DeadLetter
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("distributor")

RESULTS_TOPIC = "rod.results.v1"
DELIVERIES_TOPIC = "rod.deliveries.v1"
DEADLETTER_TOPIC = "rod.deadletter.v1"
SERVICE = "distributor"


@dataclass
class Outgoing:
    """One feed message to send, and whether its receipt goes out with it."""

    subscription: str
    topic: str  # base name of the feed
    event_id: str
    result_id: str
    institution: str
    kind: str
    delivery_id: str
    payload: bytes
    delivered_at: datetime
    receipt: bool = True


def digest(value: bytes | None) -> str:
    """A short fingerprint of a record's bytes (does the topic still hold what we read?)."""
    return hashlib.blake2b(value or b"", digest_size=16).hexdigest()


class Publisher:
    """One producer for feeds, receipts and dead letters; send, then flush and check."""

    def __init__(self, settings: Settings, bootstrap: str, codec: Codec) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.codec = codec
        self.producer = kafka.producer(
            bootstrap, request_timeout_ms=15_000, delivery_timeout_ms=30_000, max_block_ms=10_000
        )
        self._sent: list[tuple[str, Any]] = []
        self._partitions: dict[str, int] = {}
        self._hashes: dict[bytes, int] = {}  # a result's messages go to several topics: hash once

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failure must not raise again
            self.producer.close(timeout=5)

    def _partition(self, topic: str, key: bytes) -> int:
        """Kafka's default partitioner (murmur2 of the key), computed once per key and topic size."""
        cluster = self.settings.topic(topic)
        count = self._partitions.get(cluster)
        if count is None:
            found = self.producer.partitions_for(cluster)
            count = self._partitions[cluster] = len(found)
        hashed = self._hashes.get(key)
        if hashed is None:
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed % count

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        partition = self._partition(topic, key) if key is not None else None
        future = self.producer.send(
            self.settings.topic(topic), key=key, value=value, partition=partition, headers=headers
        )
        self._sent.append((topic, future))

    def send_message(self, out: Outgoing) -> None:
        """The feed message, then (unless it is a re-send) its receipt on rod.deliveries.v1."""
        key = out.result_id.encode()
        self.send(out.topic, key, out.payload)
        if out.receipt:
            self.send(DELIVERIES_TOPIC, key, self.receipt(out))

    def receipt(self, out: Outgoing, acknowledged_at: datetime | None = None) -> bytes:
        """The DELIVERY or WITHDRAWAL receipt of `out`, or its ACKNOWLEDGED one when confirmed then."""
        return self.codec.encode(
            "DeliveryReceipt",
            {
                "delivery_id": out.delivery_id,
                "subscription": out.subscription,
                "kind": "ACKNOWLEDGED" if acknowledged_at else out.kind,
                "event_id": out.event_id,
                "result_id": out.result_id,
                "institution": out.institution,
                "delivered_at": out.delivered_at,
                "acknowledged_at": acknowledged_at,
                "message_kind": out.kind if acknowledged_at else None,
            },
        )

    def send_dead_letter(self, letter: DeadLetter) -> None:
        self.send(
            DEADLETTER_TOPIC,
            letter.key,
            letter.value or b"",
            headers=letter.headers(self.settings.topic(letter.topic), SERVICE),
        )

    def flush(self) -> dict[tuple[str, int], int]:
        """Wait for every send; raise the first failure; the highest offset per (topic, partition)."""
        sent, self._sent = self._sent, []
        self._hashes.clear()
        self.producer.flush()
        highest: dict[tuple[str, int], int] = {}
        for topic, future in sent:
            metadata = future.get(timeout=0)
            key = (topic, metadata.partition)
            if metadata.offset > highest.get(key, -1):
                highest[key] = metadata.offset
        return highest


def ensure_topic(settings: Settings, bootstrap: str, name: str) -> bool:
    """Create a topic when missing (a new feed like the shipped ones); True when it was missing."""
    if name in kafka.TOPICS:
        return bool(kafka.ensure_topics(settings, bootstrap, [name]))
    client = kafka.admin(bootstrap)
    try:
        if settings.topic(name) in set(client.list_topics()):
            return False
        spec = kafka.TOPICS["rod.feed.extract.v1"]
        client.create_topics([NewTopic(settings.topic(name), spec.partitions, 1, topic_configs=spec.configs)])
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        client.close()
