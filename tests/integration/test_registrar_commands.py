"""Identity, idempotency, conflict and deletion against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.kernel.codec import Codec
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.store import EventStore
from services.registrar.verify import verify

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"


def result(**changes: str) -> dict[str, str]:
    base = {
        "bsn": "111222333",
        "institution": "25BE",
        "branch": "25BE01",
        "sector": "HO",
        "programme_code": "56551",
        "diploma_number": "GEN-2026-1",
        "diploma_date": "2026-07-01",
    }
    return {**base, **changes}


@pytest.fixture
def registrar(db_url: str) -> Registrar:
    registrar = Registrar(EventStore(db_url), Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Universiteit Test", ["HO", "VO"])
    registrar.add_institution("30XX", "Hogeschool Ander", ["HO"])
    return registrar


def events_of(registrar: Registrar, result_id: str) -> list[tuple[str, int, dict]]:
    codec = Codec()
    return [(e.event_type, e.version, codec.decode(e.payload)[1]) for e in registrar.store.stream(result_id)]


def test_register_stores_one_event_with_catalogue_facts(registrar: Registrar) -> None:
    outcome = registrar.register(result(), "25BE")
    assert outcome.outcome == "accepted" and outcome.position == 1 and outcome.version == 1
    [(kind, version, event)] = events_of(registrar, outcome.result_id)
    assert (kind, version) == ("ResultRegistered", 1)
    assert (event["programme_name"], event["big_profession"]) == ("B Geneeskunde", "arts")
    assert outcome.result_id not in ("111222333",) and "111222333" not in outcome.result_id
    assert verify(registrar.store).ok


def test_identical_repeat_is_idempotent_and_writes_nothing(registrar: Registrar) -> None:
    first = registrar.register(result(), "25BE")
    again = registrar.register(result(bsn="111.222.333"), "25BE")
    assert again.outcome == "duplicate"
    assert (again.result_id, again.event_id, again.position) == (
        first.result_id,
        first.event_id,
        first.position,
    )
    assert registrar.store.last_position() == 1


def test_same_key_with_other_data_is_a_conflict(registrar: Registrar) -> None:
    registrar.register(result(), "25BE")
    conflict = registrar.register(result(diploma_date="2026-06-30"), "25BE")
    assert conflict.outcome == "rejected" and conflict.codes == ["RESULT_CONFLICT"]
    assert registrar.store.last_position() == 1


def test_deletion_then_reregistration_is_a_new_version_of_the_same_result(registrar: Registrar) -> None:
    first = registrar.register(result(), "25BE")
    deleted = registrar.delete(first.result_id, "ADMINISTRATIVE_ERROR", None, "25BE")
    assert deleted.outcome == "accepted" and deleted.version == 2
    again = registrar.delete(first.result_id, "ADMINISTRATIVE_ERROR", None, "25BE")
    assert again.codes == ["RESULT_ALREADY_DELETED"]
    back = registrar.register(result(programme_code="34560"), "25BE")
    assert (back.outcome, back.result_id, back.version) == ("accepted", first.result_id, 3)
    history = events_of(registrar, first.result_id)
    assert [(k, v) for k, v, _ in history] == [
        ("ResultRegistered", 1),
        ("ResultDeleted", 2),
        ("ResultRegistered", 3),
    ]
    assert history[1][2]["registered_event_id"] == first.event_id
    assert verify(registrar.store).ok


def test_deletion_of_unknown_or_foreign_result_writes_nothing(registrar: Registrar) -> None:
    assert registrar.delete("no-such-result", "OTHER", "typo", "25BE").codes == ["RESULT_NOT_FOUND"]
    theirs = registrar.register(result(institution="30XX", branch="30XX01"), "30XX")
    foreign = registrar.delete(theirs.result_id, "ADMINISTRATIVE_ERROR", None, "25BE")
    assert foreign.codes == ["INSTITUTION_FORBIDDEN"]
    assert registrar.delete(theirs.result_id, "FRAUD", " ", "30XX").codes == ["EXPLANATION_REQUIRED"]
    assert registrar.delete(theirs.result_id, "BORED", None, "30XX").codes == ["DELETION_REASON_INVALID"]
    assert registrar.store.last_position() == 1


def test_concurrent_registrations_of_one_key_make_one_event(registrar: Registrar) -> None:
    outcomes = []
    barrier = threading.Barrier(8)

    def register(i: int) -> None:
        barrier.wait()
        date = "2026-07-01" if i % 2 else "2026-07-02"
        outcomes.append(registrar.register(result(diploma_date=date), "25BE"))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [o.outcome for o in outcomes].count("accepted") == 1
    assert {o.outcome for o in outcomes} <= {"accepted", "duplicate", "rejected"}
    assert registrar.store.last_position() == 1
    assert verify(registrar.store).ok
