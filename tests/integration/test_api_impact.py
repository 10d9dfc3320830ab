"""Chain impact: receipts on rod.deliveries.v1 and rod.extracts.v1 (real broker) show up in the
answer to a deletion and its dry run; the same receipt twice changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy

from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.impact import DELIVERIES_TOPIC, EXTRACTS_TOPIC, ImpactReader
from tests.integration.apiserver import registration, running_api


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def receipt(subscription: str, kind: str, event_id: str, result_id: str) -> dict:
    return {"delivery_id": f"{subscription}:{event_id}:{kind}", "subscription": subscription, "kind": kind,
            "event_id": event_id, "result_id": result_id, "institution": "25BE",
            "delivered_at": datetime.now(UTC)}


def test_deliveries_and_extracts_are_listed_in_the_dry_run_and_the_deletion(settings: Settings) -> None:
    bootstrap = settings.kafka_bootstrap
    assert bootstrap
    kafka.ensure_topics(settings, bootstrap, [DELIVERIES_TOPIC, EXTRACTS_TOPIC])
    codec = Codec()
    with running_api(settings) as api, api.client() as client:
        registered = client.post("/v1/results", json=registration()).json()
        other = client.post("/v1/results", json=registration(diploma_number="API-2")).json()
        result_id, event_id = registered["result_id"], registered["event_id"]
        dry = client.post(f"/v1/results/{result_id}/deletions?dry_run=true", json={"reason": "OTHER",
                                                                                   "explanation": "test"})
        assert dry.json()["impact"] == {
            "consumers": [], "acknowledged": [], "deliveries": [], "extract_issued": False, "extracts": [],
            "has_impact": False,
            "message": dry.json()["impact"]["message"]}

        stop = threading.Event()
        reader = ImpactReader(api.api.impact_store, settings, bootstrap)
        thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
        thread.start()
        producer = kafka.producer(bootstrap)
        deliveries, extracts = settings.topic(DELIVERIES_TOPIC), settings.topic(EXTRACTS_TOPIC)
        cibg = codec.encode("DeliveryReceipt", receipt("cibg-big", "DELIVERY", event_id, result_id))
        for value in (
            cibg, cibg,  # the same receipt twice
            codec.encode("DeliveryReceipt", receipt("mijnoverheid", "DELIVERY", event_id, result_id)),
            codec.encode("DeliveryReceipt",
                         receipt("extract", "DELIVERY", other["event_id"], other["result_id"])),
            b"not an avro message",
        ):
            producer.send(deliveries, key=result_id.encode(), value=value)
        issued = codec.encode("ExtractIssued", {
            "extract_id": "X-1", "result_id": result_id, "event_id": event_id, "institution": "25BE",
            "issued_at": datetime.now(UTC)})
        producer.send(extracts, key=result_id.encode(), value=issued)
        producer.send(extracts, key=result_id.encode(), value=issued)
        producer.flush()

        def dry_run() -> dict:
            response = client.post(f"/v1/results/{result_id}/deletions", params={"dry_run": "true"},
                                   json={"reason": "ADMINISTRATIVE_ERROR"})
            assert response.status_code == 200, response.text
            return response.json()["impact"]

        wait_for(lambda: dry_run() == {**dry_run(), "consumers": ["cibg-big", "mijnoverheid"],
                                        "extract_issued": True})
        impact = dry_run()
        assert impact["has_impact"] is True and impact["message"].startswith("Let op")
        assert [x["extract_id"] for x in impact["extracts"]] == ["X-1"]  # named, with its issue time
        assert impact["extracts"][0]["issued_at"].endswith("Z")
        assert api.events() == 2  # the dry runs wrote nothing

        deleted = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        assert deleted.status_code == 201
        assert deleted.json()["impact"] == impact

        # The distributor withdraws what it delivered: that never erases the delivery itself.
        withdrawal = receipt("cibg-big", "WITHDRAWAL", deleted.json()["event_id"], result_id)
        producer.send(deliveries, key=result_id.encode(), value=codec.encode("DeliveryReceipt", withdrawal))
        producer.flush()
        producer.close()
        engine = sqlalchemy.create_engine(settings.database_urls["registrar"])

        def rows(table: str) -> int:
            with engine.connect() as conn:
                return conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one()

        try:
            wait_for(lambda: rows("registrar_chain_impact") == 4)
            assert rows("registrar_extracts") == 1
        finally:
            engine.dispose()
            stop.set()
            thread.join(30)
        after = api.api.impact_store.impact(result_id, event_id)
        assert (after.consumers, after.extract_issued) == (["cibg-big", "mijnoverheid"], True)
