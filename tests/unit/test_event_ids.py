"""Event and result ids: derived ids must stay exactly what uuid5 gives (they are on the topic)."""

from __future__ import annotations

import time
import uuid

from services.kernel.identifiers import EVENT_NAMESPACE, event_id_for
from services.registrar.store import new_result_id


def test_event_ids_are_the_uuid5_of_result_and_version() -> None:
    result_id = new_result_id()
    for version in (1, 2, 10, 123):
        assert event_id_for(result_id, version) == str(uuid.uuid5(EVENT_NAMESPACE, f"{result_id}/{version}"))


def test_result_ids_are_unique_version_7_uuids_in_creation_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_result_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
        assert before <= parsed.int >> 80 <= after  # the leading 48 bits: Unix milliseconds
    later = new_result_id()
    time.sleep(0.002)
    assert new_result_id() > later
