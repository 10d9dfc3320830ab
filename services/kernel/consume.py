"""The consume → process → commit loop, written once; each service gives its own `process`.

One step: poll a batch → decode (what cannot be decoded or is not expected on its topic
becomes a dead letter with its origin) → `process(batch)`: the service's own tables in one
transaction, keyed so a repeat is a no-op, with the dead letters and (where the service keeps
them) the offsets → `publish(done)`: produce what follows and flush → commit the group's
offsets. A crash between any two steps repeats work and never loses or doubles a recorded
decision: what was not committed is read again and changes nothing the second time.

A group commit that fails (a rebalance in between) is kept and tried again at the next
step, so a quiet consumer still shows its position to operators.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.exc import DBAPIError

from services.kernel import kafka
from services.kernel.codec import Codec, DecodeError
from services.kernel.deadletters import DeadLetter, dead_letter, is_transient
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("kernel.consume")

Position = tuple[str, int]  # (base topic, partition)


def digest(value: bytes | None) -> bytes:
    """What identifies a message's bytes: checked on start against a rebuilt log."""
    return hashlib.sha256(value or b"").digest()


@dataclass
class Message:
    """One decoded message with where it came from."""

    topic: str  # base name (without the deployment's prefix)
    partition: int
    offset: int
    name: str  # the Avro record name
    record: dict[str, Any]
    raw: Any  # the consumer record: its bytes, for the service's own checks


@dataclass
class Batch:
    """What one poll brought: decoded messages, dead letters, and the end of each partition read."""

    messages: list[Message] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    last: dict[Position, Any] = field(default_factory=dict)  # the last consumer record of each partition

    def __len__(self) -> int:
        return len(self.messages) + len(self.letters)

    @property
    def ends(self) -> dict[Position, tuple[int, bytes]]:
        """Per partition read: the next offset and the digest of the last message."""
        return {position: (rec.offset + 1, digest(rec.value)) for position, rec in self.last.items()}


class Consumption:
    """What a service gives the loop. Override `process`; the rest have defaults."""

    name = "consumer"
    group_id = "rod-consumer"
    expected: dict[str, tuple[str, ...]] = {}  # base topic → the record names it may carry
    retried: tuple[type[Exception], ...] = ()  # its own faults that a retry resolves (logged as warnings)

    def check(self, message: Message) -> None:
        """More than the schema: raise to make this message a dead letter."""

    def open(self) -> None:
        """Before each (re)connect: topics made, recovery, what a crash left unsent."""

    def assigned(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken: seek where the service's tables say (default: the group's offsets)."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (a rebalance): forget what was held for them."""

    def busy(self) -> bool:
        """Work left besides polling (a backfill): not idle even when a poll brings nothing."""
        return False

    def process(self, batch: Batch) -> Any:
        """Write the batch into the service's own tables in one transaction; what to publish."""
        raise NotImplementedError

    def publish(self, done: Any) -> None:
        """Produce what `process` decided and flush (after its transaction committed)."""

    def stored(self, batch: Batch) -> dict[Position, int]:
        """Offsets the service holds now, to commit for operators (default: the batch's ends)."""
        return {position: offset for position, (offset, _digest) in batch.ends.items()}

    def tick(self, consumer: KafkaConsumer, polled: int) -> None:
        """Between polls: periodic work (holds, acknowledgements, idle hooks)."""

    def close(self) -> None:
        """The connection is going away (an error, or stop)."""


