"""The outbox relay: publishes stored events to rod.results.v1 in store order.

Loop: read the events after the published position → send them (key = result id) → flush
and check every send → record the new published position and the highest offset per
partition, in one transaction. A kill between any two steps re-sends some events on the
next start (the same bytes, the same event_id), never skips one: positions commit in
order (see store.py), so nothing with a lower position can appear later.

The broker may have lost what was sent (the embedded broker keeps it in memory only): on
start the relay compares each partition with the offsets it recorded and publishes
everything again from the store when the topic is missing or shorter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka.errors import KafkaError
from sqlalchemy import delete, select, update

from services.kernel import kafka
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar import metrics
from services.registrar.store import EventStore, relay_offsets, relay_progress

log = get_logger("relay")

RESULTS_TOPIC = "rod.results.v1"
BATCH = 5000


class Relay:
    """Publishes the event store to rod.results.v1; one instance per event store."""

    def __init__(self, event_store: EventStore, settings: Settings, bootstrap: str) -> None:
        self.store = event_store
        self.bootstrap = bootstrap
        self.topic = settings.topic(RESULTS_TOPIC)
        self.settings = settings
        self._producer = None

    @property
    def producer(self):  # noqa: ANN201 - kafka-python is untyped
        if self._producer is None:
            # Wait rather than give up: an expired batch could let a later one overtake it.
            self._producer = kafka.producer(self.bootstrap, delivery_timeout_ms=600_000)
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    # progress

    def published_position(self) -> int:
        with self.store.reading() as conn:
            return conn.execute(select(relay_progress.c.published_position)).scalar_one()

    def recorded_offsets(self) -> dict[int, int]:
        with self.store.reading() as conn:
            return {row.partition: row.last_offset for row in conn.execute(select(relay_offsets))}

    def rewind(self, position: int) -> None:
        """Publish again from `position` on (1 = everything)."""
        with self.store.engine.begin() as conn:
            conn.execute(update(relay_progress).values(published_position=max(position - 1, 0)))
            if position <= 1:
                conn.execute(delete(relay_offsets))
        log.info("relay_rewound", from_position=position)

    # recovery

    def topic_is_intact(self) -> bool:
        """True when every partition still holds the last offset the relay recorded there."""
        created = kafka.ensure_topics(self.settings, self.bootstrap, [RESULTS_TOPIC])
        recorded = self.recorded_offsets()
        if created:
            return not recorded
        if not recorded:
            return True
        return kafka.topic_holds(self.bootstrap, self.topic, recorded)

    def recover(self) -> bool:
        """Republish from the store when the topic lost data; True when it did."""
        if self.topic_is_intact():
            return False
        log.warning("relay_republishing", reason="topic missing or shorter than recorded")
        self.rewind(1)
        return True

    # publishing

    def publish_once(self, limit: int = BATCH) -> int:
        """Publish the next stored events; returns how many were sent (0: caught up)."""
        start = self.published_position()
        batch = self.store.events_after(start, limit)
        if not batch:
            return 0
        futures = [
            self.producer.send(self.topic, key=e.stream_id.encode(), value=e.payload) for e in batch
        ]
        self.producer.flush()
        highest: dict[int, int] = {}
        for future in futures:
            metadata = future.get(timeout=0)  # raises the send's error: then nothing is recorded
            highest[metadata.partition] = max(highest.get(metadata.partition, -1), metadata.offset)
        self._record(batch[-1].position, highest)
        metrics.relay_published(len(batch))
        log.debug("relay_published", first_position=batch[0].position, last_position=batch[-1].position)
        return len(batch)

    def _record(self, position: int, highest: dict[int, int]) -> None:
        known = self.recorded_offsets()
        with self.store.engine.begin() as conn:
            conn.execute(update(relay_progress).values(published_position=position))
            for partition, offset in highest.items():
                if partition in known:
                    conn.execute(
                        update(relay_offsets)
                        .where(relay_offsets.c.partition == partition)
                        .values(last_offset=max(offset, known[partition]))
                    )
                else:
                    conn.execute(relay_offsets.insert().values(partition=partition, last_offset=offset))

    def catch_up(self) -> int:
        """Publish until nothing is left; returns the number of events sent."""
        sent = 0
        while n := self.publish_once():
            sent += n
        return sent

    def run(self, stop: threading.Event, idle_wait: float = 0.05,
            on_error: Callable[[Exception], None] | None = None) -> None:
        """Publish until `stop` is set; a broker outage is retried with backoff, never dropped."""
        backoff = 0.5
        recovered = False
        while not stop.is_set():
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                if self.publish_once() == 0:
                    stop.wait(idle_wait)
                backoff = 0.5
            except KafkaError as exc:
                log.warning("relay_broker_error", error=type(exc).__name__, retry_in_seconds=backoff)
                if on_error:
                    on_error(exc)
                self.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
