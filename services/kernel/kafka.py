"""Kafka topics and clients, tuned for the local broker's quirks (architecture.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("kafka")


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}

# Base names are fixed in interfaces.md; the cluster name gets ROD_TOPIC_PREFIX.
TOPICS: dict[str, TopicSpec] = {
    "rod.results.v1": TopicSpec(6, FOREVER),
    "rod.feed.cibg-big.v1": TopicSpec(6, FOREVER),
    "rod.feed.mijnoverheid.v1": TopicSpec(6, FOREVER),
    "rod.feed.extract.v1": TopicSpec(6, FOREVER),
    "rod.deliveries.v1": TopicSpec(6, FOREVER),
    "rod.extracts.v1": TopicSpec(3, FOREVER),
    "rod.reports.v1": TopicSpec(1, FOREVER),
    "rod.deadletter.v1": TopicSpec(1, FOREVER),
    "rod.operations.v1": TopicSpec(1, FOREVER),
    "rod.checkpoints.v1": TopicSpec(1, FOREVER),
}

# A group join takes ~23 s on the local broker unless these are set; fetches wait their full
# fetch_max_wait_ms even when data is there, so keep it short.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "fetch_max_wait_ms": 10,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
}

# Order per partition matters more than anything: one request in flight, retried.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "retries": 10,
    "max_in_flight_requests_per_connection": 1,
    "linger_ms": 5,
    "batch_size": 512 * 1024,
    "max_request_size": 4 * 1024 * 1024,
}


def admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)


def producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, **{**PRODUCER_DEFAULTS, **overrides})


def consumer(bootstrap: str, **overrides: Any) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=bootstrap, **{**CONSUMER_DEFAULTS, **overrides})


def ensure_topics(settings: Settings, bootstrap: str, names: list[str] | None = None) -> list[str]:
    """Create the named rodchain topics that are missing; returns the ones created."""
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        wanted = [n for n in (names or list(TOPICS)) if settings.topic(n) not in existing]
        created = []
        for name in wanted:
            spec = TOPICS[name]
            try:
                client.create_topics(
                    [NewTopic(settings.topic(name), spec.partitions, 1, topic_configs=spec.configs)]
                )
                created.append(settings.topic(name))
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        client.close()


def probe(bootstrap: str) -> KafkaConsumer:
    """A short-lived reader outside any group that gives up soon when the broker is away."""
    return consumer(bootstrap, group_id=None, bootstrap_timeout_ms=5000)


def read_each(
    consumer: KafkaConsumer, topic: str, offsets: dict[int, int], timeout: float = 3.0
) -> dict[int, Any]:
    """The record at the given offset of each partition; a partition that does not hold it is left out.

    All partitions are read at once: a missing record costs the timeout once, not per partition.
    """
    if not offsets:
        return {}
    partitions = [TopicPartition(topic, p) for p in offsets]
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, offsets[tp.partition])
    found: dict[int, Any] = {}
    settled: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(settled) < len(offsets) and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            wanted = offsets[tp.partition]
            for record in records:
                if record.offset >= wanted:
                    settled.add(tp.partition)
                    if record.offset == wanted:
                        found[tp.partition] = record
                    consumer.pause(tp)
                    break
    return found


def _end_offsets_settled(
    consumer: KafkaConsumer, partitions: list[TopicPartition], attempts: int = 5
) -> dict[TopicPartition, int]:
    """End offsets, or {} when the broker keeps not answering for some partition: kafka-python
    drops a partition's answer (KeyError) while a new broker settles, sometimes for seconds.
    {} is safe for the caller: every partition is then checked by reading its records."""
    for attempt in range(attempts):
        try:
            return consumer.end_offsets(partitions)
        except KeyError:
            time.sleep(0.5 * (attempt + 1))
    log.warning("end_offsets_unanswered", partitions=[tp.partition for tp in partitions])
    return {}


def topic_holds(bootstrap: str, cluster_topic: str, recorded: dict[int, int]) -> bool:
    """True when every partition still holds the last offset recorded there (by whoever wrote
    it): False means the broker lost data and the writer must publish again."""
    if not recorded:
        return True
    consumer = probe(bootstrap)
    try:
        partitions = [TopicPartition(cluster_topic, p) for p in recorded]
        ends = _end_offsets_settled(consumer, partitions)
        # the local broker can report its end short by one batch: look for the records themselves
        doubtful = {
            tp.partition: recorded[tp.partition]
            for tp in partitions
            if ends.get(tp, 0) <= recorded[tp.partition]
        }
        found = read_each(consumer, cluster_topic, doubtful)
        missing = sorted(set(doubtful) - set(found))
        if missing:
            log.warning("topic_short", topic=cluster_topic, partitions=missing)
        return not missing
    finally:
        consumer.close()
