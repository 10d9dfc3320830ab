"""`/metrics` of a live `rod up`: every service in the process, every metric the dashboard and
the alerts use, Prometheus' own linter, and no personal data or ids in any label."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.kernel.settings import Settings
from tests.integration.apiserver import registration
from tests.integration.distributor_support import CATALOGUE
from tests.support import PERSON_NUMBERS, ROOT, run_rod, settings_env, start_rod_up, stop_rod_up

DASHBOARD = ROOT / "deploy" / "grafana" / "rodchain.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
NO_PROMTOOL = "Debian package prometheus not installed (promtool missing)"
_NAME = re.compile(r"\brod_[a-z0-9_]*[a-z0-9]")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def named_metrics() -> set[str]:
    """Every rod_* name in the dashboard's queries and the alerting rules' expressions."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    exprs += re.findall(r"^\s*expr:\s*(.+)$", ALERTS.read_text(), re.M)
    return {name for expr in exprs for name in _NAME.findall(expr)}


def samples(scrape: str) -> dict[str, list[tuple[str, float]]]:
    """Sample name → its (labels, value) pairs in the scrape (labels "" for none)."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in scrape.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            found.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return found


def total(found: dict[str, list[tuple[str, float]]], name: str, *labels: str) -> float:
    """The sum of `name` over the series that carry every one of `labels` (e.g. 'kind="delivery"')."""
    return sum(v for ls, v in found.get(name, []) if all(label in ls for label in labels))


def test_the_deploy_files_name_metrics_of_every_service() -> None:
    names = named_metrics()
    for expected in ("rod_registrations_total", "rod_feed_messages_total",
                     "rod_subscription_pending_age_seconds", "rod_consumer_lag_messages",
                     "rod_deadletters_open", "rod_relay_lag_events",
                     "rod_chain_broken", "rod_reports_published_total", "rod_extract_outbox_unpublished",
                     "rod_log_checkpoint_age_seconds", "rod_log_checkpoint_behind_events",
                     "rod_log_tree_behind_events", "rod_log_checkpoints_unpublished"):
        assert expected in names


def test_the_alerting_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROMTOOL)
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for rule in re.findall(r"- alert: (\w+)", ALERTS.read_text()):
        block = ALERTS.read_text().split(f"- alert: {rule}", 1)[1].split("- alert:", 1)[0]
        assert "summary:" in block and "docs/operations.md#" in block, rule


def test_the_alerts_fire_and_stay_quiet_as_their_promtool_unit_tests_expect() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROMTOOL)
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert "RodLogCheckpointsStalled" in tested
    assert tested <= set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    checked = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _wait_for(url: str, ready, timeout: float = 90.0) -> str:  # noqa: ANN001 - a predicate over the scrape
    deadline = time.monotonic() + timeout
    scrape = ""
    while time.monotonic() < deadline:
        try:
            scrape = httpx.get(f"{url}/metrics", timeout=5).text
            if ready(samples(scrape)):
                return scrape
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    found = samples(scrape)
    raise AssertionError(f"the scrape never showed what was expected (missing: "
                         f"{sorted(n for n in named_metrics() if n not in found)}; feed messages: "
                         f"{found.get('rod_feed_messages_total')})")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_live_scrape_covers_every_service_and_carries_no_personal_data(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE), "ROD_MONITOR_INTERVAL_SECONDS": "1"}
    env.pop("ROD_KAFKA_BOOTSTRAP")  # `rod up` starts its own local broker
    data_dir = Path(env["ROD_DATA_DIR"])
    added = run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO",
                    env=env, check=True)
    token = added.stdout.strip().splitlines()[-1]
    run_rod("consumer", "add", "cibg-met", "--subscription", "cibg-big", env=env, check=True)  # an HTTP feed
    proc, _bootstrap = start_rod_up(env, data_dir)
    url = f"http://127.0.0.1:{proc.args[-1]}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "rod up's HTTP API did not answer"
                time.sleep(0.2)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            ids = []
            for i, number in enumerate(("111222333", "123456782", "249566758")):
                answer = client.post("/v1/results", json=registration(
                    person={"bsn": number}, diploma_number=f"MET-{i}",
                    programme_code="56551" if i == 0 else "50625"))
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["result_id"])
            refused = client.post("/v1/results", json=registration(person={"bsn": "123456789"}))
            assert refused.status_code == 422
            # the deletion of a delivered result: a withdrawal on every feed that had it
            _wait_for(url, lambda s: total(s, "rod_feed_messages_total", 'kind="delivery"') >= 7)
            deleted = client.post(f"/v1/results/{ids[0]}/deletions",
                                  json={"reason": "ADMINISTRATIVE_ERROR", "explanation": "test"})
            assert deleted.status_code == 201, deleted.text

        names = named_metrics()
        distributor_group = f'group="{settings.group("rod-distributor")}"'
        scrape = _wait_for(url, lambda s: (
            all(n in s for n in names) and total(s, "rod_feed_messages_total", 'kind="withdrawal"') >= 3
            and total(s, "rod_audit_projected_total", 'kind="event"') >= 4
            and bool(s.get("rod_subscription_pending_events"))
            and total(s, "rod_log_checkpoint_tree_size") >= 4
            and total(s, "rod_log_checkpoint_behind_events") == 0
            and total(s, "rod_log_checkpoints_unpublished") == 0
            and any(distributor_group in ls for ls, _v in s.get("rod_consumer_lag_messages", []))))
    finally:
        stop_rod_up(proc)

    found = samples(scrape)
    missing = sorted(n for n in names if n not in found)
    assert not missing, f"named in deploy/ but not on /metrics: {missing}"
    # what a user did shows up where the dashboard looks
    assert total(found, "rod_registrations_total", 'outcome="accepted"') == 3
    assert total(found, "rod_registrations_total", 'outcome="rejected"') == 1
    assert total(found, "rod_deletions_total", 'reason="ADMINISTRATIVE_ERROR"') == 1
    assert total(found, "rod_feed_messages_total", 'subscription="cibg-big"', 'kind="delivery"') == 1
    assert total(found, "rod_feed_messages_total", 'subscription="extract"', 'kind="delivery"') == 3
    assert total(found, "rod_feed_messages_total", 'kind="withdrawal"') == 3
    assert total(found, "rod_relay_published_events_total") >= 4
    assert total(found, "rod_relay_lag_events") == 0
    assert total(found, "rod_chain_broken") == 0
    assert total(found, "rod_chain_verified_position") >= 4
    assert total(found, "rod_audit_projected_total", 'kind="event"') >= 4
    # the log component built the tree over every stored event, signed it and published the checkpoint
    stored = total(found, "rod_store_position")
    assert total(found, "rod_log_tree_size") == total(found, "rod_log_checkpoint_tree_size") == stored
    assert total(found, "rod_log_tree_behind_events") == 0
    assert 0 <= total(found, "rod_log_checkpoint_age_seconds") < 60
    assert {"distributor", "audit", "registrar"} <= {
        dict(_LABELS.findall(labels))["service"] for labels, _v in found["rod_deadletters_open"]}
    groups = {dict(_LABELS.findall(labels))["group"] for labels, _v in found["rod_consumer_lag_messages"]}
    assert settings.group("rod-distributor") in groups, groups

    label_values = [v for line in scrape.splitlines() if not line.startswith("#")
                    for _k, v in _LABELS.findall(line)]
    assert not [v for v in label_values if _UUID.search(v)], "an id in a label"
    assert not [v for v in label_values if any(n in v for n in PERSON_NUMBERS)], "a person number in a label"
    assert not any(n in scrape for n in PERSON_NUMBERS)

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROMTOOL)
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr



@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_off_serves_no_endpoint(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.apiserver import running_api

    monkeypatch.setenv("ROD_METRICS", "off")
    with running_api(settings) as api, api.client(None) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200
