"""Reading rod.results.v1, rod.deliveries.v1 and rod.extracts.v1 into the projection.

Loop: poll → decode (each event's hash recomputed from its bytes) → apply in one transaction
(rows inserted if absent, chain checked, offsets stored) → commit the group's offsets. The
projection's stored offsets are the truth: on taking a partition the reader starts there,
after checking that the message before it is still the one it read (the embedded broker
loses its data on restart, and the relay then writes the log anew); if not, it reads that
partition from the start again, which changes nothing it already holds.

What cannot be decoded or acted on becomes a dead letter (audit_deadletters, recorded in the
same transaction as the offsets that move past it) and is published on rod.deadletter.v1
once stored. A poison record on rod.results.v1 therefore never blocks the reader. It cannot
block the chain check either: an undecodable record has no position, so the check simply
goes on from the events it has. If the record was a real event (say, written with a schema
this service does not know yet), its position is missing and the check reports a gap there
and stops verifying, which is right: the chain IS incomplete here until an operator replays
the letter after the fix, and the replay fills the gap (rows are inserted if absent).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import select

from services.audit.chain_check import recomputed_hash
from services.audit.periods import to_millis
from services.audit.projection import Batch, Projection, events
from services.kernel import kafka
from services.kernel.codec import Codec, DecodeError
from services.kernel.deadletters import TOPIC as DEADLETTER_TOPIC
from services.kernel.deadletters import dead_letter, is_transient
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("audit.reader")

RESULTS_TOPIC = "rod.results.v1"
DELIVERIES_TOPIC = "rod.deliveries.v1"
EXTRACTS_TOPIC = "rod.extracts.v1"
TOPICS = (RESULTS_TOPIC, DELIVERIES_TOPIC, EXTRACTS_TOPIC)
GROUP_ID = "rod-audit"
BATCH = 5000
EXPECTED = {
    RESULTS_TOPIC: ("ResultRegistered", "ResultDeleted"),
    DELIVERIES_TOPIC: ("DeliveryReceipt",),
    EXTRACTS_TOPIC: ("ExtractIssued",),
}


def digest(value: bytes | None) -> bytes:
    return hashlib.sha256(value or b"").digest()


def now_ms() -> int:
    return to_millis(datetime.now(UTC))


SERVICE = "audit"


class Decoder:
    """Consumer records → a Batch of rows; what cannot be read becomes a dead letter of the batch."""

    def __init__(self, settings: Settings) -> None:
        self.codec = Codec()
        self.base = {settings.topic(t): t for t in TOPICS}
        self.undecodable = 0

    def batch(self, records: Iterable[Any]) -> Batch:
        batch = Batch()
        last: dict[tuple[str, int], Any] = {}
        for rec in records:
            topic = self.base[rec.topic]
            last[(topic, rec.partition)] = rec
            try:
                self.add(batch, topic, rec.value)
            except Exception as exc:  # noqa: BLE001 - what cannot be read or acted on is a dead letter
                if is_transient(exc):
                    raise
                self.undecodable += 1
                letter = dead_letter(topic, rec, exc)
                batch.letters.append(letter)
                log.warning("audit_message_unreadable", topic=topic, partition=rec.partition,
                            offset=rec.offset, code=letter.error_code)
        batch.ends = {key: (rec.offset + 1, digest(rec.value)) for key, rec in last.items()}
        return batch

    def add(self, batch: Batch, topic: str, value: bytes | None) -> None:
        """Decode one message of `topic` into `batch`; raises what makes it a dead letter."""
        name, record = self.codec.decode(value or b"")
        if name not in EXPECTED[topic]:
            raise DecodeError("RECORD_UNEXPECTED", name)
        self._add(batch, name, record, value or b"")

    def _add(self, batch: Batch, name: str, r: dict[str, Any], data: bytes) -> None:
        if name == "DeliveryReceipt":
            batch.deliveries.append((r["result_id"], r["event_id"], r["subscription"], r["kind"],
                                     r["delivery_id"], r["institution"], to_millis(r["delivered_at"])))
        elif name == "ExtractIssued":
            batch.extracts.append((r["extract_id"], r["result_id"], r["event_id"], r["institution"],
                                   to_millis(r["issued_at"])))
        elif name == "ResultRegistered":  # in EVENT_COLUMNS order; only the last three digits of the person
            batch.events.append((
                r["position"], r["event_id"], "R", r["result_id"], r["version"], to_millis(r["recorded_at"]),
                r["institution"], r["sector"], r["programme_code"], r["programme_name"], r["diploma_number"],
                r["diploma_date"].isoformat(), r["person_kind"], r["person_number"][-3:], None, None,
                r["prev_hash"], r["hash"], recomputed_hash(self.codec, data, r) == r["hash"]))
        else:
            batch.events.append((
                r["position"], r["event_id"], "D", r["result_id"], r["version"], to_millis(r["recorded_at"]),
                r["institution"], None, None, None, None, None, None, None, r["registered_event_id"],
                r["reason"], r["prev_hash"], r["hash"], recomputed_hash(self.codec, data, r) == r["hash"]))


class AuditReader:
    """Keeps the projection up to date with the three topics."""

    def __init__(self, projection: Projection, settings: Settings, bootstrap: str,
                 group_id: str = GROUP_ID, batch: int = BATCH) -> None:
        self.projection = projection
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.batch = batch
        self.decoder = Decoder(settings)
        self.topics = [settings.topic(t) for t in TOPICS]
        self.last_event_at = time.monotonic()  # when a poll last brought something
        self.letters_waiting = True  # unpublished dead letters may be stored (a crash): look on start

    def ensure_topics(self) -> None:
        kafka.ensure_topics(self.settings, self.bootstrap, [*TOPICS, DEADLETTER_TOPIC])

    def publish_dead_letters(self) -> int:
        """Publish the stored letters not yet on rod.deadletter.v1, then mark them published."""
        self.letters_waiting = False
        try:
            return self.projection.deadletters.publish_waiting(self.settings, self.bootstrap)
        except Exception:
            self.letters_waiting = True  # the next step tries again
            raise

    def step(self, consumer: KafkaConsumer, writer: _Writer, timeout_ms: int = 200) -> int:
        """One poll, decoded and handed to the writer; the number of messages it brought."""
        polled = consumer.poll(timeout_ms=timeout_ms, max_records=self.batch)
        records = [r for tp in sorted(polled, key=lambda t: (t.topic, t.partition)) for r in polled[tp]]
        if not records:
            return 0
        batch = self.decoder.batch(records)
        writer.submit(batch)
        if batch.letters:
            self.letters_waiting = True  # published once the writer has stored them
        self.last_event_at = time.monotonic()
        return len(records)

    def catch_up(self, timeout: float = 600.0) -> int:
        """Read every partition from the stored offsets to its end, without joining the group."""
        self.ensure_topics()
        consumer = kafka.consumer(self.bootstrap, group_id=None, max_poll_records=self.batch)
        writer = _Writer(self.projection)
        try:
            partitions = self._partitions(consumer)
            consumer.assign(partitions)
            self.seek(consumer, partitions)
            read, empty, deadline = 0, 0, time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = self.step(consumer, writer)
                read += got
                empty = 0 if got else empty + 1
                if empty >= 2 and self._at_end(consumer, partitions):
                    break
            writer.drain()
            if self.letters_waiting:
                self.publish_dead_letters()
            return read
        finally:
            writer.close()
            consumer.close()

    def run(self, stop: threading.Event, on_idle: Callable[[float], None] | None = None,
            idle_every: float = 60.0) -> None:
        """Read as a member of the group until `stop`; `on_idle(seconds quiet)` when caught up."""
        backoff, last_idle, next_letters, next_gap_look = 0.5, 0.0, 0.0, 0.0
        while not stop.is_set():
            consumer, writer = None, _Writer(self.projection)
            try:
                self.ensure_topics()
                consumer = kafka.consumer(self.bootstrap, group_id=self.group_id, max_poll_records=self.batch)
                consumer.subscribe(self.topics, listener=_SeekOnAssign(self, consumer, writer))
                while not stop.is_set():
                    got = self.step(consumer, writer)
                    if got:
                        self._commit(consumer, writer.applied)
                        backoff = 0.5
                    if self.letters_waiting and time.monotonic() >= next_letters:
                        writer.drain()  # the letters are stored (with their offsets) before they go out
                        self.publish_dead_letters()
                        next_letters = time.monotonic() + 1.0  # a stream of poison costs a drain a second
                    elif not got and time.monotonic() >= next_gap_look:
                        next_gap_look = time.monotonic() + 5.0
                        if self.gap_filled():
                            writer.drain()
                            self.projection.check = self.projection._load_check()
                    elif (not got and consumer.assignment() and on_idle
                          and time.monotonic() - last_idle >= idle_every):
                        writer.drain()  # the scheduler looks at everything read so far
                        self._commit(consumer, writer.applied)
                        last_idle = time.monotonic()
                        on_idle(time.monotonic() - self.last_event_at)
            except Exception as exc:  # noqa: BLE001 - broker or database away, or a bug: log and retry
                log.warning("audit_reader_retrying", error=type(exc).__name__, retry_in_seconds=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                writer.close()
                if consumer is not None:
                    consumer.close(autocommit=False)

    def gap_filled(self) -> bool:
        """Is the position the chain check waits for stored now? A dead-letter replay (`rod
        deadletter replay`, another process) writes it past this reader's in-memory check."""
        waiting = self.projection.check.waiting_for
        if waiting is None:
            return False
        with self.projection.engine.connect() as conn:
            found = conn.execute(select(events.c.position).where(events.c.position == waiting)).first()
        return found is not None

    def _commit(self, consumer: KafkaConsumer, applied: dict[tuple[str, int], int]) -> None:
        """Commit what the projection holds as the group's offsets, for operators' views (the
        projection's own offsets are the truth)."""
        offsets = {TopicPartition(self.settings.topic(topic), p): OffsetAndMetadata(o, "", -1)
                   for (topic, p), o in list(applied.items())}
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance in between: the next commit covers it
            log.info("audit_commit_skipped", error=type(exc).__name__)

    # --- where to start -------------------------------------------------------------------

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        found = []
        for topic in self.topics:
            deadline = time.monotonic() + 10
            parts = consumer.partitions_for_topic(topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.1)
                parts = consumer.partitions_for_topic(topic)
            found += [TopicPartition(topic, p) for p in sorted(parts or ())]
        return found

    def seek(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Seek each partition to the stored offset when the message before it is unchanged, else 0."""
        stored = self.projection.stored_offsets()
        wanted = {tp: stored.get((self.decoder.base[tp.topic], tp.partition), (0, None)) for tp in partitions}
        before = self._messages_before({tp: o for tp, (o, _d) in wanted.items() if o > 0})
        for tp, (offset, last) in wanted.items():
            if offset and before.get(tp) != last:
                log.warning("audit_log_rebuilt", topic=tp.topic, partition=tp.partition, offset=offset)
                offset = 0
            consumer.seek(tp, offset)

    def _messages_before(self, cursors: dict[TopicPartition, int]) -> dict[TopicPartition, bytes]:
        """The digest of the message just before each cursor, where the partition still has it."""
        if not cursors:
            return {}
        checker = kafka.consumer(self.bootstrap, group_id=None)
        try:
            ends = checker.end_offsets(list(cursors))
            present = {tp: o for tp, o in cursors.items() if ends.get(tp, 0) >= o}
            if not present:
                return {}
            checker.assign(list(present))
            for tp, offset in present.items():
                checker.seek(tp, offset - 1)
            found: dict[TopicPartition, bytes] = {}
            deadline = time.monotonic() + 10
            while len(found) < len(present) and time.monotonic() < deadline:
                for tp, records in checker.poll(timeout_ms=200).items():
                    for r in records:
                        if r.offset == present[tp] - 1:
                            found[tp] = digest(r.value)
                    checker.pause(tp)
            return found
        finally:
            checker.close()

    def _at_end(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> bool:
        ends = consumer.end_offsets(partitions)
        return all(consumer.position(tp) >= ends.get(tp, 0) for tp in partitions)


class _SeekOnAssign(ConsumerRebalanceListener):
    def __init__(self, reader: AuditReader, consumer: KafkaConsumer, writer: _Writer) -> None:
        self.reader = reader
        self.consumer = consumer
        self.writer = writer

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.writer.drain()  # start from what is stored, with nothing still on its way there
        self.reader.seek(self.consumer, sorted(assigned, key=lambda t: (t.topic, t.partition)))


class _Writer:
    """Applies decoded batches to the projection in order, in a thread of its own.

    While it writes one batch the reader polls and decodes the next: the database drivers
    release the GIL while they work, so reading and writing overlap (bench/report.py). After
    a failed batch it applies nothing more and the reader raises at its next hand-over; the
    projection's stored offsets then say where to start again.
    """

    def __init__(self, projection: Projection, depth: int = 2) -> None:
        self.projection = projection
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=depth)
        self.error: Exception | None = None
        self.applied: dict[tuple[str, int], int] = {}  # next offset per (topic, partition), stored
        self.thread = threading.Thread(target=self._loop, name="audit-writer", daemon=True)
        self.thread.start()

    def submit(self, batch: Batch) -> None:
        self._raise()
        self.queue.put(batch)

    def drain(self) -> None:
        """Wait until every batch handed over is stored (or raise what stopped the writer)."""
        self.queue.join()
        self._raise()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while True:
            batch = self.queue.get()
            taken = 1
            try:
                if batch is None:
                    return
                while not self.queue.empty():  # what queued up meanwhile goes in the same transaction
                    later = self.queue.get_nowait()
                    taken += 1
                    if later is None:
                        self.queue.put(None)  # close() after this batch
                        break
                    batch.extend(later)
                if self.error is None:
                    self.projection.apply(batch, now_ms())
                    for key, (next_offset, _digest) in batch.ends.items():
                        self.applied[key] = next_offset
            except Exception as exc:  # noqa: BLE001 - handed to the reader's thread, which retries
                self.error = exc
            finally:
                for _ in range(taken):
                    self.queue.task_done()
