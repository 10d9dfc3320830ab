"""The audit service against the real broker and database: a scripted year of events gives
reports that count every deletion in exactly one period, rebuild byte for byte, stop at a
broken chain, are published once by the scheduler, and hold no person number."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import html5lib
import pytest

from services.audit.periods import Period, english_date
from services.audit.projection import Projection
from services.audit.reader import AuditReader
from services.audit.reports import REPORTS_TOPIC, ChainBroken, ReportWriter
from services.audit.scheduler import Scheduler
from services.audit.service import AuditService
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from tests.conftest import postgres_schema_url
from tests.integration.audit_support import ams, scripted_year
from tests.support import PERSON_NUMBERS, read_topic, run_rod, settings_env

AFTER_BOTH = datetime(2026, 1, 15, tzinfo=UTC)  # both 2025 periods closed, 2026-05 open


def make_settings(tmp_path: Path, broker: str, db_url: str | None = None) -> Settings:
    return Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path / "var"),
        "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_DATABASE_URL": db_url or f"sqlite:///{tmp_path / 'audit.db'}",
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
    })


@pytest.fixture
def audit_settings(tmp_path: Path, broker: str) -> Settings:
    """SQLite and the session broker (the PostgreSQL run is the rebuild test's)."""
    return make_settings(tmp_path, broker)


def built(settings: Settings) -> Projection:
    projection = Projection(settings.database_urls["audit"])
    AuditReader(projection, settings, settings.kafka_bootstrap or "").catch_up()
    return projection


def bodies(settings: Settings, period: str) -> dict[str, bytes]:
    folder = settings.data_dir / "reports" / period
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def assert_html5_without_external_references(body: bytes) -> None:
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    document = parser.parse(body)  # raises on any HTML5 parse error
    tags = [element.tag for element in document.iter()]
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    for element in document.iter():
        for name in element.attrib:
            assert name.split("}")[-1].lower() not in ("src", "href", "srcset", "action", "data"), name
            assert not name.lower().startswith("on"), name  # no event handler attributes
    assert b"url(" not in body and b"@import" not in body


def test_a_scripted_year_is_reported_deletion_by_deletion_in_exactly_one_period(
    audit_settings: Settings,
) -> None:
    year = scripted_year()
    # every message twice: a repeat changes nothing
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "", twice=True)
    projection = built(audit_settings)
    assert projection.counts()["audit_events"] == len(year.log.results)
    assert projection.status().verified == len(year.log.results) and not projection.status().breaks
    writer = ReportWriter(projection, audit_settings, audit_settings.kafka_bootstrap)
    published = []
    for period in ("2025-05", "2025-11"):
        written = writer.write(Period.parse(period), AFTER_BOTH)
        writer.publish(written, AFTER_BOTH)
        published += written
        assert {w.scope for w in written} == {"25BE", "30XX", "40MB", "national"}
        for w in written:
            assert not w.provisional
            content = json.loads((audit_settings.data_dir / "reports" / w.files["json"]).read_bytes())
            if w.scope == "national":
                assert content["totals"]["deletions"] == sum(len(v) for v in year.deleted_in[period].values())
                continue
            expected = sorted(year.deleted_in[period].get(w.scope, []))
            assert content["totals"]["deletions"] == len(expected) == w.deletions
            assert sorted(row["result_id"] for row in content["deletions"]) == expected
            csv_rows = (audit_settings.data_dir / "reports" / w.files["csv"]).read_text().splitlines()
            assert len(csv_rows) == 1 + len(expected)

    winter = json.loads(bodies(audit_settings, "2025-05")["25BE.json"])
    summer = json.loads(bodies(audit_settings, "2025-11")["25BE.json"])
    winter_ids = {r["result_id"] for r in winter["deletions"]}
    summer_ids = {r["result_id"] for r in summer["deletions"]}
    assert year.boundary["apr30"] in winter_ids and year.boundary["may1"] in summer_ids
    assert year.boundary["oct31"] in summer_ids
    assert year.boundary["nov1"] not in winter_ids | summer_ids  # it is 2026-05's
    assert winter["by_reason"] == {  # every reason; 30 April's too
        "FRAUD": 1, "ADMINISTRATIVE_ERROR": 1, "EXTRA_COURSES_OR_GRADE_IMPROVEMENT": 1,
        "WRONG_PERSON_OR_DATA": 1, "OTHER": 2}
    assert winter["by_month"] == {"2024-11": 0, "2024-12": 0, "2025-01": 0, "2025-02": 0, "2025-03": 5,
                                  "2025-04": 1}
    apr30 = next(r for r in winter["deletions"] if r["result_id"] == year.boundary["apr30"])
    assert apr30["deleted_at"] == "2025-04-30T23:30:00+02:00"
    assert apr30["person_number"].startswith("******") and len(apr30["person_number"]) == 9

    fraud = next(r for r in winter["deletions"] if r["reason"] == "FRAUD")
    admin = next(r for r in winter["deletions"] if r["reason"] == "ADMINISTRATIVE_ERROR")
    assert (fraud["received_by"], fraud["extract_issued"]) == (["cibg-big"], True)
    assert fraud["confirmed_by"] == ["cibg-big"]  # CIBG acknowledged it before the deletion
    assert winter["chain_impact"]["by_consumer"]["cibg-big"]["confirmed"] == 1
    summer_30xx = json.loads(bodies(audit_settings, "2025-11")["30XX.json"])
    assert all(r["confirmed_by"] == [] for r in summer_30xx["deletions"])  # confirmed only afterwards
    assert "mijnoverheid" in {c for r in summer_30xx["deletions"] for c in r["received_by"]}
    assert (admin["received_by"], admin["extract_issued"]) == ([], False)  # delivered only afterwards
    assert winter["chain_impact"]["any"] == {"count": 1, "share": round(1 / 6, 4)}
    # rate: deletions / registrations of the same period; 25BE registered 12 in winter (4 VO, 8 HO)
    assert winter["totals"] == {"deletions": 6, "registrations": 12, "deletion_rate": 0.5}
    ho = next(s for s in winter["sectors"] if s["sector"] == "HO")
    # 25BE HO: 4 of 8 (the VO ones are i = 0, 3, 6, 9) → 0.5; 30XX HO: 2 of 12 → 0.1667; median 0.3333
    assert (ho["deletion_rate"], ho["sector_median_rate"], ho["institutions_in_sector"]) == (0.5, 0.3333, 2)
    thirty = json.loads(bodies(audit_settings, "2025-11")["30XX.json"])
    assert all(n == 1 for n in thirty["by_reason"].values())
    assert thirty["chain_impact"]["by_consumer"]["mijnoverheid"]["count"] == 5
    assert thirty["chain_impact"]["extract_issued"]["count"] == 0  # issued after the deletion
    assert [h["period"] for h in summer["history"]][-2:] == ["2025-05", "2025-11"]
    assert summer["history"][-2]["deletions"] == 6

    for period in ("2025-05", "2025-11"):
        for name, body in bodies(audit_settings, period).items():
            assert not [n for n in PERSON_NUMBERS if n.encode() in body], name
            if name.endswith(".html"):
                assert_html5_without_external_references(body)

    events = [Codec().decode(r.value)[1] for r in read_topic(
        audit_settings.kafka_bootstrap or "", audit_settings.topic(REPORTS_TOPIC), len(published))]
    assert sorted(e["report_id"] for e in events) == sorted(w.report_id for w in published)
    for e in events:
        for f in e["files"]:
            body = (audit_settings.data_dir / "reports" / f["path"]).read_bytes()
            assert f["sha256"] == hashlib.sha256(body).hexdigest()
    projection.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def rebuilt_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rebuilt.db'}"
    else:
        yield from postgres_schema_url()


