"""`rod log ...` and `rod verify` as a user runs them, on a data dir the log component wrote (issue 15).

The log component runs in the test process with the key it makes under the data dir; the
commands run as subprocesses and find that key there. A careful rewrite of the past passes
the chain walk, and `rod verify` says so, but fails it naming the checkpoint and the position.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.store import EventStore
from services.registrar.transparency.checkpoint import Signer
from services.registrar.transparency.keys import DEFAULT_ORIGIN, KEY_FILE
from services.registrar.transparency.service import LogService
from tests import rfc9162_reference as rfc
from tests.integration.apiserver import CATALOGUE
from tests.integration.test_log_tree import event_hashes, open_with_cryptography, register, rewrite
from tests.support import run_rod, settings_env

# the commands on SQLite; the same store code on PostgreSQL is test_log_tree's and test_log_http's
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class Logged:
    registrar: Registrar
    service: LogService
    env: dict[str, str]


@pytest.fixture
def logged(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Logged]:
    monkeypatch.delenv("ROD_LOG_SIGNING_KEY", raising=False)
    monkeypatch.delenv("ROD_LOG_ORIGIN", raising=False)
    store = EventStore(settings.database_urls["registrar"])
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Instelling 25BE", ["HO"])
    service = LogService(settings, None)  # the key made once under <data dir>/log/, as `rod up` does
    yield Logged(registrar, service, settings_env(settings))
    service.close()
    store.dispose()


def checkpointed(logged: Logged, *counts: int) -> dict[int, str]:
    """Register `counts` events at a time, each batch built into the tree and signed."""
    signed, first = {}, 0
    for count in counts:
        register(logged.registrar, first, count)
        first += count
        logged.service.build()
        made = logged.service.sign_due(force=True)
        assert made is not None
        signed[made.tree_size] = made.note
    return signed


def test_the_log_commands_answer_from_the_store_and_rod_verify_includes_the_log(logged: Logged) -> None:
    signed = checkpointed(logged, 4, 4)
    env = logged.env
    leaves = event_hashes(logged.registrar.store)
    verifier = logged.service.identity.signer.verifier.text()
    root = rfc.mth(leaves)

    note = run_rod("log", "checkpoint", env=env, check=True).stdout
    assert note == signed[8]
    assert open_with_cryptography(note, verifier) == (DEFAULT_ORIGIN, 8, root)

    proof = json.loads(run_rod("log", "prove", "3", "--json", env=env, check=True).stdout)
    assert (proof["leaf_index"], proof["tree_size"]) == (2, 8)
    path = [base64.b64decode(h) for h in proof["hashes"]]
    assert rfc.verify_inclusion(rfc.mth(leaves[2:3]), 2, 8, path, root)
    text = run_rod("log", "prove", "3", "--tree-size", "4", env=env, check=True).stdout.splitlines()
    assert "position 3" in text[0] and "tree size 4" in text[0]
    assert rfc.verify_inclusion(rfc.mth(leaves[2:3]), 2, 4, [base64.b64decode(h) for h in text[1:]],
                                rfc.mth(leaves[:4]))
    beyond = run_rod("log", "prove", "3", "--tree-size", "9", env=env)
    assert beyond.returncode == 1 and "beyond the stored tree" in beyond.stderr

    consistent = json.loads(run_rod("log", "consistency", "4", "--json", env=env, check=True).stdout)
    assert (consistent["first"], consistent["second"]) == (4, 8)
    assert rfc.verify_consistency(4, 8, [base64.b64decode(h) for h in consistent["hashes"]],
                                  rfc.mth(leaves[:4]), root)

    verified = run_rod("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines() == ["chain intact: 8 events verified",
                                            "log intact: 2 checkpoints, 8 events verified"]
    alone = run_rod("log", "verify", env=env, check=True)
    assert alone.stdout == "log intact: 2 checkpoints, 8 events verified\n"

    rebuilt = run_rod("log", "rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert f"size 8, root {base64.b64encode(root).decode()}" in rebuilt.stdout
    assert "had the same root" in rebuilt.stdout


def test_a_careful_rewrite_passes_the_chain_walk_but_rod_verify_names_the_checkpoint_and_position(
    logged: Logged, settings: Settings
) -> None:
    checkpointed(logged, 5, 5)
    env = logged.env
    rewrite(logged.registrar.store, 7, "FORGED-7")

    verified = run_rod("verify", env=env)
    assert verified.returncode == 1
    chain, log = verified.stdout.splitlines()
    assert chain == "chain intact: 10 events verified"  # the chain alone cannot tell
    assert log.startswith("log BROKEN: ROOT_MISMATCH at checkpoint 10, position 7:"), log
    alone = run_rod("log", "verify", env=env)
    assert (alone.returncode, alone.stdout.strip()) == (1, log)

    # another key than the one that signed: the first checkpoint is named
    other = Signer.generate(DEFAULT_ORIGIN).verifier.text()
    wrong_key = run_rod("log", "verify", "--key", other, env=env)
    assert wrong_key.returncode == 1
    assert wrong_key.stdout.startswith("log BROKEN: CHECKPOINT_SIGNATURE at checkpoint 5:")

    rebuilt = run_rod("log", "rebuild", env=env)  # the tree follows the rewritten store; checkpoints stay
    assert rebuilt.returncode == 1 and "DIFFERS" in rebuilt.stdout
    after = run_rod("log", "verify", env=env)  # the rebuilt tree no longer extends checkpoint 5 to 10
    assert after.returncode == 1
    assert after.stdout.startswith("log BROKEN: CHECKPOINTS_INCONSISTENT at checkpoint 10")

    # without the signing key here, the key the log component recorded is used, with a warning
    (settings.data_dir / "log" / KEY_FILE).unlink()
    recorded = run_rod("log", "verify", env=env)
    assert recorded.returncode == 1 and "log_checked_with_recorded_key" in recorded.stderr
    assert not (settings.data_dir / "log" / KEY_FILE).exists()  # verifying never makes a key


def test_before_any_checkpoint_the_commands_say_so_and_verify_passes(settings: Settings) -> None:
    store = EventStore(settings.database_urls["registrar"])
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Instelling 25BE", ["HO"])
    register(registrar, 0, 3)
    store.dispose()
    env = settings_env(settings)
    none = run_rod("log", "checkpoint", env=env)
    assert (none.returncode, none.stdout) == (1, "") and "LOG_NO_CHECKPOINT" in none.stderr
    verified = run_rod("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[1] == "log intact: 0 checkpoints, 3 events verified"
    assert not (settings.data_dir / "log").exists()  # no key was made for a check
