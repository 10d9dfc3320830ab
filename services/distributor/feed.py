"""The HTTP feed's side of the ledger: consumers, cursors, pages and acknowledgements.

A subscription's messages have gap-free positions (`feed_seq`, given when a row is first
confirmed on its Kafka feed, see `Ledger.mark_published`), so a page is one index range
and "unacknowledged" is a subtraction. A cursor names a position of one subscription:
`base64url(version || 4 bytes of SHA-256(subscription) || position)`. It is opaque to the
consumer, the same across restarts, and a cursor of another subscription is refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, update

from services.distributor.ledger import Ledger, consumers, decisions, feed_heads, now, token_marks, utc
from services.kernel.codec import Codec, SchemaVersion
from services.kernel.gate import Realm
from services.kernel.tokens import RecentTokens, TokenMarks, hash_token, new_token

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,79}$")
_CURSOR = struct.Struct(">B4sQ")
_CURSOR_VERSION = 1
FETCH_TOUCH_SECONDS = 10.0  # last_fetch_at is written at most this often per consumer
TOKEN_TTL = 60.0  # a consumer token's lookup is reused this long (as institution tokens')


class ConsumerError(ValueError):
    """A consumer name that is malformed or taken, or a subscription that does not exist."""


class CursorError(ValueError):
    """A cursor that is malformed, of another subscription, or not handed out yet."""


@dataclass(frozen=True)
class Consumer:
    name: str
    subscription: str


@functools.lru_cache(maxsize=256)
def _tag(subscription: str) -> bytes:
    return hashlib.sha256(subscription.encode()).digest()[:4]


def _cursor(tag: bytes, seq: int) -> str:
    return base64.urlsafe_b64encode(_CURSOR.pack(_CURSOR_VERSION, tag, seq)).decode().rstrip("=")


def encode_cursor(subscription: str, seq: int) -> str:
    return _cursor(_tag(subscription), seq)


def decode_cursor(subscription: str, cursor: str) -> int:
    """The position a cursor of `subscription` names; CursorError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, tag, seq = _CURSOR.unpack(raw)
    except (binascii.Error, struct.error, ValueError):
        raise CursorError("not a cursor of this feed") from None
    if version != _CURSOR_VERSION or not hmac.compare_digest(tag, _tag(subscription)):
        raise CursorError("not a cursor of this feed")
    return seq


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(type(value).__name__)


def render(schema: SchemaVersion, record: dict[str, Any]) -> bytes:
    """A feed record as the HTTP feed serves it: JSON with the schema's field names in its order,
    bytes as base64, timestamps ISO 8601 UTC (`...Z`), dates `YYYY-MM-DD`.

    >>> from services.kernel.codec import Codec, SchemaVersion
    >>> schema = Codec().current["CibgBigFeedMessage"]
    >>> render(schema, {"delivery_id": "d", "delivered_at": datetime(2026, 7, 1, 12, tzinfo=UTC)})[:66]
    b'{"delivery_id":"d","kind":null,"event_id":null,"result_id":null,"d'
    """
    names = [f["name"] for f in schema.parsed["fields"]]
    values = {name: record.get(name) for name in names}
    for name, value in values.items():  # naive datetimes are UTC here (SQLite, Avro)
        if isinstance(value, datetime) and value.tzinfo is None:
            values[name] = value.replace(tzinfo=UTC)
    return orjson.dumps(values, default=_bytes_as_base64, option=orjson.OPT_UTC_Z)


def consumer_tokens(ledger: Ledger) -> TokenMarks:
    """The feed consumers' tokens: listing, revocation, last use."""
    return TokenMarks(ledger.engine, "consumer", consumers, "name", token_marks)


