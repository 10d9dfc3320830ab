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

import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from services.audit.periods import to_millis
from services.audit.projection import Batch, Projection, events
from services.kernel import chain, kafka
from services.kernel.codec import Codec
from services.kernel.consume import Batch as ConsumedBatch
from services.kernel.consume import ConsumeLoop, Consumption
from services.kernel.deadletters import TOPIC as DEADLETTER_TOPIC
from services.kernel.deadletters import StoredRecord
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


def now_ms() -> int:
    return to_millis(datetime.now(UTC))


SERVICE = "audit"


def rows(codec: Codec, batch: ConsumedBatch) -> Batch:
    """The projection's rows of the decoded messages, with the batch's ends and dead letters."""
    found = Batch(ends=dict(batch.ends), letters=list(batch.letters))
    for message in batch.messages:
        _add(codec, found, message.name, message.record, message.raw.value or b"")
    return found


def _add(codec: Codec, batch: Batch, name: str, r: dict[str, Any], data: bytes) -> None:
    if name == "DeliveryReceipt":  # an ACKNOWLEDGED one is kept at the moment it was confirmed
        moment = r.get("acknowledged_at") if r["kind"] == "ACKNOWLEDGED" else None
        batch.deliveries.append((r["result_id"], r["event_id"], r["subscription"], r["kind"],
                                 r["delivery_id"], r["institution"],
                                 to_millis(moment or r["delivered_at"])))
    elif name == "ExtractIssued":
        batch.extracts.append((r["extract_id"], r["result_id"], r["event_id"], r["institution"],
                               to_millis(r["issued_at"])))
    elif name == "ResultRegistered":  # in EVENT_COLUMNS order; only the last three digits of the person
        batch.events.append((
            r["position"], r["event_id"], "R", r["result_id"], r["version"], to_millis(r["recorded_at"]),
            r["institution"], r["sector"], r["programme_code"], r["programme_name"], r["diploma_number"],
            r["diploma_date"].isoformat(), r["person_kind"], r["person_number"][-3:], None, None,
            r["prev_hash"], r["hash"], chain.recomputed_hash(codec, data, r) == r["hash"]))
    else:
        batch.events.append((
            r["position"], r["event_id"], "D", r["result_id"], r["version"], to_millis(r["recorded_at"]),
            r["institution"], None, None, None, None, None, None, None, r["registered_event_id"],
            r["reason"], r["prev_hash"], r["hash"], chain.recomputed_hash(codec, data, r) == r["hash"]))


