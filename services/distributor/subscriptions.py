"""Subscriptions as configuration: `deploy/subscriptions.toml` (or ROD_SUBSCRIPTIONS).

Each subscription names a downstream consumer, its feed topic, the Avro record of its feed
messages, which registrations it gets (filter), which fields it is entitled to, how long a
delivery is held back (an ISO 8601 duration) and where a new subscription starts.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.kernel.codec import Codec

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "subscriptions.toml"

# Every feed message starts with these fields (interfaces.md), then the entitled ones.
ENVELOPE = ("delivery_id", "kind", "event_id", "result_id", "delivered_at", "withdraws")

# What a registration offers a subscription (ResultRegistered minus the chain and bookkeeping).
EVENT_FIELDS = (
    "person_kind",
    "person_number",
    "institution",
    "branch",
    "provider",
    "sector",
    "programme_code",
    "programme_name",
    "big_profession",
    "diploma_number",
    "diploma_date",
    "recorded_at",
)

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class SubscriptionError(ValueError):
    """The subscriptions file is not valid; the message names the subscription and the key."""


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration in weeks, days, hours, minutes and seconds.

    Years and months are refused: their length depends on the date.

    >>> parse_duration("P1DT2H")
    datetime.timedelta(days=1, seconds=7200)
    >>> parse_duration("PT0.5S")
    datetime.timedelta(microseconds=500000)
    """
    match = _DURATION.match(text.strip().upper())
    if not match:
        raise SubscriptionError(f"not an ISO 8601 duration of weeks, days, hours, minutes, seconds: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(**parts)


@dataclass(frozen=True)
class Subscription:
    """One downstream consumer's feed: what it gets and how."""

    name: str
    topic: str  # base name; Settings.topic() adds the prefix
    schema: str
    fields: tuple[str, ...]
    rename: dict[str, str] = field(default_factory=dict)
    present: tuple[str, ...] = ()
    equals: dict[str, str] = field(default_factory=dict)
    hold: timedelta = timedelta(0)
    start: str = "beginning"  # beginning | now

    def matches(self, event: dict[str, Any]) -> bool:
        """True when this subscription gets the registration `event` (its filter)."""
        return all(event.get(f) not in (None, "") for f in self.present) and all(
            event.get(f) == value for f, value in self.equals.items()
        )

    @property
    def message_fields(self) -> tuple[str, ...]:
        """The entitled fields under their names in the feed message."""
        return tuple(self.rename.get(f, f) for f in self.fields)


def _subscription(raw: dict[str, Any]) -> Subscription:
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", name):
        raise SubscriptionError(f"subscription name must be lower case letters, digits, dashes: {name!r}")
    unknown = set(raw) - {"name", "topic", "schema", "filter", "fields", "rename", "hold", "start"}
    if unknown:
        raise SubscriptionError(f"{name}: unknown keys {sorted(unknown)}")
    fields = tuple(raw.get("fields", ()))
    bad = [f for f in fields if f not in EVENT_FIELDS]
    if not fields or bad:
        raise SubscriptionError(f"{name}: fields must be a non-empty list of {EVENT_FIELDS}; unknown: {bad}")
    rename = dict(raw.get("rename", {}))
    if set(rename) - set(fields):
        raise SubscriptionError(
            f"{name}: rename names fields it does not get: {sorted(set(rename) - set(fields))}"
        )
    filt = dict(raw.get("filter", {}))
    if set(filt) - {"present", "equals"}:
        raise SubscriptionError(f"{name}: filter knows only `present` and `equals`")
    present, equals = tuple(filt.get("present", ())), dict(filt.get("equals", {}))
    if set(present) - set(EVENT_FIELDS) or set(equals) - set(EVENT_FIELDS):
        raise SubscriptionError(f"{name}: the filter names fields a registration does not have")
    start = raw.get("start", "beginning")
    if start not in ("beginning", "now"):
        raise SubscriptionError(f"{name}: start must be 'beginning' or 'now'")
    for key in ("topic", "schema"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SubscriptionError(f"{name}: `{key}` is required")
    hold = parse_duration(raw["hold"]) if raw.get("hold") else timedelta(0)
    return Subscription(name, raw["topic"], raw["schema"], fields, rename, present, equals, hold, start)


def load(path: Path | None = None, codec: Codec | None = None) -> list[Subscription]:
    """Read and check the subscriptions file (ROD_SUBSCRIPTIONS, else deploy/subscriptions.toml).

    With a codec, each subscription's schema must exist and hold exactly the envelope and
    its entitled fields, so a feed can never carry a field its consumer is not entitled to.
    """
    path = path or Path(os.environ.get("ROD_SUBSCRIPTIONS") or DEFAULT_FILE)
    with path.open("rb") as file:
        raw = tomllib.load(file)
    subscriptions = [_subscription(entry) for entry in raw.get("subscription", [])]
    names = [s.name for s in subscriptions]
    topics = [s.topic for s in subscriptions]
    if len(set(names)) != len(names) or len(set(topics)) != len(topics):
        raise SubscriptionError("subscription names and topics must be unique")
    for sub in subscriptions if codec else ():
        schema = codec.current.get(sub.schema)
        if schema is None:
            raise SubscriptionError(f"{sub.name}: no schema {sub.schema} in schemas/avro/")
        declared = tuple(f["name"] for f in schema.parsed["fields"])
        if declared != ENVELOPE + sub.message_fields:
            raise SubscriptionError(
                f"{sub.name}: schema {sub.schema} has fields {declared}, "
                f"not the envelope plus {sub.message_fields}"
            )
    return subscriptions
