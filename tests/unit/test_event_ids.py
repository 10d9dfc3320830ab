"""Event and result ids: derived ids must stay exactly what uuid5 gives (they are on the topic)."""

from __future__ import annotations

import uuid

from services.registrar.store import EVENT_NAMESPACE, event_id_for, new_result_id


def test_event_ids_are_the_uuid5_of_result_and_version() -> None:
    result_id = new_result_id()
    for version in (1, 2, 10, 123):
        assert event_id_for(result_id, version) == str(uuid.uuid5(EVENT_NAMESPACE, f"{result_id}/{version}"))


def test_result_ids_are_random_version_4_uuids() -> None:
    ids = {new_result_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
