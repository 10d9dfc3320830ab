"""The data dir as `rod` leaves it (real subprocesses, the default SQLite databases inside it, the
local broker): 700 for every directory, 600 for every file, and a warning for one made too open."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import httpx

from services.kernel.broker import free_port
from tests.fixtures.bulkfiles import sample_row, write_csv
from tests.integration.apiserver import CATALOGUE
from tests.support import run_rod, start_rod_up, stop_rod_up


def _env(data_dir: Path) -> dict[str, str]:
    """`rod` on `data_dir` alone: its own SQLite databases there and its own local broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROD_")}
    return {**env, "ROD_DATA_DIR": str(data_dir), "ROD_CATALOGUE": str(CATALOGUE),
            "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}."}


def _too_open(data_dir: Path) -> dict[str, str]:
    """Every directory not 700 and every file not 600 under `data_dir` (itself included)."""
    found = {}
    for folder, _, names in os.walk(data_dir):
        if stat.S_IMODE(os.stat(folder).st_mode) != 0o700:
            found[folder] = oct(stat.S_IMODE(os.stat(folder).st_mode))
        for name in names:
            mode = stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode)
            if mode != 0o600:
                found[os.path.join(folder, name)] = oct(mode)
    return found


def test_the_data_dir_and_its_files_are_700_and_600(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = _env(data_dir)
    token = run_rod("institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO",
                    env=env, check=True).stdout.strip().splitlines()[-1]
    bulk = tmp_path / "bulk.csv"
    write_csv(bulk, [sample_row(1)])
    port = free_port()
    proc, _ = start_rod_up(env, data_dir, port)
    try:
        deadline = time.monotonic() + 60
        while True:  # the API is up: an upload (kept under uploads/) and the databases busy
            try:
                uploaded = httpx.post(f"http://127.0.0.1:{port}/v1/batches", content=bulk.read_bytes(),
                                      headers={"Authorization": f"Bearer {token}",
                                               "content-type": "text/csv"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "rod up's API did not answer"
                time.sleep(0.2)
        assert uploaded.status_code == 201, uploaded.text
        running = {p.name for p in data_dir.rglob("*")}
        assert {"kafka.bootstrap", "registrar.db", "registrar.db-wal", "operations.db"} <= running, running
        assert _too_open(data_dir) == {}
    finally:
        stop_rod_up(proc)
    assert _too_open(data_dir) == {}


def test_an_existing_data_dir_open_to_others_gives_a_warning(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    listed = run_rod("verify", env=_env(data_dir), check=True)
    assert "data_dir_too_open" in listed.stderr and "755" in listed.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755  # told, not changed behind the operator's back
    data_dir.chmod(0o700)
    quiet = run_rod("verify", env=_env(data_dir), check=True)
    assert "data_dir_too_open" not in quiet.stderr
