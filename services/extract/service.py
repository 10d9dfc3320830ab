"""The extract service inside `rod up`: its feed read into its own tables, what it issued published.

Reading rod.feed.extract.v1 runs on the kernel's consume loop: each batch (results, withdrawals,
dead letters and the offsets it ends at) goes into the extract tables in one transaction, so a
repeat changes nothing and the stored offsets say where to start (checked against the topic:
a rebuilt log is read again from the start).

Issued extracts leave through an outbox: the HTTP request writes the extract and one
`extract_items` row per result in one transaction; this loop sends an ExtractIssued for every
unpublished row, flushes, checks every send, then marks them published together with the
last offset each partition got. A kill between the send and the mark would send them again:
so whoever takes the outbox (one publisher at a time, by a lease) first reads the topic past
the marked offsets and marks what is already there. Every item is sent exactly once; a topic
that lost what was sent (a broker that started empty) gets every item again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from starlette.requests import Request

from services.extract import metrics
from services.extract.signing import load_or_create
from services.extract.store import ExtractStore, check_message
from services.kernel import kafka
from services.kernel.codec import Codec, DecodeError
from services.kernel.consume import Batch, ConsumeLoop, Consumption, Message, partitions_of
from services.kernel.deadletters import TOPIC as DEADLETTER_TOPIC
from services.kernel.deadletters import DeadLetter, StoredRecord
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("extract")

FEED_TOPIC = "rod.feed.extract.v1"
EXTRACTS_TOPIC = "rod.extracts.v1"
GROUP_ID = "rod-extract"
OUTBOX_EVERY = 0.5  # seconds between looks at the outbox
LEASE_SECONDS = 10.0  # a publisher killed holds the outbox this long at most


class ExtractReader(Consumption):
    """rod.feed.extract.v1 into the extract tables; the outbox onto rod.extracts.v1."""

    name = "extract"
    expected = {FEED_TOPIC: ("ExtractFeedMessage",)}

    def __init__(self, store: ExtractStore, settings: Settings, bootstrap: str,
                 group_id: str = GROUP_ID) -> None:
        self.store = store
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.codec = Codec()
        self.loop = ConsumeLoop(self, settings, bootstrap, batch=2000)
        self.producer: Any = None
        self._next_outbox = 0.0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.reconciled = False  # the topic was read past the marked offsets since the lease was taken

    def check(self, message: Message) -> None:
        check_message(message.record)

    def open(self) -> None:
        kafka.ensure_topics(self.settings, self.bootstrap, [FEED_TOPIC, EXTRACTS_TOPIC, DEADLETTER_TOPIC])
        self.close()
        self.producer = kafka.producer(self.bootstrap, max_block_ms=10_000)
        self.publish_dead_letters()  # what a crash left stored but not sent
        self.reconciled = False  # the outbox goes out from the first tick: the feed is read from the start
        self._next_outbox = 0.0

    def assigned(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self.loop.seek_stored(consumer, partitions, self.store.stored_offsets())

    def process(self, batch: Batch) -> list[DeadLetter]:
        applied = self.store.apply([m.record for m in batch.messages], batch.ends, batch.letters)
        metrics.applied(applied.delivered, applied.withdrawn, applied.repeated)
        if applied.delivered or applied.withdrawn:
            log.info("extract_feed_applied", delivered=applied.delivered, withdrawn=applied.withdrawn,
                     repeated=applied.repeated)
        return batch.letters

    def publish(self, done: list[DeadLetter]) -> None:
        if done:
            self.publish_dead_letters()

    def tick(self, consumer: KafkaConsumer, polled: int) -> None:
        if time.monotonic() >= self._next_outbox:
            self._next_outbox = time.monotonic() + OUTBOX_EVERY
            self.publish_issued()

    def reconcile(self) -> None:
        """Mark what a predecessor sent but did not mark: the topic past the marked offsets holds it.

        A topic that no longer holds the marked offsets lost everything (a broker that started
        empty, as the embedded one does): then every item is sent again.
        """
        topic = self.settings.topic(EXTRACTS_TOPIC)
        marked = self.store.outbox_offsets()
        if marked and not kafka.topic_holds(self.bootstrap, topic, marked):
            log.warning("extract_outbox_republishing", topic=EXTRACTS_TOPIC)
            self.store.unpublish_all()
            marked = {}
        found, last = self._sent_after(topic, marked)  # only what was sent past the marks: a few
        if found or last:
            self.store.mark_published(sorted(found), last)  # marking a marked item again changes nothing
            log.info("extract_outbox_reconciled", already_sent=len(found))
        self.reconciled = True

    def _sent_after(self, topic: str, marked: dict[int, int]) -> tuple[set[tuple[str, str]], dict[int, int]]:
        """(extract_id, result_id) of every ExtractIssued after the marked offsets, and the last offsets."""
        reader = kafka.probe(self.bootstrap)
        try:
            partitions = partitions_of(reader, [topic])
            reader.assign(partitions)
            for tp in partitions:
                reader.seek(tp, marked.get(tp.partition, -1) + 1)
            ends = reader.end_offsets(partitions)
            found: set[tuple[str, str]] = set()
            last: dict[int, int] = {}
            quiet_until = time.monotonic() + 1.0  # the broker's end may be short by a batch: read on
            deadline = time.monotonic() + 60
            while time.monotonic() < quiet_until or any(reader.position(tp) < ends[tp] for tp in partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError("rod.extracts.v1 could not be read to its end")  # retried
                polled = reader.poll(timeout_ms=200)
                for tp, records in polled.items():
                    for record in records:
                        last[tp.partition] = record.offset
                        try:
                            name, issued = self.codec.decode(record.value or b"")
                        except DecodeError:
                            continue  # not ours to judge: only our own sends matter here
                        if name == "ExtractIssued":
                            found.add((issued["extract_id"], issued["result_id"]))
                if polled:
                    quiet_until = time.monotonic() + 1.0
            return found, last
        finally:
            reader.close()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)
            self.producer = None

    def run(self, stop: threading.Event) -> None:
        self.loop.run(stop)

    def publish_dead_letters(self) -> int:
        return self.store.deadletters.publish_waiting(self.settings, self.bootstrap)

    def publish_issued(self) -> int:
        """Send an ExtractIssued for every unpublished outbox row, check each send, then mark them
        with the offsets they got (while this process holds the outbox lease)."""
        if self.producer is None:
            return 0
        if not self.store.hold_outbox(self.owner, LEASE_SECONDS):
            self.reconciled = False  # another publisher has it; read the topic again when ours
            return 0
        if not self.reconciled:
            self.reconcile()
        sent = 0
        topic = self.settings.topic(EXTRACTS_TOPIC)
        while items := self.store.unpublished():
            futures = [self.producer.send(topic, key=item.result_id.encode(), value=self.codec.encode(
                "ExtractIssued", {"extract_id": item.extract_id, "result_id": item.result_id,
                                  "event_id": item.event_id, "institution": item.institution,
                                  "issued_at": item.issued_at})) for item in items]
            self.producer.flush(timeout=15)
            last: dict[int, int] = {}
            for future in futures:  # raises when the broker did not take one: found on the topic next time
                meta = future.get(timeout=15)
                last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
            self.store.mark_published([(item.extract_id, item.result_id) for item in items], last)
            metrics.PUBLISHED.inc(len(items))
            sent += len(items)
            if not self.store.hold_outbox(self.owner, LEASE_SECONDS):
                self.reconciled = False
                break
        if sent:
            log.info("extract_issued_published", count=sent)
        return sent


def replay_dead_letter(settings: Settings, _bootstrap: str, row: Any) -> str:
    """One stored letter applied to the extract tables again (a repeat changes nothing)."""
    store = ExtractStore(settings.database_urls["extract"])
    try:
        reader = ExtractReader(store, settings, "")
        message = reader.loop.read(StoredRecord(row))  # raises what keeps it a dead letter
        applied = store.apply([message.record], {}, [])
        return f"{message.record['kind']} applied ({applied.delivered + applied.withdrawn} change(s))"
    finally:
        store.dispose()


class ExtractService:
    """The extract service's store and signing identity, for the HTTP app and for `rod up`."""

    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = ExtractStore(settings.database_urls["extract"])
        metrics.follow(self.store)
        self.identity, created = load_or_create(settings.data_dir, os.environ.get("ROD_EXTRACT_KEY"),
                                                os.environ.get("ROD_EXTRACT_CERT"))
        if created:
            log.warning("extract_signing_default_created", directory=str(settings.data_dir / "extract"),
                        note="a CA and signing certificate of the embedded default; production sets "
                             "ROD_EXTRACT_KEY and ROD_EXTRACT_CERT")
        self.public_base = (os.environ.get("ROD_PUBLIC_URL") or "").rstrip("/")
        # verification attempts a minute per client address (guessing codes is hopeless anyway)
        self.attempts_per_minute = int(os.environ.get("ROD_VERIFY_ATTEMPTS_PER_MINUTE") or 30)

    def public_url(self, request: Request) -> str:
        """Where people verify: ROD_PUBLIC_URL, else the address this request came to."""
        return self.public_base or str(request.base_url).rstrip("/")

    def run(self, stop: threading.Event) -> None:
        """`rod up`'s extract component: the feed reader and the outbox."""
        ExtractReader(self.store, self.settings, self.bootstrap or "").run(stop)

    def dispose(self) -> None:
        self.store.dispose()

    close = dispose
