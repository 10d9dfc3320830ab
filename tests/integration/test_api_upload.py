"""A 50 MB bulk file of 200,000 records uploaded over HTTP: it completes, its feedback can be
fetched again, and the API server's memory stays flat (RSS under 300 MB).

The server is the registrar's app as its own process (the uvicorn command of production's
process-per-service layout), so the RSS is the API's alone; `rod up` serves the same app
beside the other services' threads."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from services.kernel.settings import Settings
from tests.fixtures.bulkfiles import sample_rows, write_csv
from tests.integration.api_process import api_process
from tests.integration.apiserver import CATALOGUE
from tests.support import run_rod, settings_env

RECORDS = 200_000
RSS_LIMIT = 300 * 1024 * 1024
# A remark institutions do send along; it brings a record to a realistic ~250 bytes.
REMARK = ("Diploma uitgereikt tijdens de zomeruitreiking; "
          "gegevens overgenomen uit de leerlingadministratie. ") * 2


def chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


@pytest.mark.slow
def test_a_50_mb_upload_completes_with_flat_memory_and_its_feedback_fetches_again(
    broker: str, tmp_path: Path
) -> None:
    # The embedded default: each service its own SQLite file in the data dir.
    settings = Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.", "ROD_CATALOGUE": str(CATALOGUE),
    })
    env = settings_env(settings)
    env.pop("ROD_DATABASE_URL")
    file = tmp_path / "big.csv"
    people = ["111222333", "123456782", "249566758", "319072356"]
    rows = ({**row, "bsn": people[i % 4], "diplomadatum": "2026-07-01", "toelichting": REMARK}
            for i, row in enumerate(sample_rows(RECORDS)))
    write_csv(file, rows)
    assert 50_000_000 <= file.stat().st_size < 60_000_000
    token = run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO",
                    env=env, check=True).stdout.strip().splitlines()[-1]

    peak = [0]
    done = threading.Event()

    def sample_rss(pid: int) -> None:
        process = psutil.Process(pid)
        while not done.wait(0.1):
            peak[0] = max(peak[0], process.memory_info().rss)

    with api_process(env) as (proc, url):
        sampler = threading.Thread(target=sample_rss, args=(proc.pid,), daemon=True)
        sampler.start()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
                started = time.monotonic()
                uploaded = client.post("/v1/batches", content=chunks(file))
                upload_seconds = time.monotonic() - started
                assert uploaded.status_code == 201, uploaded.text
                assert uploaded.json()["summary"] == {
                    "accepted": RECORDS, "duplicate": 0, "rejected": 0, "warnings": 0}
                batch_id = uploaded.json()["batch_id"]
                feedback = client.get(f"/v1/batches/{batch_id}/feedback")
                as_csv = client.get(f"/v1/batches/{batch_id}/feedback", params={"format": "csv"})
        finally:
            done.set()
            sampler.join()
    records = feedback.json()["records"]
    assert len(records) == RECORDS
    assert records[-1]["record"] == RECORDS and records[-1]["line"] == RECORDS + 1
    assert all(r["outcome"] == "accepted" for r in records)
    assert as_csv.text.count("\n") == RECORDS + 1
    assert peak[0] < RSS_LIMIT, f"server RSS peaked at {peak[0] / 2**20:.0f} MiB"
    print(f"upload of {file.stat().st_size / 1e6:.0f} MB: {upload_seconds:.1f} s, "
          f"server RSS peak {peak[0] / 2**20:.0f} MiB")
