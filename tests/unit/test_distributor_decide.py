"""The distributor's pure parts: subscriptions config, the per-event decision, the feed schemas."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from pathlib import Path

import pytest

from services.distributor import decide as d
from services.distributor.subscriptions import (
    ENVELOPE,
    SubscriptionError,
    load,
    parse_duration,
)
from services.kernel.codec import Codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avro"
RECORDED = dt.datetime(2026, 7, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def subs() -> dict:
    return {s.name: s for s in load(codec=Codec())}


def registered(**changes: object) -> dict:
    event = {
        "event_id": "e1",
        "result_id": "r1",
        "version": 1,
        "position": 1,
        "recorded_at": RECORDED,
        "institution": "25BE",
        "batch_id": None,
        "person_kind": "BSN",
        "person_number": "111222333",
        "branch": "25BE01",
        "provider": None,
        "sector": "HO",
        "programme_code": "56551",
        "programme_name": "B Geneeskunde",
        "big_profession": "arts",
        "diploma_number": "D1",
        "diploma_date": dt.date(2026, 7, 1),
        "warnings": [],
        "prev_hash": b"",
        "hash": b"",
    }
    return {**event, **changes}


def deleted() -> dict:
    return {
        "event_id": "e2",
        "result_id": "r1",
        "version": 2,
        "position": 2,
        "recorded_at": RECORDED,
        "institution": "25BE",
        "registered_event_id": "e1",
        "reason": "FRAUD",
    }


def test_the_shipped_subscriptions_are_those_of_the_domain(subs: dict) -> None:
    assert list(subs) == ["cibg-big", "mijnoverheid", "extract"]
    assert subs["cibg-big"].message_fields == (
        "person_kind",
        "person_number",
        "programme_code",
        "programme_name",
        "big_profession",
        "institution",
        "diploma_date",
        "diploma_number",
    )
    assert subs["mijnoverheid"].message_fields == (
        "bsn",
        "programme_name",
        "sector",
        "institution",
        "diploma_date",
    )
    assert all(s.hold == timedelta(0) and s.start == "beginning" for s in subs.values())


def test_entitlement_filters(subs: dict) -> None:
    assert subs["cibg-big"].matches(registered())
    assert not subs["cibg-big"].matches(registered(big_profession=None))
    assert not subs["mijnoverheid"].matches(registered(person_kind="ONDERWIJSNUMMER"))
    assert subs["extract"].matches(registered(person_kind="ONDERWIJSNUMMER", big_profession=None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT0S", timedelta(0)),
        ("P1D", timedelta(days=1)),
        ("PT36H", timedelta(hours=36)),
        ("P1W", timedelta(weeks=1)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("pt1.5s", timedelta(seconds=1.5)),
    ],
)
def test_hold_windows_are_iso_8601_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P", "PT", "1D", "P1Y", "P2M", "P1DT", "PT-1S", "24h"])
def test_durations_without_a_fixed_length_or_malformed_are_refused(text: str) -> None:
    with pytest.raises(SubscriptionError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('fields = ["person_number", "favourite_colour"]', "unknown"),
        ('fields = ["person_number"]\nschema = "CibgBigFeedMessage"', "not the envelope"),
        ('fields = ["person_number"]\nstart = "yesterday"', "start"),
        ('fields = ["person_number"]\nhold = "P1M"', "duration"),
    ],
)
def test_a_subscription_that_does_not_fit_its_schema_or_the_rules_is_refused(
    tmp_path: Path, extra: str, message: str
) -> None:
    body = 'name = "x"\ntopic = "rod.feed.x.v1"\nschema = "MijnOverheidFeedMessage"\n'
    lines = {line.split(" =")[0]: line for line in (body + extra).splitlines()}
    path = tmp_path / "subs.toml"
    path.write_text("[[subscription]]\n" + "\n".join(lines.values()) + "\n")
    with pytest.raises(SubscriptionError, match=message):
        load(path, Codec())


def test_a_registration_is_delivered_with_only_the_entitled_fields(subs: dict) -> None:
    decision = d.decide_registered(subs["mijnoverheid"], registered(), paused=False)
    assert (decision.state, decision.kind) == ("pending", "DELIVERY")
    assert decision.delivery_id == d.delivery_id("mijnoverheid", "e1", "DELIVERY")
    assert set(decision.message) == set(ENVELOPE) - {"delivered_at"} | {
        "bsn",
        "programme_name",
        "sector",
        "institution",
        "diploma_date",
    }
    assert decision.message["bsn"] == "111222333"


def test_a_filtered_registration_is_skipped(subs: dict) -> None:
    decision = d.decide_registered(subs["cibg-big"], registered(big_profession=None), paused=False)
    assert (decision.state, decision.reason, decision.message) == ("skipped", "FILTERED", None)


def test_a_hold_window_or_a_pause_holds_the_delivery(subs: dict) -> None:
    sub = subs["extract"]
    windowed = type(sub)(**{**vars(sub), "hold": timedelta(hours=2)})
    decision = d.decide_registered(windowed, registered(), paused=False)
    assert (decision.state, decision.reason, decision.due_at) == (
        "held",
        "HOLD_WINDOW",
        RECORDED + timedelta(hours=2),
    )
    paused = d.decide_registered(sub, registered(), paused=True)
    assert (paused.state, paused.reason) == ("held", "PAUSED")


@pytest.mark.parametrize(
    ("prior", "state", "kind", "reason"),
    [
        (None, "skipped", None, "NOT_DELIVERED"),
        (d.Prior("skipped", None), "skipped", None, "NOT_DELIVERED"),
        (d.Prior("cancelled", "x"), "skipped", None, "NOT_DELIVERED"),
        (d.Prior("held", "x"), "skipped", None, "HOLD_CANCELLED"),
        (d.Prior("pending", "x"), "pending", "WITHDRAWAL", None),
        (d.Prior("published", "x"), "pending", "WITHDRAWAL", None),
    ],
)
def test_a_deletion_withdraws_only_what_may_have_been_delivered(
    subs: dict, prior: d.Prior | None, state: str, kind: str | None, reason: str | None
) -> None:
    decision = d.decide_deleted(subs["cibg-big"], deleted(), prior, paused=False)
    assert (decision.state, decision.kind, decision.reason) == (state, kind, reason)
    assert decision.cancels == ("e1" if reason == "HOLD_CANCELLED" else None)
    if kind:
        assert decision.message["withdraws"] == "x"
        assert all(decision.message[f] is None for f in subs["cibg-big"].message_fields)


def test_a_withdrawal_while_paused_waits_for_the_resume(subs: dict) -> None:
    decision = d.decide_deleted(subs["extract"], deleted(), d.Prior("published", "x"), paused=True)
    assert (decision.state, decision.kind, decision.reason) == ("held", "WITHDRAWAL", "PAUSED")


def test_delivery_ids_are_what_the_message_is() -> None:
    assert d.delivery_id("extract", "e1", "DELIVERY") == d.delivery_id("extract", "e1", "DELIVERY")
    assert (
        len({d.delivery_id(s, "e1", k) for s in ("extract", "cibg-big") for k in ("DELIVERY", "WITHDRAWAL")})
        == 4
    )


def test_a_start_now_subscription_ignores_what_came_before_it(subs: dict) -> None:
    now_sub = type(subs["extract"])(**{**vars(subs["extract"]), "start": "now"})
    assert not d.applies(now_sub, RECORDED + timedelta(seconds=1), registered())
    assert d.applies(now_sub, RECORDED, registered())
    assert d.applies(subs["extract"], RECORDED + timedelta(days=1), registered())


@pytest.mark.parametrize("name", ["CibgBigFeedMessage", "MijnOverheidFeedMessage", "ExtractFeedMessage"])
def test_first_version_feed_samples_still_decode(name: str) -> None:
    decoded_name, message = Codec().decode((FIXTURES / f"{name}.v1.bin").read_bytes())
    assert decoded_name == name
    assert (message["kind"], message["institution"], message["diploma_date"]) == (
        "DELIVERY",
        "25BE",
        dt.date(2026, 7, 1),
    )
    assert message["delivered_at"] == dt.datetime(2026, 7, 2, 9, 30, tzinfo=dt.UTC)
