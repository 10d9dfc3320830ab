"""`rod up --components`: the system spread over processes, as production runs it.

The front door (HTTP API, relay, impact reader, monitor) in one `rod up`, the distributor and
the audit each in their own: a registration taken by the first is delivered by the second and
projected by the third, and each stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.audit.projection import Projection
from services.kernel.broker import free_port
from services.kernel.settings import Settings
from tests.integration.distributor_support import CATALOGUE, FEEDS
from tests.support import LOG_SINK, drain_stderr, drained_stderr, read_topic, run_rod, settings_env


def _up(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    rod = Path(sys.executable).with_name("rod")
    proc = subprocess.Popen([str(rod), "up", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    drain_stderr(proc)  # read as it comes: a full pipe would block the process
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    proc.wait(timeout=90)
    out, err = proc.stdout.read() if proc.stdout else "", drained_stderr(proc)
    LOG_SINK.write(out + err)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out
    return out


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_front_door_distributor_and_audit_in_separate_processes_carry_a_registration(
    settings: Settings,
) -> None:
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE), "ROD_MONITOR_INTERVAL_SECONDS": "1"}
    token = run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO",
                    env=env, check=True).stdout.strip().splitlines()[-1]
    port = free_port()
    front = _up(env, "--components", "http,relay,impact,monitor", "--port", str(port))
    distributor = _up(env, "--components", "distributor")
    audit = _up(env, "--components", "audit")
    procs = [front, distributor, audit]
    try:
        deadline = time.monotonic() + 60
        while True:
            ended = [drained_stderr(p) for p in procs if p.poll() is not None]
            assert not ended, ended
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the front door did not start"
            time.sleep(0.3)
        result = {"person": {"bsn": "111222333"}, "institution": "25BE", "branch": "25BE01", "sector": "HO",
                  "programme_code": "56551", "diploma_number": "SPLIT-1", "diploma_date": "2026-07-01"}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/results", json=result, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.text

        # the distributor's process delivers it: on the citizens' feed
        feed = settings.topic(FEEDS["mijnoverheid"])
        assert read_topic(settings.kafka_bootstrap or "", feed, 1, timeout=60)
        # the audit's process projects the event and the distributor's receipt
        projection = Projection(settings.database_urls["audit"])
        try:
            deadline = time.monotonic() + 60
            while (counts := projection.counts())["audit_events"] < 1 or counts["audit_deliveries"] < 1:
                assert time.monotonic() < deadline, counts
                time.sleep(0.5)
        finally:
            projection.dispose()
        # the front door's /metrics still shows every group's lag (its monitor asks the broker)
        deadline = time.monotonic() + 30
        groups = tuple(f'group="{settings.group(g)}"' for g in ("rod-audit", "rod-distributor"))
        while not all(g in httpx.get(f"http://127.0.0.1:{port}/metrics").text for g in groups):
            assert time.monotonic() < deadline, f"no lag on the front door's /metrics for {groups}"
            time.sleep(0.5)
    finally:
        outs = [_stop(p) if p.poll() is None else "" for p in procs]
    assert "running distributor" in outs[1] and "HTTP API" not in outs[1]
    assert "running audit" in outs[2]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unknown_component_is_refused_by_name(settings: Settings) -> None:
    done = run_rod("up", "--components", "http,ledger", env=settings_env(settings))
    assert done.returncode == 2
    assert "unknown component ledger" in done.stderr
    assert "relay,log,distributor,audit,extract,monitor,http,impact" in done.stderr
