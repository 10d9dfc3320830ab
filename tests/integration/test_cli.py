"""The `rod` CLI as a user runs it: register, verify, relay, tamper, up/restart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy

from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.registrar.relay import RESULTS_TOPIC
from tests.fixtures.bulkfiles import write_csv
from tests.support import read_topic, run_rod, settings_env, start_rod_up, stop_rod_up

CATALOGUE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue.csv"

ROW = {
    "bsn": "249566758",
    "instellingscode": "25BE",
    "vestigingscode": "25BE01",
    "sector": "HO",
    "opleidingscode": "56551",
    "diplomavolgnummer": "CLI-1",
    "diplomadatum": "2026-07-01",
}


def cli_env(settings: Settings) -> dict[str, str]:
    return {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE)}


def test_a_result_registered_with_the_cli_is_stored_verified_and_published(
    settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(settings)
    added = run_rod(
        "institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env, check=True
    )
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) >= 40
    file = tmp_path / "one.csv"
    write_csv(file, [ROW])
    imported = run_rod("import", str(file), "--institution", "25BE", env=env)
    assert imported.returncode == 0, imported.stderr
    assert "1 accepted" in imported.stdout
    assert run_rod("verify", env=env, check=True).stdout.startswith("chain intact: 1 events")
    run_rod("relay", env=env, check=True)
    [record] = read_topic(settings.kafka_bootstrap, settings.topic(RESULTS_TOPIC), 1)
    name, event = Codec().decode(record.value)
    assert name == "ResultRegistered"
    assert record.key.decode() == event["result_id"]
    assert (event["position"], event["diploma_number"], event["person_number"]) == (1, "CLI-1", "249566758")
    engine = sqlalchemy.create_engine(settings.database_urls["registrar"])
    with engine.connect() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT token_hash FROM registrar_tokens")]
    engine.dispose()
    assert token not in stored and len(stored) == 1


def test_one_changed_payload_byte_breaks_verify_at_that_position(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings)
    run_rod(
        "institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env, check=True
    )
    file = tmp_path / "three.csv"
    write_csv(file, [{**ROW, "diplomavolgnummer": f"CLI-{i}"} for i in range(3)])
    run_rod("import", str(file), "--institution", "25BE", env=env, check=True)
    engine = sqlalchemy.create_engine(settings.database_urls["registrar"])
    with engine.begin() as conn:
        payload = bytearray(
            conn.exec_driver_sql("SELECT payload FROM registrar_events WHERE position = 2").scalar_one()
        )
        index = payload.index(b"CLI-1")
        payload[index + 4] = ord("9")
        conn.execute(
            sqlalchemy.text("UPDATE registrar_events SET payload = :p WHERE position = 2"),
            {"p": bytes(payload)},
        )
    engine.dispose()
    verdict = run_rod("verify", env=env)
    assert verdict.returncode == 1
    assert "BROKEN at position 2" in verdict.stdout


# SQLite only: the end-to-end run of `rod up`; the relay publishing every stored event again from
# PostgreSQL is test_relay.py's test_relay_publishes_again_when_the_broker_lost_its_data[postgres]
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rod_up_restarted_publishes_every_stored_event_again(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings)
    env.pop("ROD_KAFKA_BOOTSTRAP")  # `rod up` starts the local broker itself
    data_dir = Path(env["ROD_DATA_DIR"])
    run_rod(
        "institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO", env=env, check=True
    )
    file = tmp_path / "five.csv"
    write_csv(file, [{**ROW, "diplomavolgnummer": f"UP-{i}"} for i in range(5)])
    run_rod("import", str(file), "--institution", "25BE", env=env, check=True)

    proc, bootstrap = start_rod_up(env, data_dir)
    try:
        assert len(read_topic(bootstrap, settings.topic(RESULTS_TOPIC), 5)) >= 5
    finally:
        stop_rod_up(proc)
    assert not (data_dir / "kafka.bootstrap").exists()

    proc, bootstrap = start_rod_up(env, data_dir)
    try:
        events = [Codec().decode(r.value)[1] for r in read_topic(bootstrap, settings.topic(RESULTS_TOPIC), 5)]
        assert sorted(e["position"] for e in events) == [1, 2, 3, 4, 5]
    finally:
        stop_rod_up(proc)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # refused before any database is opened
def test_rod_up_refuses_a_taken_port_and_says_which(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_rod("up", "--port", str(port), env=settings_env(settings), timeout=60)
    assert proc.returncode == 1
    assert f"port {port} is taken" in proc.stderr
