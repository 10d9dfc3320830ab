"""Finding 3 of issue 13: a diploma number that starts with `-` reaches the CSV downloads as
text a spreadsheet shows, never as a formula. Real API, event store, relay, broker and audit
projection; the report and the bulk feedback as an institution downloads them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from services.audit.periods import Period
from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.audit.reports import ReportWriter
from services.registrar.relay import Relay
from services.registrar.store import EventStore
from tests.integration.apiserver import registration, running_api

CSV_HEADER = "bsn,instellingscode,vestigingscode,sector,opleidingscode,diplomavolgnummer,diplomadatum\n"


def _table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_every_csv_writer_neutralises_formula_cells(settings) -> None:  # type: ignore[no-untyped-def]
    broker = settings.kafka_bootstrap
    with running_api(settings) as api, api.client() as client:
        # "=1+1" is no diploma number (DIPLOMA_NUMBER_INVALID); "-A1-B1" is one
        assert client.post("/v1/results", json=registration(diploma_number="=1+1")).status_code == 422
        result_id = client.post("/v1/results", json=registration(diploma_number="-A1-B1")).json()["result_id"]
        deleted = client.post(f"/v1/results/{result_id}/deletions", json={"reason": "ADMINISTRATIVE_ERROR"})
        assert deleted.status_code == 201, deleted.text

        relay = Relay(EventStore(settings.database_urls["registrar"]), settings, broker)
        relay.catch_up()
        relay.close()
        projection = Projection(settings.database_urls["audit"])
        AuditReader(projection, settings, broker).catch_up()
        now = datetime.now(UTC)
        period = Period.containing(now)
        ReportWriter(projection, settings, None).write(period, now)
        projection.dispose()

        report = client.get(f"/v1/reports/{period.id}", params={"format": "csv"})
        [row] = _table(report.text)
        assert row["diploma_number"] == "'-A1-B1"  # shown as text, never run
        assert (row["result_id"], row["reason"]) == (result_id, "ADMINISTRATIVE_ERROR")  # ids unchanged
        assert client.get(f"/v1/reports/{period.id}").json()["deletions"][0]["diploma_number"] == "-A1-B1"

        bulk = CSV_HEADER + "123456782,25BE,25BE01,HO,56551,-A2,2026-07-01\n"
        upload = client.post("/v1/batches", content=bulk, headers={"content-type": "text/csv"})
        feedback = client.get(upload.json()["feedback"], params={"format": "csv"})
        [line] = _table(feedback.text)
        assert line["outcome"] == "accepted" and not line["result_id"].startswith("'")
        assert (line["record"], line["line"]) == ("1", "2")
