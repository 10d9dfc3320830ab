"""`rod up`'s log component: builds the tree after the events are stored, signs a checkpoint
at least every CHECKPOINT_SECONDS while events arrive, and publishes each checkpoint on
rod.checkpoints.v1 after it is stored (an outbox: a kill between the send and the mark sends
it again; readers de-duplicate by tree size). A broker that lost the topic gets every
checkpoint again, as the relay republishes the results.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError
from sqlalchemy.exc import OperationalError

from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.store import EventStore
from services.registrar.transparency.keys import LogIdentity, load_identity
from services.registrar.transparency.tree import CheckpointLog, StoredCheckpoint, StoredTree, keep_verifier

log = get_logger("registrar.log")

CHECKPOINTS_TOPIC = "rod.checkpoints.v1"
# the interface promises one at least every 10 s while events arrive; a little under leaves room
CHECKPOINT_SECONDS = 5.0
CHECK_TOPIC_SECONDS = 30.0


def checkpoint_seconds() -> float:
    return float(os.environ.get("ROD_LOG_CHECKPOINT_SECONDS") or CHECKPOINT_SECONDS)


def checkpoint_record(checkpoint: StoredCheckpoint, origin: str) -> dict:
    """The Checkpoint message of a stored checkpoint."""
    return {"origin": origin, "tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash,
            "note": checkpoint.note, "signed_at": checkpoint.created_at}


class LogService:
    """The tree builder, the checkpoint signer and the checkpoints' publisher."""

    def __init__(self, settings: Settings, bootstrap: str | None,
                 store: EventStore | None = None, identity: LogIdentity | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store or EventStore(settings.database_urls["registrar"])
        self.tree = StoredTree(self.store)
        self.checkpoints = CheckpointLog(self.store)
        self.identity = identity or load_identity(settings)
        self.every = checkpoint_seconds()
        self.codec = Codec()
        self.topic = settings.topic(CHECKPOINTS_TOPIC)
        self._producer = None
        self._next_topic_check = 0.0
        keep_verifier(self.store, self.identity.signer.verifier.text())
        log.info("log_signing_key", origin=self.identity.origin,
                 verifier=self.identity.signer.verifier.text(), key_from=self.identity.source)

    # --- one step at a time (each safe to kill after) --------------------------------------

    def build(self, budget_seconds: float = 1.0) -> int:
        """Append stored events to the tree for up to `budget_seconds`; returns how many."""
        added, until = 0, time.monotonic() + budget_seconds
        while time.monotonic() < until and (n := self.tree.append_once()):
            added += n
        return added

    def sign_due(self, force: bool = False) -> StoredCheckpoint | None:
        """A new checkpoint when the tree grew and the last one is `every` seconds old (or none yet)."""
        return self.checkpoints.sign_next(self.tree, self.identity.signer, self.identity.origin,
                                          min_age=None if force else self.every)

    def publish(self) -> int:
        """Send the stored checkpoints not yet on the topic, oldest first; returns how many."""
        if self.bootstrap is None:
            return 0
        sent = 0
        while pending := self.checkpoints.unpublished():
            producer = self._producer_for()
            key = self.identity.origin.encode()
            futures = [
                (c.tree_size, producer.send(self.topic, key=key, value=self.codec.encode(
                    "Checkpoint", checkpoint_record(c, self.identity.origin))))
                for c in pending
            ]
            producer.flush()
            placed = {}
            for tree_size, future in futures:
                metadata = future.get(timeout=0)  # a failed send raises: nothing is marked
                placed[tree_size] = (metadata.partition, metadata.offset)
            self.checkpoints.mark_published(placed)
            sent += len(placed)
        return sent

    def check_topic(self) -> None:
        """When the broker lost the checkpoints it had, publish them all again."""
        self._next_topic_check = time.monotonic() + CHECK_TOPIC_SECONDS
        if self.bootstrap is None:
            return
        created = kafka.ensure_topics(self.settings, self.bootstrap, [CHECKPOINTS_TOPIC])
        recorded = self.checkpoints.last_published()
        if recorded and (created or not kafka.topic_holds(self.bootstrap, self.topic, recorded)):
            log.warning("log_checkpoints_republishing", topic=CHECKPOINTS_TOPIC)
            self.checkpoints.forget_published()

    def step(self) -> int:
        """Build, sign when due, publish; returns how many events were added to the tree."""
        if time.monotonic() >= self._next_topic_check:
            self.check_topic()
        added = self.build()
        self.sign_due()
        self.publish()
        return added

    def run(self, stop: threading.Event, idle_wait: float = 0.2,
            on_error: Callable[[Exception], None] | None = None) -> None:
        """Until `stop`: a broker or database outage is retried with backoff, never dropped."""
        backoff = 0.5
        while not stop.is_set():
            try:
                if self.step() == 0:
                    stop.wait(idle_wait)
                backoff = 0.5
            except (KafkaError, OperationalError) as exc:
                log.warning("log_component_retrying", error=type(exc).__name__, retry_in_seconds=backoff)
                if on_error:
                    on_error(exc)
                self._close_producer()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self.close()

    def _producer_for(self):  # noqa: ANN202 - kafka-python is untyped
        if self._producer is None:
            self._producer = kafka.producer(self.bootstrap or "")
        return self._producer

    def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):  # closing a broken producer must not stop the retry
                self._producer.close(timeout=1)
            self._producer = None

    def close(self) -> None:
        self._close_producer()
        self.store.dispose()
