"""Recording operator actions: a row in operations_actions, then an OperatorAction event on
rod.operations.v1.

The row is written first (an outbox): when the broker is away the action still counts and
is published by the next `record` or by `publish_pending` (which `rod up` runs at start).
"""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from sqlalchemy import insert, select, update

from services.kernel import kafka
from services.kernel.clock import now_millis as now
from services.kernel.codec import Codec
from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.operations.store import OperationsStore, actions

log = get_logger("operations")

TOPIC = "rod.operations.v1"
SCHEMA = "OperatorAction"
VIA = ("cli", "console")


class ActionLog:
    """Who did what, when and why: stored, then published on rod.operations.v1."""

    def __init__(self, store: OperationsStore, settings: Settings, bootstrap: str | None) -> None:
        self.store = store
        self.settings = settings
        self.bootstrap = bootstrap
        self.codec = Codec()

    def record(
        self, operator: str, via: str, action: str, target: str, reason: str, outcome: str = "ok"
    ) -> str:
        """Store the action and try to publish it; returns its action_id."""
        if via not in VIA:
            raise ValueError(f"via must be one of {VIA}")
        action_id = str(uuid.uuid4())
        with self.store.writing() as conn:
            conn.execute(
                insert(actions).values(action_id=action_id, at=now(), operator=operator, via=via,
                                       action=action, target=target, reason=reason or "",
                                       outcome=outcome, published=False)
            )
        self.publish_pending()
        return action_id

    def publish_pending(self) -> int:
        """Publish what is not on rod.operations.v1 yet; a broker that is away leaves it for later."""
        if self.bootstrap is None:
            return 0
        with self.store.reading() as conn:
            query = select(actions).where(actions.c.published.is_(False)).order_by(actions.c.id)
            rows = list(conn.execute(query))
        if not rows:
            return 0
        try:
            producer = kafka.producer(self.bootstrap, max_block_ms=5000)
            try:
                kafka.ensure_topics(self.settings, self.bootstrap, [TOPIC])
                topic = self.settings.topic(TOPIC)
                futures = [producer.send(topic, self._encode(row), row.target.encode()) for row in rows]
                producer.flush(timeout=10)
                for future in futures:
                    future.get(timeout=10)
            finally:
                producer.close(timeout=5)
        except Exception as exc:  # noqa: BLE001 - the broker is away: the outbox keeps it
            log.warning("operator_actions_unpublished", count=len(rows), error=type(exc).__name__)
            return 0
        with self.store.writing() as conn:
            conn.execute(update(actions).where(actions.c.id.in_([r.id for r in rows])).values(published=True))
        return len(rows)

    def _encode(self, row: Any) -> bytes:
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        fields = ("action_id", "operator", "via", "action", "target", "reason", "outcome")
        return self.codec.encode(SCHEMA, {"at": at, **{f: getattr(row, f) for f in fields}})