class AuditReader(Consumption):
    """Keeps the projection up to date with the three topics, on the kernel's consume loop.

    The projection's stored offsets are the truth (the group's are for operators); batches go
    to a writer thread, so the next poll is decoded while the last one is stored.
    """

    name = SERVICE
    expected = EXPECTED

    def __init__(self, projection: Projection, settings: Settings, bootstrap: str,
                 group_id: str = GROUP_ID, batch: int = BATCH) -> None:
        self.projection = projection
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.loop = ConsumeLoop(self, settings, bootstrap, batch=batch)
        self.writer: _Writer | None = None
        self.last_event_at = time.monotonic()  # when a poll last brought something
        self.letters_waiting = True  # unpublished dead letters may be stored (a crash): look on start
        self.on_idle: Callable[[float], None] | None = None
        self.idle_every = 60.0
        self._last_idle = 0.0
        self._next_letters = 0.0
        self._next_gap_look = 0.0

    # the loop's parts

    def open(self) -> None:
        kafka.ensure_topics(self.settings, self.bootstrap, [*TOPICS, DEADLETTER_TOPIC])
        self.close()
        self.writer = _Writer(self.projection)

    def assigned(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._writer().drain()  # start from what is stored, with nothing still on its way there
        self.seek(consumer, partitions)

    def process(self, batch: ConsumedBatch) -> None:
        for letter in batch.letters:
            log.warning("audit_message_unreadable", topic=letter.topic, partition=letter.partition,
                        offset=letter.offset, code=letter.error_code)
        self._writer().submit(rows(self.loop.codec, batch))
        if batch.letters:
            self.letters_waiting = True  # published once the writer has stored them
        self.last_event_at = time.monotonic()

    def stored(self, batch: ConsumedBatch) -> dict[tuple[str, int], int]:
        return dict(self._writer().applied)

    def tick(self, consumer: KafkaConsumer, polled: int) -> None:
        """Letters out once stored; a replayed gap noticed; the idle hook when caught up."""
        writer = self._writer()
        if self.letters_waiting and time.monotonic() >= self._next_letters:
            writer.drain()  # the letters are stored (with their offsets) before they go out
            self.publish_dead_letters()
            self._next_letters = time.monotonic() + 1.0  # a stream of poison costs a drain a second
        elif not polled and time.monotonic() >= self._next_gap_look:
            self._next_gap_look = time.monotonic() + 5.0
            if self.gap_filled():
                writer.drain()
                self.projection.check = self.projection._load_check()
        elif (not polled and consumer.assignment() and self.on_idle
              and time.monotonic() - self._last_idle >= self.idle_every):
            writer.drain()  # the scheduler looks at everything read so far
            self.loop.uncommitted.update(writer.applied)
            self._last_idle = time.monotonic()
            self.on_idle(time.monotonic() - self.last_event_at)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _writer(self) -> _Writer:
        if self.writer is None:
            self.writer = _Writer(self.projection)
        return self.writer

    # running

    def publish_dead_letters(self) -> int:
        """Publish the stored letters not yet on rod.deadletter.v1, then mark them published."""
        self.letters_waiting = False
        try:
            return self.projection.deadletters.publish_waiting(self.settings, self.bootstrap)
        except Exception:
            self.letters_waiting = True  # the next step tries again
            raise

    def catch_up(self, timeout: float = 600.0) -> int:
        """Read every partition from the stored offsets to its end, without joining the group."""
        self.loop.rebuilt_is_routine = True  # the seek on assignment is this loop's
        loop = ConsumeLoop(self, self.settings, self.bootstrap, group=False, batch=self.loop.batch)
        consumer = loop.connect()
        try:
            partitions = sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition))
            read, empty, deadline = 0, 0, time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = loop.step(consumer)
                read += got
                empty = 0 if got else empty + 1
                if empty >= 2 and self._at_end(consumer, partitions):
                    break
            self._writer().drain()
            if self.letters_waiting:
                self.publish_dead_letters()
            return read
        finally:
            self.close()
            consumer.close()

    def run(self, stop: threading.Event, on_idle: Callable[[float], None] | None = None,
            idle_every: float = 60.0) -> None:
        """Read as a member of the group until `stop`; `on_idle(seconds quiet)` when caught up."""
        self.on_idle, self.idle_every = on_idle, idle_every
        self.loop.run(stop)

    def gap_filled(self) -> bool:
        """Is the position the chain check waits for stored now? A dead-letter replay (`rod
        deadletter replay`, another process) writes it past this reader's in-memory check."""
        waiting = self.projection.check.waiting_for
        if waiting is None:
            return False
        with self.projection.engine.connect() as conn:
            found = conn.execute(select(events.c.position).where(events.c.position == waiting)).first()
        return found is not None

    # --- where to start -------------------------------------------------------------------

    def seek(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Each partition at the stored offset when the message before it is unchanged, else at 0."""
        self.loop.seek_stored(consumer, partitions, self.projection.stored_offsets())

    def _at_end(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> bool:
        ends = consumer.end_offsets(partitions)
        return all(consumer.position(tp) >= ends.get(tp, 0) for tp in partitions)


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


def replay_dead_letter(settings: Settings, _bootstrap: str, row: Any) -> str:
    """One stored letter applied to the projection (rows inserted if absent; the chain check
    fills its gap)."""
    projection = Projection(settings.database_urls["audit"])
    try:
        reader = AuditReader(projection, settings, "")
        batch = rows(reader.loop.codec, ConsumedBatch([reader.loop.read(StoredRecord(row))]))
        projection.apply(batch, now_ms())
        return f"applied to the projection ({len(batch)} row(s), inserted if absent)"
    finally:
        projection.dispose()
