"""The extract service's tables: feed in, lookup, issue, verification, outbox and portals; every
test on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Table, func, select

from services.extract.store import (
    Applied,
    ExtractStore,
    IssuedDraft,
    MessageProblem,
    check_message,
    extracts,
    items,
    offsets,
    portals,
    results,
    withdrawals_pending,
)
from services.kernel.deadletters import DeadLetter, reason
from services.kernel.tokens import hash_token

ALICE = ("BSN", "111222333")
BOB = ("BSN", "123456782")
CAROL = ("ONDERWIJSNUMMER", "101222331")
FEED = "rod.feed.extract.v1"
AT = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[ExtractStore]:
    made = ExtractStore(db_url)
    yield made
    made.dispose()


def delivery(n: int, person: tuple[str, str] = ALICE, diploma_date: date = date(2023, 7, 1)
             ) -> dict[str, Any]:
    """A DELIVERY as fastavro decodes it."""
    return {
        "delivery_id": f"d-{n}", "kind": "DELIVERY", "event_id": f"e-{n}", "result_id": f"r-{n}",
        "delivered_at": AT + timedelta(minutes=n), "withdraws": None,
        "person_kind": person[0], "person_number": person[1], "institution": "21XX", "branch": "01",
        "provider": None, "sector": "MBO", "programme_code": "25180", "programme_name": f"Programme {n}",
        "big_profession": None, "diploma_number": f"D-{n}", "diploma_date": diploma_date,
        "registered_at": AT - timedelta(days=1),
    }


def withdrawal(n: int, at: datetime = AT + timedelta(days=2)) -> dict[str, Any]:
    """The WITHDRAWAL of delivery(n): the envelope only."""
    fields = dict.fromkeys(("person_kind", "person_number", "institution", "branch", "provider", "sector",
                            "programme_code", "programme_name", "big_profession", "diploma_number",
                            "diploma_date", "registered_at"))
    return {"delivery_id": f"w-{n}", "kind": "WITHDRAWAL", "event_id": f"x-{n}", "result_id": f"r-{n}",
            "delivered_at": at, "withdraws": f"d-{n}", **fields}


def rows(store: ExtractStore, table: Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def row_of(store: ExtractStore, delivery_id: str) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(select(results).where(results.c.delivery_id == delivery_id)).one()


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pdf_of(draft: IssuedDraft) -> bytes:
    return f"%PDF {draft.extract_id}".encode()


def ids(found: list[Any]) -> list[str]:
    return [r.result_id for r in found]


# the feed


def test_a_delivery_is_stored_once_and_a_repeat_changes_nothing(store: ExtractStore) -> None:
    assert store.apply([delivery(1)], {}, []) == Applied(delivered=1, withdrawn=0, repeated=0)
    first = row_of(store, "d-1")
    assert store.apply([delivery(1), delivery(1)], {}, []) == Applied(0, 0, 2)
    assert rows(store, results) == 1 and row_of(store, "d-1") == first
    assert first.person_number == ALICE[1] and first.diploma_date == date(2023, 7, 1)
    assert utc(first.delivered_at) == AT + timedelta(minutes=1) and first.withdrawn_at is None


def test_a_withdrawal_takes_its_delivery_back_once(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2)], {}, [])
    assert store.apply([withdrawal(1)], {}, []) == Applied(0, 1, 0)
    gone = row_of(store, "d-1")
    assert utc(gone.withdrawn_at) == AT + timedelta(days=2) and gone.withdrawal_id == "w-1"
    later = withdrawal(1, at=AT + timedelta(days=9))  # a repeat, even one stamped otherwise
    assert store.apply([later, withdrawal(1)], {}, []) == Applied(0, 0, 2)
    assert row_of(store, "d-1") == gone
    assert ids(store.standing(*ALICE)) == ["r-2"]


def test_a_withdrawal_before_its_delivery_waits_and_it_arrives_withdrawn(store: ExtractStore) -> None:
    assert store.apply([withdrawal(1)], {}, []) == Applied(0, 0, 0, pending=1)
    assert store.apply([withdrawal(1)], {}, []) == Applied(0, 0, 1)
    assert rows(store, withdrawals_pending) == 1 and rows(store, results) == 0
    assert store.apply([delivery(1)], {}, []) == Applied(1, 0, 0)
    assert utc(row_of(store, "d-1").withdrawn_at) == AT + timedelta(days=2)
    assert rows(store, withdrawals_pending) == 0 and store.standing(*ALICE) == []
    assert store.apply([withdrawal(1), delivery(1)], {}, []) == Applied(0, 0, 2)
    # in one batch the order does not matter either
    assert store.apply([withdrawal(2), delivery(2)], {}, []) == Applied(1, 1, 0)
    assert row_of(store, "d-2").withdrawal_id == "w-2" and store.standing(*ALICE) == []


def test_concurrent_batches_record_every_message_once(store: ExtractStore) -> None:
    deliveries = [delivery(n) for n in range(1, 301)]
    early = [withdrawal(n) for n in range(1, 301, 3)]
    plans = [[deliveries, early], [early, deliveries], [deliveries + early], [early + deliveries]]
    with ThreadPoolExecutor(len(plans)) as pool:
        done = [a for outcome in pool.map(lambda plan: [store.apply(b, {}, []) for b in plan], plans)
                for a in outcome]
    assert sum(a.delivered for a in done) == 300
    assert sum(a.withdrawn + a.pending for a in done) == 100
    assert sum(a.repeated for a in done) == 3 * 400
    assert rows(store, withdrawals_pending) == 0 and len(store.standing(*ALICE)) == 200


def test_offsets_and_dead_letters_move_with_the_rows(store: ExtractStore) -> None:
    cls, code, message = reason(MessageProblem("EVENT_INCOMPLETE", "person_number"))
    letter = DeadLetter(FEED, 0, 7, b"r-9", b"\xc3\x01junk", cls, code, message)
    store.apply([delivery(1)], {(FEED, 0): (8, b"\x01" * 16), (FEED, 1): (3, None)}, [letter])
    assert store.stored_offsets() == {(FEED, 0): (8, b"\x01" * 16), (FEED, 1): (3, None)}
    assert store.deadletters.counts() == (1, 1)
    store.apply([], {(FEED, 0): (9, b"\x02" * 16)}, [letter])  # the same letter again: kept once
    assert store.stored_offsets()[(FEED, 0)] == (9, b"\x02" * 16) and rows(store, offsets) == 2
    broken = {**delivery(2), "person_number": None}
    with pytest.raises(MessageProblem) as caught:  # nothing of the batch is kept
        store.apply([delivery(3), broken], {(FEED, 0): (11, None)}, [])
    assert caught.value.code == "EVENT_INCOMPLETE" and ALICE[1] not in str(caught.value)
    assert rows(store, results) == 1 and store.stored_offsets()[(FEED, 0)] == (9, b"\x02" * 16)


def test_a_message_that_cannot_be_kept_is_named_by_code_and_field_only() -> None:
    for message, code in (
        ({**delivery(1), "kind": "UPDATE"}, "EVENT_TYPE_UNKNOWN"),
        ({**delivery(1), "diploma_date": None}, "EVENT_INCOMPLETE"),
        ({**withdrawal(1), "withdraws": None}, "EVENT_INCOMPLETE"),
        ({**delivery(1), "person_number": ALICE[1] * 3}, "PROCESSING_FAILED"),
    ):
        with pytest.raises(MessageProblem) as caught:
            check_message(message)
        assert caught.value.code == code and ALICE[1] not in str(caught.value)
    check_message(delivery(1))
    check_message(withdrawal(1))


# lookup and issue


def test_a_lookup_shows_only_that_persons_standing_results(store: ExtractStore) -> None:
    store.apply([delivery(1, diploma_date=date(2024, 1, 5)), delivery(2, diploma_date=date(2020, 6, 1)),
                 delivery(3), delivery(4, BOB), delivery(5, ("ONDERWIJSNUMMER", ALICE[1]))], {}, [])
    store.apply([withdrawal(3)], {}, [])
    found = store.standing(*ALICE)
    assert ids(found) == ["r-2", "r-1"]  # by diploma date
    assert found[0].programme_name == "Programme 2" and found[0].delivery_id == "d-2"
    assert found[0].event_id == "e-2" and found[0].diploma_date == date(2020, 6, 1)
    assert ids(store.standing(*BOB)) == ["r-4"] and store.standing(*CAROL) == []


def test_issue_of_all_standing_results_and_of_some(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2), delivery(3, BOB)], {}, [])
    drafts: list[IssuedDraft] = []

    def render(draft: IssuedDraft) -> bytes:
        drafts.append(draft)
        return pdf_of(draft)

    every = store.issue("mijnduo", *ALICE, None, "nl", render)
    assert every is not None and ids(every.results) == ["r-1", "r-2"]
    draft = drafts[0]
    assert (draft.extract_id, draft.code, draft.issued_at) == (every.extract_id, every.verification_code,
                                                               every.issued_at)
    assert draft.person_number_masked == "******333" and draft.language == "nl" and draft.person_kind == "BSN"
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}", every.verification_code)
    assert every.issued_at.tzinfo is not None and every.issued_at.microsecond % 1000 == 0
    some = store.issue("mijnduo", *ALICE, ["r-2", "r-2"], "en", render)
    assert some is not None and ids(some.results) == ["r-2"] and some.extract_id != every.extract_id
    assert rows(store, extracts) == 2 and rows(store, items) == 3
    assert store.pdf(every.extract_id, "mijnduo") == pdf_of(draft)
    assert store.pdf(every.extract_id, "other-portal") is None and store.pdf("unknown", "mijnduo") is None
    with store.engine.connect() as conn:
        stored = conn.execute(select(extracts).where(extracts.c.extract_id == every.extract_id)).one()
    assert stored.person_number_masked == "******333" and ALICE[1] not in stored
    assert every.verification_code not in stored and stored.portal == "mijnduo"


def test_a_foreign_withdrawn_or_unknown_result_issues_nothing(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2), delivery(3, BOB)], {}, [])
    store.apply([withdrawal(2)], {}, [])
    called: list[IssuedDraft] = []

    def render(draft: IssuedDraft) -> bytes:
        called.append(draft)
        return b"%PDF"

    for wanted in (["r-1", "r-3"], ["r-2"], ["r-9"], ["r-1", "r-2"], []):
        assert store.issue("mijnduo", *ALICE, wanted, "nl", render) is None
    assert store.issue("mijnduo", *CAROL, None, "nl", render) is None  # nothing stands
    assert called == [] and rows(store, extracts) == 0 and rows(store, items) == 0


def test_a_result_withdrawn_while_the_document_renders_issues_nothing(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2)], {}, [])

    def render(draft: IssuedDraft) -> bytes:
        store.apply([withdrawal(2)], {}, [])  # another thread's batch, between lookup and write
        return pdf_of(draft)

    assert store.issue("mijnduo", *ALICE, None, "nl", render) is None
    assert rows(store, extracts) == 0 and rows(store, items) == 0
    issued = store.issue("mijnduo", *ALICE, None, "nl", pdf_of)
    assert issued is not None and ids(issued.results) == ["r-1"]


def test_the_document_renders_outside_the_write_transaction(store: ExtractStore, db_url: str) -> None:
    store.apply([delivery(1)], {}, [])
    locked: list[bool] = []

    def render(draft: IssuedDraft) -> bytes:
        # a writer of its own takes the lock the issue's transaction would hold, without waiting
        if db_url.startswith("sqlite"):
            own = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.2, isolation_level=None)
            own.execute("BEGIN IMMEDIATE")
            own.execute("ROLLBACK")
            own.close()
        else:
            engine = sqlalchemy.create_engine(db_url)
            with engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                conn.exec_driver_sql("SELECT 1 FROM extract_results WHERE delivery_id = 'd-1' FOR UPDATE")
            engine.dispose()
        locked.append(True)
        return pdf_of(draft)

    assert store.issue("mijnduo", *ALICE, None, "nl", render) is not None and locked == [True]


# verification


def test_verification_valid_then_withdrawn_since_the_withdrawal(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2, diploma_date=date(2022, 6, 30))], {}, [])
    issued = store.issue("mijnduo", *ALICE, None, "en", pdf_of)
    assert issued is not None
    valid = store.verification(issued.extract_id, issued.verification_code)
    assert valid is not None and valid.status == "valid" and valid.withdrawn_at is None
    assert valid.issued_at == issued.issued_at
    shown = [(r.programme_name, r.institution, r.diploma_date, r.status, r.withdrawn_at)
             for r in valid.results]
    assert shown == [
        ("Programme 2", "21XX", date(2022, 6, 30), "standing", None),
        ("Programme 1", "21XX", date(2023, 7, 1), "standing", None),
    ]
    store.apply([withdrawal(1, at=AT + timedelta(days=5)), withdrawal(2, at=AT + timedelta(days=3))], {}, [])
    gone = store.verification(issued.extract_id, issued.verification_code)
    assert gone is not None and gone.status == "withdrawn" and gone.withdrawn_at == AT + timedelta(days=3)
    assert [(r.status, r.withdrawn_at) for r in gone.results] == [
        ("withdrawn", AT + timedelta(days=3)), ("withdrawn", AT + timedelta(days=5))
    ]
    assert store.issue("mijnduo", *ALICE, None, "en", pdf_of) is None  # nothing stands any more


def test_a_wrong_code_and_an_unknown_id_look_the_same_and_a_code_reads_loosely(store: ExtractStore) -> None:
    store.apply([delivery(1)], {}, [])
    issued = store.issue("mijnduo", *ALICE, None, "nl", pdf_of)
    assert issued is not None
    code = issued.verification_code
    other = ("1" if code[0] != "1" else "2") + code[1:]
    assert store.verification(issued.extract_id, other) is None
    assert store.verification("00000000-0000-4000-8000-000000000000", code) is None
    assert store.verification(issued.extract_id, "") is None
    for typed in (code.lower(), code.replace("-", ""), f" {code.lower().replace('-', ' ')} "):
        found = store.verification(issued.extract_id, typed)
        assert found is not None and found.status == "valid"
    loose = code.replace("1", "l").replace("0", "o")  # Crockford: l reads as 1, o as 0
    assert store.verification(issued.extract_id, loose) is not None


# outbox


def test_the_outbox_holds_each_result_of_an_extract_until_published(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2)], {}, [])
    issued = store.issue("mijnduo", *ALICE, None, "nl", pdf_of)
    assert issued is not None
    waiting = store.unpublished()
    assert [(o.extract_id, o.result_id, o.event_id, o.institution, o.issued_at) for o in waiting] == [
        (issued.extract_id, "r-1", "e-1", "21XX", issued.issued_at),
        (issued.extract_id, "r-2", "e-2", "21XX", issued.issued_at),
    ]
    assert len(store.unpublished(limit=1)) == 1
    store.mark_published([(issued.extract_id, "r-1")])
    assert [o.result_id for o in store.unpublished()] == ["r-2"]
    store.mark_published([(o.extract_id, o.result_id) for o in waiting])
    store.mark_published([])
    assert store.unpublished() == [] and rows(store, items) == 2


# portals and metrics


def test_portal_tokens_are_stored_as_hashes_only(store: ExtractStore) -> None:
    token = store.add_portal("mijnduo")
    assert token.startswith("rodp_") and len(token) > 40
    with store.engine.connect() as conn:
        stored = conn.execute(select(portals)).one()
    assert stored.token_hash == hash_token(token) and token not in stored
    assert store.cached_portal(token) is None
    assert store.portal_for(token) == "mijnduo" and store.cached_portal(token) == "mijnduo"
    assert store.portal_for(token + "x") is None and store.portal_for("rodp_unknown") is None
    with pytest.raises(ValueError, match="mijnduo"):
        store.add_portal("mijnduo")
    assert store.portal_for(store.add_portal("other")) == "other"


def test_counts_for_metrics(store: ExtractStore) -> None:
    store.apply([delivery(1), delivery(2), delivery(3, BOB)], {}, [])
    store.apply([withdrawal(3)], {}, [])
    store.issue("mijnduo", *ALICE, None, "nl", pdf_of)
    counts = store.counts()
    assert (counts.standing, counts.withdrawn, counts.extracts, counts.unpublished) == (2, 1, 1, 2)
    assert (counts.deadletters_open, counts.deadletters) == (0, 0)
