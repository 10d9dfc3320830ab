"""The distributor's loop: consume → decide → record → publish → mark → commit.

One batch of rod.results.v1 at a time:
1. decode; what cannot be decoded or acted on becomes a dead letter;
2. in ONE ledger transaction: read the decisions already stored for these events (a repeat
   uses them and decides nothing), decide the rest, insert them (insert-if-absent), record
   the dead letters and move the reader's cursor by compare-and-set;
3. send the feed messages, their receipts and the dead letters, flush, check every send;
4. mark the rows published (each gets its HTTP feed position) and remember the offsets
   written, in one transaction;
5. commit the consumer group's offsets (for operators; the ledger's cursor is the truth).

A kill between any two steps: after 1, nothing happened; after 2, the rows are `pending`
and are sent again (same delivery_id, same bytes) when this or another process takes the
partition; after 3, the same; after 4, only the group offset is behind, and the ledger's
cursor wins on start. A decision is never recorded twice: UNIQUE(subscription, event_id),
and the cursor compare-and-set lets only one of two processes record a batch.

Once a second, besides: release held rows that are due, and send the ACKNOWLEDGED receipts
of what HTTP consumers confirmed (`publish_acknowledgements`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.distributor import decide as d
from services.distributor import metrics
from services.distributor.feed import render
from services.distributor.feeds import (
    DEADLETTER_TOPIC,
    DELIVERIES_TOPIC,
    RESULTS_TOPIC,
    Outgoing,
    Publisher,
    digest,
    ensure_topic,
)
from services.distributor.ledger import Ledger, Row, backfill_reader, now
from services.distributor.subscriptions import Subscription, load
from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.consume import Batch, ConsumeLoop, Consumption, Message
from services.kernel.deadletters import DeadLetter, dead_letter, from_row, is_transient
from services.kernel.logging import get_logger
from services.kernel.settings import Settings

log = get_logger("distributor")

GROUP_ID = "rod-distributor"
BATCH = 5000
CHECK_EVERY = 15.0  # seconds between checks that the broker still holds our topics


class CursorMoved(Exception):
    """Another process recorded this part of the log first (a rebalance overlap)."""


class TopicsLost(Exception):
    """The broker no longer holds what the ledger says was read or written: start again, recover."""


@dataclass
class Reader:
    """A position in rod.results.v1: the main reader, or one subscription's backfill."""

    name: str
    consumer: KafkaConsumer
    only: str | None = None  # backfill: the one subscription it decides for
    resend: bool = False  # backfill/replay: send already published messages again
    cursor: dict[int, int] = field(default_factory=dict)  # next offset per partition held


@dataclass
class Step:
    """What one batch did (tests and the bench read it)."""

    events: int = 0
    decided: int = 0
    sent: int = 0
    dead: int = 0


