"""`rod up` stopped and started again: the memory broker is empty, every feed comes back from the ledger."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.distributor import ledger as tables
from services.distributor.ledger import Ledger
from services.kernel.broker import free_port
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from tests.fixtures.bulkfiles import write_csv
from tests.integration.distributor_support import CATALOGUE, FEEDS
from tests.support import read_topic, run_rod, settings_env, start_rod_up, stop_rod_up


def _feeds(
    bootstrap: str, settings: Settings, sizes: dict[str, int], timeout: float = 60
) -> dict[str, set[str]]:
    """The delivery_ids on each feed, waiting until each holds at least `sizes[feed]` of them."""
    codec = Codec()
    found: dict[str, set[str]] = {}
    deadline = time.monotonic() + timeout
    for name, topic in FEEDS.items():
        while True:
            records = read_topic(bootstrap, settings.topic(topic), sizes[name], timeout=10)
            found[name] = {codec.decode(r.value)[1]["delivery_id"] for r in records}
            if len(found[name]) >= sizes[name] or time.monotonic() > deadline:
                break
    return found


def _ledger_rows(url: str) -> list[tuple]:
    ledger = Ledger(url)
    try:
        with ledger.reading() as conn:
            return [tuple(r) for r in conn.execute(select(tables.decisions).order_by(tables.decisions.c.id))]
    finally:
        ledger.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rod_up_restarted_holds_every_delivery_again_without_new_decisions(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE)}
    env.pop("ROD_KAFKA_BOOTSTRAP")  # `rod up` starts the local broker itself, empty each time
    data_dir = Path(env["ROD_DATA_DIR"])
    run_rod(
        "institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env, check=True
    )
    file = tmp_path / "results.csv"
    write_csv(
        file,
        [
            {
                "bsn": "111222333",
                "instellingscode": "25BE",
                "vestigingscode": "25BE01",
                "sector": "HO",
                "opleidingscode": "56551" if i % 2 else "50625",
                "diplomavolgnummer": f"UP-{i}",
                "diplomadatum": "2026-07-01",
            }
            for i in range(6)
        ],
    )
    run_rod("import", str(file), "--institution", "25BE", env=env, check=True)
    # 6 registrations: cibg-big gets the 3 BIG ones, mijnoverheid and extract all 6
    sizes = {"cibg-big": 3, "mijnoverheid": 6, "extract": 6}

    proc, bootstrap = start_rod_up(env, data_dir)
    try:
        before = _feeds(bootstrap, settings, sizes)
        assert {name: len(ids) for name, ids in before.items()} == sizes
    finally:
        stop_rod_up(proc)
    decisions = _ledger_rows(settings.database_urls["distributor"])
    assert len(decisions) == 18

    proc, bootstrap = start_rod_up(env, data_dir)
    try:
        after = _feeds(bootstrap, settings, sizes)
    finally:
        stop_rod_up(proc)
    assert after == before
    assert _ledger_rows(settings.database_urls["distributor"]) == decisions


def _http_feed(url: str, token: str, at_least: int, timeout: float = 90) -> list[dict]:
    """The whole cibg-big HTTP feed page by page (limit 2), once it holds `at_least` messages."""
    deadline = time.monotonic() + timeout
    while True:
        messages: list[dict] = []
        after: str | None = None
        try:
            while True:
                answer = httpx.get(f"{url}/v1/feeds/cibg-big/messages",
                                   headers={"Authorization": f"Bearer {token}"},
                                   params={"limit": 2, **({"after": after} if after else {})}, timeout=30)
                assert answer.status_code == 200, answer.text
                page = answer.json()["messages"]
                if not page:
                    break
                messages += page
                after = answer.json()["next"]
        except httpx.TransportError:
            pass  # not listening yet
        if len(messages) >= at_least or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_http_feed_keeps_its_cursors_through_a_replay_and_a_restart_on_an_empty_broker(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE)}
    env.pop("ROD_KAFKA_BOOTSTRAP")  # `rod up` starts the local broker itself, empty each time
    data_dir = Path(env["ROD_DATA_DIR"])
    run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env,
            check=True)
    token = run_rod("consumer", "add", "cibg", "--subscription", "cibg-big", env=env,
                    check=True).stdout.strip().splitlines()[-1]
    file = tmp_path / "results.csv"
    write_csv(file, [{"bsn": "111222333", "instellingscode": "25BE", "vestigingscode": "25BE01",
                      "sector": "HO", "opleidingscode": "56551", "diplomavolgnummer": f"FEED-{i}",
                      "diplomadatum": "2026-07-01"} for i in range(3)])
    run_rod("import", str(file), "--institution", "25BE", env=env, check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    proc, _bootstrap = start_rod_up(env, data_dir, port)
    try:
        before = _http_feed(url, token, 3)
        assert len(before) == 3
        run_rod("subscription", "replay", "cibg-big", "--reason", "test", env=env, check=True)
        replayed = _http_feed(url, token, 3)
    finally:
        stop_rod_up(proc)
    proc, bootstrap = start_rod_up(env, data_dir, port)
    try:
        republished = _feeds(bootstrap, settings, {"cibg-big": 3, "mijnoverheid": 3, "extract": 3})
        assert len(republished["cibg-big"]) == 3
        restarted = _http_feed(url, token, 3)
    finally:
        stop_rod_up(proc)

    def seen(messages: list[dict]) -> list[tuple[str, str]]:
        return [(m["cursor"], m["delivery_id"]) for m in messages]

    assert len({m["delivery_id"] for m in before}) == 3
    assert seen(replayed) == seen(before)  # the replay re-sent them on Kafka: no new positions
    assert seen(restarted) == seen(before)  # republished to an empty broker: the same cursors