def test_a_projection_rebuilt_from_an_empty_database_gives_byte_identical_reports(
    audit_settings: Settings, rebuilt_url: str, tmp_path: Path
) -> None:
    year = scripted_year()
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "")
    first = built(audit_settings)
    ReportWriter(first, audit_settings, None).write(Period.parse("2025-05"), AFTER_BOTH)
    ReportWriter(first, audit_settings, None).write(Period.parse("2025-11"), AFTER_BOTH)
    first.dispose()
    again = Settings(**{**vars(audit_settings), "data_dir": tmp_path / "again",
                        "database_urls": {"audit": rebuilt_url}})
    second = built(again)
    for period in ("2025-05", "2025-11"):
        ReportWriter(second, again, None).write(Period.parse(period), AFTER_BOTH)
        assert bodies(again, period) == bodies(audit_settings, period)
        assert len(bodies(again, period)) == 12  # three institutions and national, three forms
    second.dispose()


def test_a_tampered_event_stops_publication_and_names_its_position(audit_settings: Settings) -> None:
    year = scripted_year()
    forged = next(e["position"] for e in year.log.events if e["name"] == "ResultDeleted")
    year.log.tamper(forged, reason="WRONG_PERSON_OR_DATA")
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "")
    projection = built(audit_settings)
    status = projection.status()
    assert [(b.position, b.code) for b in status.breaks] == [(forged, "HASH_MISMATCH")]
    assert status.verified == forged - 1
    writer = ReportWriter(projection, audit_settings, audit_settings.kafka_bootstrap)
    with pytest.raises(ChainBroken) as broken:
        writer.write(Period.parse("2025-05"), AFTER_BOTH)
    assert f"position {forged}" in str(broken.value)
    scheduler = Scheduler(projection, writer, clock=lambda: AFTER_BOTH)
    assert scheduler.tick() == []
    assert scheduler.blocked(Period.parse("2025-05"), AFTER_BOTH, 0) == (
        f"hash chain broken at position {forged} (HASH_MISMATCH)")
    projection.dispose()

    proc = run_rod("report", "--period", "2025-05", env=settings_env(audit_settings))
    assert proc.returncode == 1
    assert f"position {forged}" in proc.stderr and "CHAIN_BROKEN" in proc.stderr
    assert not (audit_settings.data_dir / "reports" / "2025-05").exists()