class ConsumeLoop:
    """Runs a Consumption until stopped: one step per poll, broker or database trouble retried."""

    def __init__(self, service: Consumption, settings: Settings, bootstrap: str, *,
                 group: bool = True, batch: int = 5000, poll_ms: int = 200) -> None:
        self.service = service
        self.settings = settings
        self.bootstrap = bootstrap
        self.group = group
        self.batch = batch
        self.poll_ms = poll_ms
        self.codec = Codec()
        self.base = {settings.topic(t): t for t in service.expected}
        self.uncommitted: dict[Position, int] = {}
        self.commit_timeout_ms = 5000
        # a one-off catch-up (`rod report`) reads a log the embedded broker rebuilt as a matter of
        # course: logged as info, not as the running service's warning
        self.rebuilt_is_routine = False

    # one step, each part a function of its own

    def decode(self, records: Iterable[Any]) -> Batch:
        """Decoded messages in partition order; the rest dead letters (transient faults raise)."""
        batch = Batch()
        for rec in records:
            topic = self.base.get(rec.topic, rec.topic)
            batch.last[(topic, rec.partition)] = rec
            try:
                message = self.read(rec)
            except Exception as exc:  # noqa: BLE001 - what cannot be read or acted on is a dead letter
                if is_transient(exc):
                    raise
                letter = dead_letter(topic, rec, exc)
                batch.letters.append(letter)
                log.warning("message_unreadable", service=self.service.name, topic=topic,
                            partition=rec.partition, offset=rec.offset, code=letter.error_code)
                continue
            batch.messages.append(message)
        return batch

    def read(self, rec: Any) -> Message:
        """One consumer record decoded and checked; raises what makes it a dead letter."""
        topic = self.base.get(rec.topic, rec.topic)
        name, record = self.codec.decode(rec.value or b"")
        message = Message(topic, rec.partition, rec.offset, name, record, rec)
        self.service.check(message)  # first: a service may name an unexpected record more precisely
        if name not in self.service.expected.get(topic, ()):
            raise DecodeError("RECORD_UNEXPECTED", name)
        return message

    def poll(self, consumer: KafkaConsumer) -> list[Any]:
        polled = consumer.poll(timeout_ms=self.poll_ms, max_records=self.batch)
        return [r for tp in sorted(polled, key=lambda t: (t.topic, t.partition)) for r in polled[tp]]

    def step(self, consumer: KafkaConsumer) -> int:
        """poll → decode → process → publish → commit; the number of messages it brought."""
        records = self.poll(consumer)
        if records:
            batch = self.decode(records)
            done = self.service.process(batch)
            self.service.publish(done)
            self.uncommitted.update(self.service.stored(batch))
        if self.uncommitted and self.group:
            self.commit(consumer)
        self.service.tick(consumer, len(records))
        return len(records)

    def commit(self, consumer: KafkaConsumer) -> None:
        """Commit what the service holds as the group's offsets; kept for the next step on failure."""
        offsets = {TopicPartition(self.settings.topic(t), p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in self.uncommitted.items()}
        try:
            consumer.commit(offsets, timeout_ms=self.commit_timeout_ms)  # a broker away must not hang us
        except Exception as exc:  # noqa: BLE001 - a rebalance in between: tried again next step
            log.debug("commit_deferred", service=self.service.name, error=type(exc).__name__)
            return
        self.uncommitted.clear()

    def seek_stored(self, consumer: KafkaConsumer, partitions: list[TopicPartition],
                    stored: dict[Position, tuple[int, bytes | None]]) -> None:
        """Seek each partition to the offset the service stored, when the message before it is still
        the one it read; else to 0 (a rebuilt log has other offsets; reading again changes nothing)."""
        wanted = {tp: stored.get((self.base.get(tp.topic, tp.topic), tp.partition), (0, None))
                  for tp in partitions}
        before: dict[TopicPartition, bytes] = {}
        for topic in {tp.topic for tp in partitions}:
            offsets = {tp.partition: o - 1 for tp, (o, _d) in wanted.items() if tp.topic == topic and o > 0}
            if offsets:
                checker = kafka.probe(self.bootstrap)
                try:
                    found = kafka.read_each(checker, topic, offsets)
                finally:
                    checker.close()
                before.update({TopicPartition(topic, p): digest(r.value) for p, r in found.items()})
        for tp, (offset, last) in wanted.items():
            if offset and before.get(tp) != last:
                (log.info if self.rebuilt_is_routine else log.warning)(
                    "log_rebuilt", service=self.service.name, topic=tp.topic, partition=tp.partition,
                    offset=offset)
                offset = 0
            consumer.seek(tp, offset)

    # connecting and running

    def connect(self) -> KafkaConsumer:
        """A consumer in the group (or on every partition, without one), at the service's offsets."""
        self.service.open()
        self.uncommitted = {}
        group_id = self.settings.group(self.service.group_id) if self.group else None
        consumer = kafka.consumer(self.bootstrap, group_id=group_id, max_poll_records=self.batch)
        topics = [self.settings.topic(t) for t in self.service.expected]
        if self.group:
            consumer.subscribe(topics, listener=_Assigned(self, consumer))
        else:
            partitions = partitions_of(consumer, topics)
            consumer.assign(partitions)
            self.service.assigned(consumer, partitions)
        return consumer

    def run(self, stop: threading.Event, on_error: Callable[[Exception], None] | None = None,
            idle_exit: float | None = None) -> None:
        """Step until `stop` is set (or, with `idle_exit`, until that many seconds brought nothing);
        any failure closes the connection and starts again with backoff."""
        backoff, quiet_since = 0.5, None
        while not stop.is_set():
            consumer = None
            try:
                consumer = self.connect()
                while not stop.is_set():
                    if self.step(consumer) or self.service.busy():
                        backoff, quiet_since = 0.5, None
                    elif idle_exit is not None:
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since >= idle_exit:
                            return
            except Exception as exc:  # noqa: BLE001 - broker or database away, or a bug: log and retry
                expected = isinstance(exc, (KafkaError, DBAPIError, OSError, *self.service.retried))
                (log.warning if expected else log.error)(
                    "consumer_retrying", service=self.service.name, error=type(exc).__name__,
                    retry_in_seconds=backoff, detail=None if expected else str(exc)[:300])
                if on_error:
                    on_error(exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.service.close()
                if consumer is not None:
                    consumer.close(autocommit=False)


def stop_on_signals(*events: threading.Event) -> None:
    """SIGINT and SIGTERM set `events`: a running loop ends its step, commits and closes its
    connections. (A KeyboardInterrupt raised inside the Kafka client could leave close() waiting.)"""

    def on_signal(*_: object) -> None:
        for event in events:
            event.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


def partitions_of(consumer: KafkaConsumer, topics: list[str], wait: float = 10.0) -> list[TopicPartition]:
    """Every partition of these topics (waiting briefly for new topics' metadata)."""
    found = []
    for topic in topics:
        deadline = time.monotonic() + wait
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        found += [TopicPartition(topic, p) for p in sorted(parts or ())]
    return found


class _Assigned(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumeLoop, consumer: KafkaConsumer) -> None:
        self.loop = loop
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: Any) -> None:
        gone = {(self.loop.base.get(tp.topic, tp.topic), tp.partition) for tp in revoked}
        self.loop.uncommitted = {k: v for k, v in self.loop.uncommitted.items() if k not in gone}
        self.loop.service.revoked(sorted(revoked, key=lambda t: (t.topic, t.partition)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.loop.service.assigned(self.consumer, sorted(assigned, key=lambda t: (t.topic, t.partition)))