class Distributor(Consumption):
    """Passes rod.results.v1 on to every subscription's feed, keeping the delivery ledger."""

    name = "distributor"
    expected = {RESULTS_TOPIC: (d.REGISTERED, d.DELETED)}
    retried = (CursorMoved, TopicsLost)

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        subscriptions: list[Subscription] | None = None,
        ledger: Ledger | None = None,
        group: bool = True,
        group_id: str = GROUP_ID,
        batch: int = BATCH,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.codec = Codec()
        self.subscriptions = {s.name: s for s in (subscriptions or load(codec=self.codec))}
        metrics.known(self.subscriptions)
        self.ledger = ledger or Ledger(settings.database_urls["distributor"])
        self.group = group
        self.group_id = group_id
        self.batch = batch
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.main: Reader | None = None
        self.backfills: dict[str, Reader] = {}
        self.publisher: Publisher | None = None
        self.watermark: dict[int, datetime] = {}  # per partition: events recorded up to here are read
        self.ready = False
        self._assigned_now: list[int] = []
        self.check_every = CHECK_EVERY
        self.loop = ConsumeLoop(self, settings, bootstrap, group=group, batch=batch, poll_ms=100)
        self._step = Step()  # what the current step did
        self._next_idle_check = 0.0
        self._next_check = 0.0
        self._next_housekeeping = 0.0

    # start-up and recovery

    def start(self) -> None:
        """Topics, subscriptions, lost feeds republished, then the main reader on its cursors."""
        consumer = self.loop.connect()
        if self.main is None:  # in the group: partitions (and the cursors) come with a poll
            self.main = Reader("main", consumer)

    def open(self) -> None:
        """Before the consumer connects: topics, subscriptions, lost feeds republished, letters sent."""
        names = [
            RESULTS_TOPIC,
            DELIVERIES_TOPIC,
            DEADLETTER_TOPIC,
            *(s.topic for s in self.subscriptions.values()),
        ]
        created = {name for name in names if ensure_topic(self.settings, self.bootstrap, name)}
        self.ledger.sync_subscriptions([(s.name, s.start) for s in self.subscriptions.values()])
        self.publisher = Publisher(self.settings, self.bootstrap, self.codec)
        self.recover_topics(created)
        self.publish_dead_letters()
        self.ready = True
        self._next_check = time.monotonic() + self.check_every
        log.info("distributor_started", group=self.group, subscriptions=sorted(self.subscriptions))

    def assigned(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken: read from the ledger's cursors, checked against the topic."""
        if self.main is None or self.main.consumer is not consumer:
            self.main = Reader("main", consumer)
        if partitions:
            self.take(self.main, [tp.partition for tp in partitions])

    def check(self, message: Message) -> None:
        d.check_event(message.name, message.record)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if self.main:
                self.main.cursor.pop(tp.partition, None)
            self.watermark.pop(tp.partition, None)

    def _results_partitions(self, consumer: KafkaConsumer) -> list[int]:
        found = consumer.partitions_for_topic(self.settings.topic(RESULTS_TOPIC))
        if not found:
            raise KafkaError("rod.results.v1 has no partitions yet")
        return sorted(found)

    def take(self, reader: Reader, partitions: list[int]) -> None:
        """Start reading these partitions at the ledger's cursor, checked against the topic."""
        stored = self.ledger.cursors(reader.name, partitions)
        topic = self.settings.topic(RESULTS_TOPIC)
        checker = kafka.probe(self.bootstrap)
        try:  # is the record before each cursor still the one we read? (a rebuilt log has other offsets)
            previous = {p: stored[p][0] - 1 for p in partitions if stored[p][0]}
            before = kafka.read_each(checker, topic, previous)
        finally:
            checker.close()
        for p in partitions:
            offset, last = stored[p]
            if offset and (p not in before or digest(before[p].value) != last):
                log.warning("distributor_log_rebuilt", reader=reader.name, partition=p, cursor=offset)
                with self.ledger.writing() as conn:
                    self.ledger.advance(conn, reader.name, p, offset, 0, None)
                offset = 0
            reader.cursor[p] = offset
            reader.consumer.seek(TopicPartition(topic, p), offset)
        if reader is self.main:
            for p in partitions:
                self.watermark.pop(p, None)
            self._assigned_now = partitions
            log.info("distributor_partitions_taken", partitions=partitions)

    def recover_topics(self, created: frozenset[str] | set[str] = frozenset()) -> None:
        """Republish from the ledger every topic of ours that is missing or shorter than recorded."""
        pending_rebuilds = self.ledger.republishing()
        for name in [*(s.topic for s in self.subscriptions.values()), DELIVERIES_TOPIC, DEADLETTER_TOPIC]:
            recorded = self.ledger.recorded_offsets(name)
            if name in created:
                intact = not recorded
            else:
                intact = kafka.topic_holds(self.bootstrap, self.settings.topic(name), recorded)
            if intact and name not in pending_rebuilds:
                continue
            log.warning("distributor_republishing", topic=name)
            self.ledger.begin_republish(name)
            self._republish(name)
            self.ledger.end_republish(name)

    def _republish(self, name: str) -> None:
        assert self.publisher is not None
        if name == DEADLETTER_TOPIC:
            for letter in self.ledger.deadletter_list():
                self.publisher.send_dead_letter(from_row(letter))
            self._record(self.publisher.flush())
            return
        subs = [s for s in self.subscriptions.values() if s.topic == name]
        for rows in self.ledger.delivered(subs[0].name if subs else None):
            for row in rows:
                sub = self.subscriptions.get(row.subscription)
                if sub is None:
                    continue
                out = self._outgoing(row, receipt=False)
                if name == DELIVERIES_TOPIC:
                    self.publisher.send(DELIVERIES_TOPIC, row.result_id.encode(), self.publisher.receipt(out))
                    if row.ack_published:  # those still waiting go out from publish_acknowledgements
                        receipt = self.publisher.receipt(out, row.acknowledged_at)
                        self.publisher.send(DELIVERIES_TOPIC, row.result_id.encode(), receipt)
                else:
                    self.publisher.send(out.topic, row.result_id.encode(), out.payload)
            self._record(self.publisher.flush())

    def _record(
        self,
        highest: dict[tuple[str, int], int],
        keys: Iterable[tuple[str, str]] = (),
        letters: Iterable[DeadLetter] = (),
    ) -> None:
        with self.ledger.writing() as conn:
            self.ledger.mark_published(conn, keys)
            self.ledger.mark_deadletters_published(conn, [(x.topic, x.partition, x.offset) for x in letters])
            self.ledger.record_offsets(conn, highest)

    def publish_pending(self, partitions: Iterable[int] | None) -> int:
        """Send rows a crash or an outage left between decided and confirmed (same bytes)."""
        rows = [r for r in self.ledger.pending(partitions) if r.subscription in self.subscriptions]
        self._send([self._outgoing(r) for r in rows], [])
        return len(rows)

    def publish_acknowledgements(self) -> int:
        """Send the ACKNOWLEDGED receipts of what HTTP consumers confirmed, then mark them sent.

        A crash between the flush and the mark sends them again: readers drop the repeat by
        (delivery_id, kind).
        """
        if self.main is None or not self.main.cursor:
            return 0
        rows = [r for r in self.ledger.acknowledged_waiting()  # by partition: one process sends each
                if r.subscription in self.subscriptions and r.partition in self.main.cursor]
        if not rows:
            return 0
        assert self.publisher is not None
        for row in rows:
            receipt = self.publisher.receipt(self._outgoing(row, receipt=False), row.acknowledged_at)
            self.publisher.send(DELIVERIES_TOPIC, row.result_id.encode(), receipt)
        highest = self.publisher.flush()
        with self.ledger.writing() as conn:
            self.ledger.mark_acks_published(conn, [r.id for r in rows])
            self.ledger.record_offsets(conn, highest)
        log.info("distributor_acknowledgements_sent", count=len(rows))
        return len(rows)

    def publish_dead_letters(self) -> None:
        letters = self.ledger.unpublished_deadletters()
        if letters:
            self._send([], letters)

    # the loop

    def run(
        self,
        stop: threading.Event,
        on_error: Callable[[Exception], None] | None = None,
        idle_exit: float | None = None,
    ) -> None:
        """Distribute until `stop` is set; a broker or database outage is retried with backoff."""
        self.loop.run(stop, on_error=on_error, idle_exit=idle_exit)

    def step(self) -> Step:
        """One poll of the main reader, then due releases and a backfill batch."""
        assert self.main is not None
        self._step = Step()
        self.loop.step(self.main.consumer)
        return self._step

    def busy(self) -> bool:
        return bool(self.backfills)

    def process(self, batch: Batch) -> tuple[list[Outgoing], list[DeadLetter]]:
        assert self.main is not None
        self._publish_taken()
        self._step, done = self._process(self.main, batch)
        for item in batch.messages:
            recorded, seen = item.record["recorded_at"], self.watermark.get(item.partition)
            if seen is None or recorded > seen:
                self.watermark[item.partition] = recorded
        metrics.processed(self._step.events)
        return done

    def publish(self, done: tuple[list[Outgoing], list[DeadLetter]]) -> None:
        self._step.sent = self._send(*done)

    def stored(self, batch: Batch) -> dict[tuple[str, int], int]:
        assert self.main is not None
        return {(RESULTS_TOPIC, p): offset for p, offset in self.main.cursor.items()}

    def tick(self, consumer: KafkaConsumer, polled: int) -> None:
        """Between polls: pending sends of partitions just taken, idle watermarks, topic checks,
        and once a second due releases, acknowledgements and backfills."""
        if self.main is None:
            return
        self._publish_taken()
        if not polled:
            self._idle()
        if time.monotonic() >= self._next_check:
            self.check_topics()
        if time.monotonic() >= self._next_housekeeping:  # holds and backfills: once a second is enough
            self._next_housekeeping = time.monotonic() + 1.0
            self.release_due()
            self.publish_acknowledgements()
            self.backfill_step()
        elif self.backfills:
            self.backfill_step()

    def _publish_taken(self) -> None:
        """Partitions just taken: send what their last owner left pending."""
        if self._assigned_now:
            partitions, self._assigned_now = self._assigned_now, []
            self.publish_pending(partitions)

    def _idle(self) -> None:
        """Nothing came: partitions read to their end are caught up until now (asked once a second)."""
        assert self.main is not None
        if time.monotonic() < self._next_idle_check or not self.main.cursor:
            return
        self._next_idle_check = time.monotonic() + 1.0
        moment = now()
        topic = self.settings.topic(RESULTS_TOPIC)
        # a broker that is away raises here instead of passing for caught up
        ends = self.main.consumer.end_offsets(
            [TopicPartition(topic, p) for p in self.main.cursor], timeout_ms=5000
        )
        for tp, end in ends.items():
            if self.main.cursor.get(tp.partition, -1) >= end:
                self.watermark[tp.partition] = moment

    def check_topics(self) -> None:
        """Now and then: do the broker's topics still hold what we know we read and wrote?

        A broker that lost its data while we ran (an embedded broker restarted, a lost topic)
        makes us start again: recovery republishes the feeds and re-checks the cursors.
        """
        self._next_check = time.monotonic() + self.check_every
        assert self.main is not None
        names = [*(s.topic for s in self.subscriptions.values()), DELIVERIES_TOPIC, DEADLETTER_TOPIC]
        lost = [
            n
            for n in names
            if not kafka.topic_holds(self.bootstrap, self.settings.topic(n), self.ledger.recorded_offsets(n))
        ]
        stored = self.ledger.cursors("main", list(self.main.cursor))
        checker = kafka.probe(self.bootstrap)
        try:
            wanted = {p: offset - 1 for p, (offset, _last) in stored.items() if offset}
            before = kafka.read_each(checker, self.settings.topic(RESULTS_TOPIC), wanted)
        finally:
            checker.close()
        if any(p not in before or digest(before[p].value) != stored[p][1] for p in wanted):
            lost.append(RESULTS_TOPIC)
        if lost:
            raise TopicsLost(", ".join(lost))

    def _process(self, reader: Reader, batch: Batch) -> tuple[Step, tuple[list[Outgoing], list[DeadLetter]]]:
        """Decide and record one batch of rod.results.v1: what to send comes back."""
        letters = list(batch.letters)
        step = Step(events=len(batch.messages), dead=len(letters))
        ends = {p: (rec.offset + 1, digest(rec.value)) for (_t, p), rec in batch.last.items()}
        with self.ledger.writing() as conn:
            states = self.ledger.states(conn, lock=True)
            subs = self._deciding(reader, states)
            outgoing, rows, letters = self._decide(conn, reader, subs, states, batch.messages, letters)
            self.ledger.insert(conn, rows)
            self.ledger.deadletters.record(conn, letters)  # with the cursor: one transaction
            for p, (next_offset, last) in ends.items():
                if not self.ledger.advance(conn, reader.name, p, reader.cursor.get(p, -1), next_offset, last):
                    raise CursorMoved(f"{reader.name} partition {p}")
        for p, (next_offset, _last) in ends.items():
            reader.cursor[p] = next_offset
        step.decided = len(rows)
        return step, (outgoing, letters)

    def _deciding(self, reader: Reader, states: dict[str, Any]) -> list[Subscription]:
        """The subscriptions this reader decides for now (a backfilling one has its own reader)."""
        if reader.only:
            state = states.get(reader.only)
            return [self.subscriptions[reader.only]] if state and state.mode == "backfilling" else []
        return [s for s in self.subscriptions.values() if s.name in states and states[s.name].mode == "live"]

    def _decide(
        self,
        conn: Any,
        reader: Reader,
        subs: list[Subscription],
        states: dict[str, Any],
        items: list[Message],
        letters: list[DeadLetter],
    ) -> tuple[list[Outgoing], list[dict], list[DeadLetter]]:
        keys = [(s.name, i.record["event_id"]) for i in items for s in subs]
        existing = self.ledger.existing(conn, keys)
        prior_keys = [
            (s.name, i.record["registered_event_id"]) for i in items if i.name == d.DELETED for s in subs
        ]
        priors = self.ledger.existing(conn, [k for k in prior_keys if k not in existing])
        made: dict[tuple[str, str], tuple[d.Decision, int]] = {}
        outgoing: list[Outgoing] = []
        moment = now()
        for item in items:
            try:
                decided = self._decide_item(
                    conn, item, subs, states, existing, priors, made, reader, outgoing
                )
            except Exception as exc:  # noqa: BLE001 - one event that cannot be decided must not stop the feed
                if is_transient(exc):  # the database went away mid-batch: retry the batch, no letter
                    raise
                letters.append(dead_letter(RESULTS_TOPIC, item.raw, exc))
                continue
            for key, decision in decided:
                made[key] = (decision, item.partition)
                if decision.cancels and (decision.subscription, decision.cancels) in made:
                    made[(decision.subscription, decision.cancels)][0].state = d.CANCELLED
        rows = []
        for (sub_name, event_id), (decision, partition) in made.items():
            sub = self.subscriptions[sub_name]
            row = {
                "subscription": sub_name,
                "event_id": event_id,
                "result_id": decision.result_id,
                "institution": decision.institution,
                "state": decision.state,
                "kind": decision.kind,
                "reason": decision.reason,
                "delivery_id": decision.delivery_id,
                "payload": None,
                "feed_json": None,
                "partition": partition,
                "due_at": decision.due_at,
                "delivered_at": None,
                "decided_at": moment,
            }
            if decision.message is not None and decision.state != d.CANCELLED:
                stamp = moment if decision.state == d.PENDING else decision.due_at
                message = {**decision.message, "delivered_at": stamp}
                row["payload"], row["feed_json"] = self._encoded(sub, message)
                if decision.state == d.PENDING:
                    row["delivered_at"] = moment
                    outgoing.append(
                        Outgoing(
                            sub_name,
                            sub.topic,
                            event_id,
                            decision.result_id,
                            decision.institution,
                            decision.kind or "",
                            decision.delivery_id or "",
                            row["payload"],
                            moment,
                        )
                    )
            rows.append(row)
        return outgoing, rows, letters

    def _decide_item(
        self,
        conn: Any,
        item: Message,
        subs: list[Subscription],
        states: dict[str, Any],
        existing: dict,
        priors: dict,
        made: dict,
        reader: Reader,
        outgoing: list[Outgoing],
    ) -> list[tuple[tuple[str, str], d.Decision]]:
        """The decisions of one event for every subscription (a repeat reuses the stored one)."""
        event = item.record
        decided = []
        for sub in subs:
            key = (sub.name, event["event_id"])
            row = existing.get(key)
            if row is not None:
                if row.kind and (row.state == d.PENDING or (reader.resend and row.state == d.PUBLISHED)):
                    outgoing.append(self._outgoing(row, receipt=row.state == d.PENDING))
                continue
            if key in made or not d.applies(sub, states[sub.name].started_at, event):
                continue
            paused = states[sub.name].paused
            if item.name == d.REGISTERED:
                decided.append((key, d.decide_registered(sub, event, paused)))
                continue
            prior_key = (sub.name, event["registered_event_id"])
            decision = d.decide_deleted(sub, event, self._prior(prior_key, made, existing, priors), paused)
            if decision.cancels and prior_key not in made and not self.ledger.cancel_held(conn, *prior_key):
                # released between our read and now: it reached the feed, so withdraw it
                fresh = self.ledger.existing(conn, [prior_key]).get(prior_key)
                decision = d.decide_deleted(
                    sub, event, fresh and d.Prior(fresh.state, fresh.delivery_id), paused
                )
            decided.append((key, decision))
        return decided

    @staticmethod
    def _prior(key: tuple[str, str], made: dict, existing: dict, priors: dict) -> d.Prior | None:
        if key in made:
            decision = made[key][0]
            return d.Prior(decision.state, decision.delivery_id)
        row = existing.get(key) or priors.get(key)
        return d.Prior(row.state, row.delivery_id) if row else None

    def _encoded(self, sub: Subscription, message: dict[str, Any]) -> tuple[bytes, bytes]:
        """A feed message as sent on Kafka (Avro) and as the HTTP feed serves it (JSON, made once
        here so that a page of the HTTP feed is read, not decoded and rendered per request)."""
        schema = self.codec.current[sub.schema]
        return self.codec.encode_with(schema, message), render(schema, message)

    def _outgoing(self, row: Row, receipt: bool = True) -> Outgoing:
        sub = self.subscriptions[row.subscription]
        return Outgoing(
            row.subscription,
            sub.topic,
            row.event_id,
            row.result_id,
            row.institution,
            row.kind or "",
            row.delivery_id or "",
            row.payload or b"",
            row.delivered_at or now(),
            receipt,
        )

    def _send(self, outgoing: list[Outgoing], letters: list[DeadLetter]) -> int:
        """Send, flush, check every send, then mark it all published in the ledger."""
        if not outgoing and not letters:
            return 0
        assert self.publisher is not None
        known = [o for o in outgoing if o.subscription in self.subscriptions]
        for out in known:
            self.publisher.send_message(out)
        for letter in letters:
            self.publisher.send_dead_letter(letter)
        highest = self.publisher.flush()
        self._record(highest, [(o.subscription, o.event_id) for o in known], letters)
        metrics.sent(known)  # confirmed by the flush above
        for letter in letters:
            log.warning(
                "distributor_dead_letter",
                partition=letter.partition,
                offset=letter.offset,
                code=letter.error_code,
            )
        return len(known)

    # holds

    def release_due(self) -> int:
        """Release held deliveries whose time has come and whose partition was read up to then."""
        if self.main is None or not self.main.cursor:
            return 0
        moment = now()
        with self.ledger.reading() as conn:
            states = self.ledger.states(conn)
        running = [
            n for n in self.subscriptions if n in states and not states[n].paused and states[n].mode == "live"
        ]
        # a deletion recorded before the due time must have been read first: only release
        # what lies behind the partition's watermark (caught up, or read past the due time)
        rows = [
            r
            for r in self.ledger.due(moment, list(self.main.cursor), running)
            if r.due_at and r.partition in self.watermark and r.due_at <= self.watermark[r.partition]
        ]
        if not rows:
            return 0
        outgoing = []
        with self.ledger.writing() as conn:
            for row in rows:
                sub = self.subscriptions[row.subscription]
                _name, message = self.codec.decode(row.payload or b"")
                payload, rendered = self._encoded(sub, {**message, "delivered_at": moment})
                if self.ledger.release(conn, row, payload, rendered, moment):
                    row.payload, row.delivered_at = payload, moment
                    outgoing.append(self._outgoing(row))
        self._send(outgoing, [])
        log.info("distributor_released", count=len(outgoing))
        return len(outgoing)

    # backfill and replay

    def backfill(self, name: str, timeout: float = 600.0) -> int | None:
        """Run the backfill (replay) of one subscription here until it is live again.

        Returns the number of messages sent, or None when another process holds it.
        """
        for topic in (RESULTS_TOPIC, DELIVERIES_TOPIC, DEADLETTER_TOPIC, self.subscriptions[name].topic):
            ensure_topic(self.settings, self.bootstrap, topic)
        self.publisher = self.publisher or Publisher(self.settings, self.bootstrap, self.codec)
        deadline = time.monotonic() + timeout
        sent = 0
        while time.monotonic() < deadline:
            with self.ledger.reading() as conn:
                state = self.ledger.states(conn)[name]
            if state.mode == "live":
                return sent
            step = self.backfill_step(only=name)
            if step is None:
                return None
            sent += step.sent
        return None

    def backfill_step(self, only: str | None = None) -> Step | None:
        """One batch for each subscription that is backfilling (new, or asked to replay)."""
        with self.ledger.reading() as conn:
            states = self.ledger.states(conn)
        total: Step | None = Step()
        for name, state in states.items():
            if name not in self.subscriptions or (only and name != only):
                continue
            reader = self.backfills.get(name)
            if state.mode != "backfilling" or state.paused:
                if reader:
                    reader.consumer.close()
                    del self.backfills[name]
                continue
            if not self.ledger.claim_backfill(name, self.owner):
                total = None if only else total
                continue
            if reader is None:
                reader = self.backfills[name] = self._backfill_reader(name)
            batch = self.loop.decode(self.loop.poll(reader.consumer))
            if batch and total is not None:
                step, done = self._process(reader, batch)
                total.events += step.events
                total.sent += self._send(*done)
            if self.ledger.finish_backfill(name, self.owner, reader.cursor):
                log.info("distributor_backfill_done", subscription=name)
                reader.consumer.close()
                del self.backfills[name]
        return total

    def _backfill_reader(self, name: str) -> Reader:
        consumer = kafka.consumer(self.bootstrap, group_id=None, max_poll_records=self.batch)
        partitions = self._results_partitions(consumer)
        consumer.assign([TopicPartition(self.settings.topic(RESULTS_TOPIC), p) for p in partitions])
        reader = Reader(backfill_reader(name), consumer, only=name, resend=True)
        self.take(reader, partitions)
        log.info("distributor_backfill_started", subscription=name)
        return reader

    def close(self) -> None:
        for reader in [self.main, *self.backfills.values()]:
            if reader is not None:
                with contextlib.suppress(Exception):  # closing after a failure must not raise again
                    reader.consumer.close()
        self.main, self.backfills = None, {}
        if self.publisher:
            self.publisher.close()
            self.publisher = None
        self.ready = False
