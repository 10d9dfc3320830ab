"""Dead letters: one table shape, reasons free of personal data, the operator's counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError
from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.exc import OperationalError

from services.kernel.codec import SCHEMA_DIR, Codec, DecodeError
from services.kernel.database import make_engine, writing
from services.kernel.deadletters import (
    DeadLetter,
    DeadLetterBook,
    add_missing_columns,
    deadletter_table,
    is_transient,
    reason,
)
from services.kernel.settings import Settings
from services.operations import deadletters as ops


def _letter(offset: int, value: bytes = b"bsn 111222333 garbage") -> DeadLetter:
    cls, code, message = reason(DecodeError("NOT_SINGLE_OBJECT", "bsn 111222333"))
    return DeadLetter("rod.results.v1", 0, offset, b"k", value, cls, code, message)


def _book(tmp_path: Path, name: str = "audit_deadletters", service: str = "audit") -> DeadLetterBook:
    engine = make_engine(f"sqlite:///{tmp_path / (service + '.db')}")
    metadata = MetaData()
    table = deadletter_table(metadata, name)
    metadata.create_all(engine)
    return DeadLetterBook(engine, table, service)


def test_a_reason_is_a_code_and_a_fixed_message_never_the_records_content() -> None:
    for exc in (
        DecodeError("SCHEMA_UNKNOWN", "fingerprint 1112223330000000"),
        ValueError("EVENT_INCOMPLETE: bsn 111222333 has no result id"),
        KeyError("111222333"),
    ):
        _cls, code, message = reason(exc)
        assert "111222333" not in message and "1112223" not in message
        assert code in ("SCHEMA_UNKNOWN", "EVENT_INCOMPLETE", "PROCESSING_FAILED")
    assert reason(KeyError("x"))[1:] == (
        "PROCESSING_FAILED",
        "KeyError: the service could not act on this record",
    )


def test_transient_faults_are_never_dead_letters() -> None:
    assert is_transient(OperationalError("select 1", {}, Exception("gone")))
    assert is_transient(KafkaTimeoutError())
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(DecodeError("NOT_SINGLE_OBJECT", "x"))
    assert not is_transient(ValueError("EVENT_INCOMPLETE: x"))


def test_headers_carry_kafka_connects_names_and_the_original_bytes_stay_apart() -> None:
    headers = dict(_letter(7).headers("pre.rod.results.v1", "audit"))
    assert headers == {
        "__connect.errors.topic": b"pre.rod.results.v1",
        "__connect.errors.partition": b"0",
        "__connect.errors.offset": b"7",
        "__connect.errors.exception.class.name": b"services.kernel.codec.DecodeError",
        "__connect.errors.exception.message": (
            b"NOT_SINGLE_OBJECT: the value is not an Avro single-object message"
        ),
        "rod.service": b"audit",
        "rod.attempt": b"1",
    }


def test_a_letter_is_recorded_once_and_closes_once(tmp_path: Path) -> None:
    book = _book(tmp_path)
    for _ in range(2):  # a record read twice (a restart before the offsets moved) is one letter
        with writing(book.engine) as conn:
            book.record(conn, [_letter(3), _letter(4)])
    assert book.counts() == (2, 2)
    assert [x.offset for x in book.unpublished()] == [3, 4]
    book.mark_published(None, book.unpublished())
    assert book.unpublished() == []
    first, second = book.list()
    again = book.record_failed_replay(first.id, DecodeError("SCHEMA_UNKNOWN", "x"))
    assert again is not None and (again.attempt, again.error_code) == (2, "SCHEMA_UNKNOWN")
    assert [x.offset for x in book.unpublished()] == [3]  # the new attempt goes out again
    assert book.get(first.id).status == "open"
    assert book.discard(second.id, "known garbage", "alice")
    assert not book.discard(second.id, "twice", "alice")
    assert book.mark_replayed(first.id, "alice")
    closed = book.get(second.id)
    assert (closed.status, closed.closed_by, closed.close_reason) == ("discarded", "alice", "known garbage")
    assert book.counts() == (0, 2)


def test_an_older_table_gets_the_close_columns(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = MetaData()
    Table("audit_deadletters", old, Column("id", Integer, primary_key=True))
    old.create_all(engine)
    table = deadletter_table(MetaData(), "audit_deadletters")
    add_missing_columns(engine, table)
    add_missing_columns(engine, table)
    with engine.connect() as conn:
        names = [r[1] for r in conn.exec_driver_sql("PRAGMA table_info(audit_deadletters)")]
    assert {"closed_at", "closed_by", "close_reason"} <= set(names)


def test_the_operators_counts_cover_every_service_and_tables_not_made_yet(tmp_path: Path) -> None:
    settings = Settings.from_env({"ROD_DATA_DIR": str(tmp_path)})
    empty = {"open": 0, "total": 0}
    assert ops.counts(settings) == {"open": 0, "total": 0, "by_service": dict.fromkeys(ops.TABLES, empty)}
    book = _book(tmp_path)
    with writing(book.engine) as conn:
        book.record(conn, [_letter(1), _letter(2)])
    book.discard(book.list()[0].id, "noise", "bob")
    found = ops.counts(settings)
    assert (found["open"], found["total"]) == (1, 2)
    assert found["by_service"]["audit"] == {"open": 1, "total": 2}
    listed = ops.list_all(settings)
    assert [x["id"] for x in listed] == ["audit:1", "audit:2"]
    assert listed[1]["origin"] == {"topic": "rod.results.v1", "partition": 0, "offset": 2}
    assert listed[1]["reason"]["code"] == "NOT_SINGLE_OBJECT"
    assert "111222333" not in repr(listed)


def test_rod_schema_path_adds_schema_versions_to_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Codec().current["ResultRegistered"].version == 1
    schema = json.loads((SCHEMA_DIR / "ResultRegistered.v1.avsc").read_text())
    schema["fields"].insert(len(schema["fields"]) - 1, {"name": "honours", "type": ["null", "string"],
                                                         "default": None})
    (tmp_path / "ResultRegistered.v2.avsc").write_text(json.dumps(schema))
    monkeypatch.setenv("ROD_SCHEMA_PATH", os.pathsep.join([str(tmp_path / "absent"), str(tmp_path)]))
    fixed = Codec()
    assert fixed.current["ResultRegistered"].version == 2
    assert fixed.current["ResultDeleted"].version == 1  # the shipped ones are all still there
    written = fixed.encode("DeliveryReceipt", {"delivery_id": "d", "subscription": "s", "kind": "DELIVERY",
                                               "event_id": "e", "result_id": "r", "institution": "25BE",
                                               "delivered_at": 0})
    assert Codec(extra_dirs=[]).decode(written)[0] == "DeliveryReceipt"