def report_events(settings: Settings, at_least: int) -> list[dict]:
    records = read_topic(settings.kafka_bootstrap or "", settings.topic(REPORTS_TOPIC), at_least, timeout=15)
    return [Codec().decode(r.value)[1] for r in records]


def test_the_scheduler_publishes_a_closed_period_once_also_when_started_late_and_twice(
    audit_settings: Settings,
) -> None:
    year = scripted_year()
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "")
    bootstrap = audit_settings.kafka_bootstrap or ""
    projection = built(audit_settings)
    writer = ReportWriter(projection, audit_settings, bootstrap)
    before_close = Scheduler(projection, writer, clock=lambda: ams(2025, 4, 30, 23, 59))
    assert before_close.due(before_close.clock()) == []  # 2025-05 is still open: never published
    assert before_close.tick() == []
    projection.dispose()

    # `rod up`'s audit worker, started on 2 June 2025 (2025-05 closed while it was down)
    june = ams(2025, 6, 2)
    for _start in range(2):
        service = AuditService(audit_settings, bootstrap, clock=lambda: june, tick_every=0.5)
        stop = threading.Event()
        worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while service.ticks < 3:  # caught up, then ticked (at start and twice more)
            assert time.monotonic() < deadline, "the audit service never caught up"
            time.sleep(0.2)
        stop.set()
        worker.join(timeout=30)
        service.close()
        assert service.scheduler.published() == {"2025-05": "published"}  # 2025-11 is open in June

    events = report_events(audit_settings, 4)
    assert sorted(e["institution"] for e in events) == ["25BE", "30XX", "40MB", "national"]
    assert {e["period"] for e in events} == {"2025-05"}

    other = Scheduler(Projection(audit_settings.database_urls["audit"]), writer, clock=lambda: june)
    assert other.claim(Period.parse("2025-05"), june) is False  # published: nobody claims it again
    other.projection.dispose()