class FeedStore:
    """What the HTTP feed reads and writes in the distributor's ledger."""

    def __init__(self, ledger: Ledger, codec: Codec | None = None) -> None:
        self.ledger = ledger
        self.codec = codec or Codec()
        self._touched: dict[str, float] = {}
        self._recent = RecentTokens(TOKEN_TTL, consumer_tokens(ledger))

    # consumers

    def add_consumer(self, name: str, subscription: str, known_subscriptions: set[str]) -> str:
        """Create consumer `name` of `subscription`; returns its token (shown once, never stored)."""
        if not NAME.fullmatch(name):
            raise ConsumerError("a consumer name is 1-80 letters, digits, '.', '_', '@' or '-'")
        if subscription not in known_subscriptions:
            raise ConsumerError(f"no subscription {subscription!r} (rod subscription list)")
        token = new_token()
        with self.ledger.writing() as conn:
            if conn.execute(select(consumers.c.name).where(consumers.c.name == name)).first():
                raise ConsumerError(f"consumer {name} exists already")
            conn.execute(insert(consumers).values(name=name, subscription=subscription,
                                                  token_hash=hash_token(token), created_at=now()))
        return token

    def realm(self) -> Realm:
        """Consumer tokens open `/v1/feeds/`."""
        return Realm("/v1/feeds/", "consumer", self.consumer_for, self.cached_consumer)

    def cached_consumer(self, token: str) -> Consumer | None:
        """The consumer holding `token` if it was looked up in the last TOKEN_TTL seconds."""
        return self._recent.get(token)

    def consumer_for(self, token: str) -> Consumer | None:
        """The consumer holding `token`, or None."""
        return self._recent.resolve(token, self._consumer_row,
                                    lambda row: Consumer(row.name, row.subscription))

    def _consumer_row(self, digest: str) -> Any:
        with self.ledger.reading() as conn:
            return conn.execute(
                select(consumers.c.name, consumers.c.subscription, consumers.c.token_hash)
                .where(consumers.c.token_hash == digest)
            ).first()

    def consumer(self, name: str) -> Consumer | None:
        """Consumer `name`, or None."""
        with self.ledger.reading() as conn:
            row = conn.execute(select(consumers.c.name, consumers.c.subscription)
                               .where(consumers.c.name == name)).first()
        return Consumer(row.name, row.subscription) if row else None

    def fetched(self, consumer: Consumer, monotonic_now: float) -> None:
        """Remember that `consumer` fetched (written at most every FETCH_TOUCH_SECONDS)."""
        if monotonic_now - self._touched.get(consumer.name, -1e9) < FETCH_TOUCH_SECONDS:
            return
        self._touched[consumer.name] = monotonic_now
        with self.ledger.writing() as conn:
            conn.execute(
                update(consumers).where(consumers.c.name == consumer.name).values(last_fetch_at=now())
            )

    # reading

    def heads(self) -> dict[str, tuple[int, int]]:
        """Per subscription: (newest position, acknowledged position)."""
        with self.ledger.reading() as conn:
            return {r.subscription: (r.last_seq, r.acked_seq)
                    for r in conn.execute(select(feed_heads.c.subscription, feed_heads.c.last_seq,
                                                 feed_heads.c.acked_seq))}

    def page(self, subscription: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` messages after position `after`, in feed order: (position, JSON object).

        Positions are gap-free, so the range bound lets the index answer without statistics.
        """
        with self.ledger.reading() as conn:
            rows = conn.execute(
                select(decisions.c.feed_seq, decisions.c.feed_json, decisions.c.payload)
                .where(decisions.c.subscription == subscription, decisions.c.feed_seq > after,
                       decisions.c.feed_seq <= after + limit)
                .order_by(decisions.c.feed_seq)
            ).all()
        return [(seq, bytes(rendered) if rendered is not None else self._render(bytes(payload)))
                for seq, rendered, payload in rows]

    def _render(self, payload: bytes) -> bytes:
        """A row decided before its JSON was kept: rendered from its Avro bytes."""
        schema = self.codec.writer_schema(payload)
        return render(schema, self.codec.decode(payload, as_written=True)[1])

    def page_body(self, subscription: str, after: int, limit: int) -> tuple[bytes, int]:
        """The HTTP answer `{"messages": [...], "next": CURSOR}` and how many messages it holds;
        each stored JSON object gets its cursor spliced in (no decoding, no rendering)."""
        rows = self.page(subscription, after, limit)
        tag = _tag(subscription)
        messages = b",".join(
            rendered[:-1] + b',"cursor":"' + _cursor(tag, seq).encode() + b'"}' for seq, rendered in rows
        )
        following = _cursor(tag, rows[-1][0] if rows else after)
        return b'{"messages":[' + messages + b'],"next":"' + following.encode() + b'"}', len(rows)

    # acknowledging

    def acknowledge(self, consumer: Consumer, seq: int) -> int:
        """Everything up to and including `seq` is confirmed; returns how many became so now.

        A position behind the acknowledged one changes nothing; one not handed out is a CursorError.
        """
        subscription = consumer.subscription
        with self.ledger.writing() as conn:
            query = select(feed_heads.c.last_seq, feed_heads.c.acked_seq).where(
                feed_heads.c.subscription == subscription)
            if self.ledger.dialect == "postgresql":
                query = query.with_for_update()
            head = conn.execute(query).first()
            last, acked = (head.last_seq, head.acked_seq) if head else (0, 0)
            if seq > last:
                raise CursorError("this cursor was not handed out yet")
            if seq <= acked:
                return 0
            moment = now()
            count = conn.execute(
                update(decisions)
                .where(decisions.c.subscription == subscription,
                       decisions.c.feed_seq > acked, decisions.c.feed_seq <= seq)
                .values(acknowledged_at=moment, ack_published=False)
            ).rowcount
            conn.execute(
                update(feed_heads).where(feed_heads.c.subscription == subscription)
                .values(acked_seq=seq, acked_at=moment, acked_by=consumer.name)
            )
        return count

    # operators

    def status(self) -> list[dict[str, Any]]:
        """Per consumer: its subscription, last fetch, last acknowledgement and what waits for one."""
        moment = now()
        with self.ledger.reading() as conn:
            heads = {r.subscription: r for r in conn.execute(select(feed_heads))}
            rows = conn.execute(select(consumers.c.name, consumers.c.subscription, consumers.c.last_fetch_at)
                                .order_by(consumers.c.name)).all()
            oldest = {}
            for sub in {r.subscription for r in rows}:
                head = heads.get(sub)
                if head is not None and head.last_seq > head.acked_seq:
                    oldest[sub] = utc(conn.execute(
                        select(decisions.c.delivered_at).where(
                            decisions.c.subscription == sub, decisions.c.feed_seq == head.acked_seq + 1)
                    ).scalar())
        out = []
        for row in rows:
            head = heads.get(row.subscription)
            acked_at = utc(head.acked_at) if head is not None else None
            waiting_since = oldest.get(row.subscription)
            out.append({
                "name": row.name,
                "subscription": row.subscription,
                "last_fetch_at": utc(row.last_fetch_at),
                "last_acknowledged_at": acked_at,
                "acknowledged_by": head.acked_by if head is not None else None,
                "acknowledgement_age_seconds": (moment - acked_at).total_seconds() if acked_at else None,
                "unacknowledged": (head.last_seq - head.acked_seq) if head is not None else 0,
                "oldest_unacknowledged_age_seconds": (
                    (moment - waiting_since).total_seconds() if waiting_since else None),
            })
        return out