def test_rod_report_by_hand_marks_an_open_period_provisional_and_regenerates_identically(
    audit_settings: Settings,
) -> None:
    year = scripted_year()
    now = datetime.now(UTC)
    current = Period.containing(now)
    r = year.log.register("25BE", "HO", now)
    year.log.delete(r, now, "EXTRA_COURSES_OR_GRADE_IMPROVEMENT")
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "")
    env = settings_env(audit_settings)
    first = run_rod("report", "--period", current.id, "--institution", "25BE", env=env, check=True)
    body = (audit_settings.data_dir / "reports" / current.id / "25BE.json").read_bytes()
    content = json.loads(body)
    assert content["provisional"] is True and content["totals"]["deletions"] == 1
    assert b"Voorlopig" in (audit_settings.data_dir / "reports" / current.id / "25BE.html").read_bytes()
    assert f"period {current.id} covers {current.covers()} (Dutch time)" in first.stdout
    last_day = english_date(current.last_day)
    assert f"provisional: the period has not ended (its last day is {last_day})" in first.stdout
    closed = run_rod("report", "--period", current.previous().id, "--institution", "25BE", env=env,
                     check=True)
    assert f"period {current.previous().id}: 1 report(s) published, final" in closed.stdout
    assert f"deletions recorded today belong to period {current.id}" in closed.stdout
    second = run_rod("report", "--period", current.id, "--institution", "25BE", env=env, check=True)
    digests = re.findall(r"sha256 ([0-9a-f]{64})", first.stdout)
    assert len(digests) == 3 and digests == re.findall(r"sha256 ([0-9a-f]{64})", second.stdout)
    assert (audit_settings.data_dir / "reports" / current.id / "25BE.json").read_bytes() == body
    assert sorted(p.name for p in (audit_settings.data_dir / "reports" / current.id).iterdir()) == [
        "25BE.csv", "25BE.html", "25BE.json"]
    bad = run_rod("report", "--period", "2025-06", env=env)
    assert bad.returncode == 2 and "PERIOD_INVALID" in bad.stderr
    unknown = run_rod("report", "--period", current.id, "--institution", "99ZZ", env=env)
    assert unknown.returncode == 1 and "INSTITUTION_UNKNOWN" in unknown.stderr
    shutil.rmtree(audit_settings.data_dir / "reports")


def test_a_broker_that_lost_its_data_is_read_again_from_the_start_changing_nothing(
    audit_settings: Settings, tmp_path: Path
) -> None:
    from services.kernel.broker import LocalBroker

    year = scripted_year()
    year.log.produce(audit_settings, audit_settings.kafka_bootstrap or "")
    projection = built(audit_settings)
    before = (projection.counts(), projection.status().verified)
    projection.dispose()
    with LocalBroker() as restarted:  # memory storage: empty, and the relay writes the log anew
        moved = Settings(**{**vars(audit_settings), "kafka_bootstrap": restarted.bootstrap})
        half = year.log.results[: len(year.log.results) // 2]
        rest, year.log.results = year.log.results[len(half):], half
        year.log.produce(moved, restarted.bootstrap)  # shorter than what the projection read
        # `rod report` reads it again as a matter of course: an info line, no warning
        told = run_rod("-v", "report", "--period", Period.containing(datetime.now(UTC)).id,
                       env=settings_env(moved), check=True)
        logged = [json.loads(line) for line in told.stderr.splitlines()]
        assert "log_rebuilt" in [e["event"] for e in logged if e["level"] == "info"]
        assert [e for e in logged if e["level"] != "info"] == []
        projection = built(moved)
        assert (projection.counts(), projection.status().verified) == before
        year.log.results = half + rest
        later = year.log.register("40MB", "MBO", ams(2025, 12, 1))
        year.log.produce(moved, restarted.bootstrap)  # the whole log again, and one new event
        AuditReader(projection, moved, restarted.bootstrap).catch_up()
        status = projection.status()
        assert status.verified == later["position"] == len(year.log.results) and not status.breaks
        projection.dispose()
