"""The log's stored Merkle tree and signed checkpoints on SQLite and PostgreSQL (issue 15).

Roots and proofs from the stored tree are checked with tests/rfc9162_reference.py (the RFC's
recursive definitions, not the project's code); checkpoints are opened with `cryptography`
directly; a careful rewrite of the past (one event changed, every later one re-hashed) passes
the chain walk and fails `verify_log`, naming the first checkpoint and the position.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update

from services.kernel import chain
from services.kernel.settings import Settings
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.store import EventStore, chain_head, events, log_nodes
from services.registrar.transparency.checkpoint import Signer
from services.registrar.transparency.keys import LogIdentity
from services.registrar.transparency.service import LogService
from services.registrar.transparency.tree import StoredTree, TreeError
from services.registrar.transparency.verify import verify_log
from services.registrar.verify import verify as verify_chain
from tests import rfc9162_reference as rfc
from tests.integration.apiserver import CATALOGUE

ORIGIN = "rodchain.test/log"


@pytest.fixture
def registrar(db_url: str) -> Iterator[Registrar]:
    store = EventStore(db_url)
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Instelling 25BE", ["HO"])
    yield registrar
    store.dispose()


@pytest.fixture
def service(registrar: Registrar, tmp_path: Path) -> Iterator[LogService]:
    settings = Settings.from_env(env={"ROD_DATABASE_URL": registrar.store.url},
                                 data_dir=str(tmp_path / "var"))
    identity = LogIdentity(ORIGIN, Signer.generate(ORIGIN), "test")
    yield LogService(settings, None, store=registrar.store, identity=identity)


def register(registrar: Registrar, first: int, count: int) -> None:
    for n in range(first, first + count):
        raw = {"bsn": "111222333", "institution": "25BE", "branch": "25BE01", "sector": "HO",
               "programme_code": "56551", "diploma_number": f"T-{n}", "diploma_date": "2026-07-01"}
        registrar.register(raw, "25BE")


def event_hashes(store: EventStore) -> list[bytes]:
    with store.reading() as conn:
        return [bytes(h) for h in conn.execute(select(events.c.hash).order_by(events.c.position)).scalars()]


def open_with_cryptography(note: str, verifier_text: str) -> tuple[str, int, bytes]:
    """The C2SP signed note read by hand: body, blank line, `— name base64(keyid || sig)`."""
    name, key_id_hex, key_b64 = verifier_text.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 1 and len(key) == 33  # Ed25519
    assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == key_id_hex
    body, signatures = note.split("\n\n", 1)
    line = signatures.strip()
    assert line.startswith(f"\u2014 {name} ")
    blob = base64.b64decode(line.split(" ")[2])
    assert blob[:4].hex() == key_id_hex
    Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], (body + "\n").encode())  # raises if wrong
    origin, size, root_b64 = body.split("\n")
    return origin, int(size), base64.b64decode(root_b64)


def test_the_stored_tree_answers_as_the_rfc_defines_in_batches_of_any_size(registrar: Registrar) -> None:
    tree = StoredTree(registrar.store)
    register(registrar, 0, 21)
    assert tree.append_once(limit=4) == 4
    assert tree.catch_up(limit=7) == 17
    register(registrar, 21, 12)
    assert tree.catch_up(limit=5) == 12 and tree.size() == 33
    leaves = event_hashes(registrar.store)
    for size in range(0, 34):
        assert tree.root(size) == rfc.mth(leaves[:size])
    for size in (1, 2, 7, 16, 17, 33):
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            leaf = rfc.mth(leaves[index:index + 1])  # the leaf hash, by the reference
            assert rfc.verify_inclusion(leaf, index, size, proof, rfc.mth(leaves[:size]))
        for first in range(1, size):
            proof = tree.consistency_proof(first, size)
            assert rfc.verify_consistency(first, size, proof, rfc.mth(leaves[:first]), rfc.mth(leaves[:size]))
    with pytest.raises(TreeError):
        tree.inclusion_proof(0, 34)  # beyond the stored tree
    assert tree.rebuild() == (33, rfc.mth(leaves))


def test_checkpoints_are_signed_notes_anyone_opens_with_the_published_key(
    registrar: Registrar, service: LogService
) -> None:
    register(registrar, 0, 5)
    service.build()
    first = service.sign_due()
    assert first is not None and service.sign_due() is None  # nothing new: no new checkpoint
    register(registrar, 5, 3)
    service.build()
    assert service.sign_due() is None  # grew, but the last one is younger than the interval
    second = service.sign_due(force=True)
    assert second is not None
    verifier = service.identity.signer.verifier.text()
    leaves = event_hashes(registrar.store)
    assert open_with_cryptography(first.note, verifier) == (ORIGIN, 5, rfc.mth(leaves[:5]))
    assert open_with_cryptography(second.note, verifier) == (ORIGIN, 8, rfc.mth(leaves))
    verdict = verify_log(registrar.store, service.identity.signer.verifier, ORIGIN)
    assert verdict.ok and verdict.checkpoints == 2 and verdict.events == 8


def rewrite(store: EventStore, position: int, diploma_number: str) -> None:
    """What a careful attacker does: change one event and re-hash it and every later one."""
    codec = store.codec
    with store.engine.begin() as conn:
        rows = conn.execute(select(events.c.position, events.c.payload).where(events.c.position >= position)
                            .order_by(events.c.position)).all()
        prev = bytes(conn.execute(select(events.c.hash).where(events.c.position == position - 1)).scalar()
                     or chain.GENESIS)
        for row in rows:
            name, record = codec.decode(bytes(row.payload), as_written=True)
            if row.position == position:
                record["diploma_number"] = diploma_number
            payload, digest = chain.seal(codec, name, record, prev)
            conn.execute(update(events).where(events.c.position == row.position)
                         .values(payload=payload, hash=digest))
            prev = digest
        conn.execute(update(chain_head).values(hash=prev))


def test_a_rewritten_past_passes_the_chain_walk_but_not_the_log(
    registrar: Registrar, service: LogService
) -> None:
    register(registrar, 0, 6)
    service.build()
    service.sign_due(force=True)  # size 6
    register(registrar, 6, 6)
    service.build()
    service.sign_due(force=True)  # size 12
    rewrite(registrar.store, 9, "FORGED-9")
    assert verify_chain(registrar.store).ok  # the chain alone cannot tell
    verdict = verify_log(registrar.store, service.identity.signer.verifier, ORIGIN)
    assert not verdict.ok and verdict.code == "ROOT_MISMATCH"
    assert verdict.checkpoint == 12 and verdict.position == 9
    assert "checkpoint 12" in (verdict.reason or "") and "position 9" in (verdict.reason or "")
    # rebuilding the tree from the rewritten store does not help: the signed checkpoint stays
    StoredTree(registrar.store).rebuild()
    verdict = verify_log(registrar.store, service.identity.signer.verifier, ORIGIN)
    assert not verdict.ok and verdict.checkpoint == 12


def test_a_fork_at_a_checkpointed_position_is_named(registrar: Registrar, service: LogService) -> None:
    register(registrar, 0, 4)
    service.build()
    service.sign_due(force=True)  # size 4
    register(registrar, 4, 4)
    service.build()
    service.sign_due(force=True)  # size 8
    rewrite(registrar.store, 3, "FORK-3")  # a different event at an already-checkpointed position
    verdict = verify_log(registrar.store, service.identity.signer.verifier, ORIGIN)
    assert not verdict.ok and verdict.checkpoint == 4 and verdict.position == 3


def test_a_checkpoint_signed_with_another_key_is_named(registrar: Registrar, service: LogService) -> None:
    register(registrar, 0, 3)
    service.build()
    service.sign_due(force=True)
    other = Signer.generate(ORIGIN)
    verdict = verify_log(registrar.store, other.verifier, ORIGIN)
    assert not verdict.ok and verdict.code == "CHECKPOINT_SIGNATURE" and verdict.checkpoint == 3


def test_a_wrong_inner_node_is_found_though_every_root_still_matches(
    registrar: Registrar, service: LogService
) -> None:
    """The roots read only the top subtrees: a corrupted lower node would pass them, yet break
    every inclusion proof through it."""
    register(registrar, 0, 20)
    service.build()
    service.sign_due(force=True)
    with registrar.store.engine.begin() as conn:
        conn.execute(update(log_nodes).where(log_nodes.c.level == 2, log_nodes.c.idx == 3)
                     .values(hash=bytes(32)))
    tree = StoredTree(registrar.store)
    leaves = event_hashes(registrar.store)
    assert tree.root(20) == rfc.mth(leaves)  # the roots cannot tell
    through = tree.inclusion_proof(9, 20)  # leaf 9's path has the subtree of leaves 12..15
    assert not rfc.verify_inclusion(rfc.mth(leaves[9:10]), 9, 20, through, rfc.mth(leaves))
    verdict = verify_log(registrar.store, service.identity.signer.verifier, ORIGIN)
    assert not verdict.ok and verdict.code == "TREE_MISMATCH" and verdict.position == 13  # leaves 12..15
    assert "(2, 3)" in (verdict.reason or "")
    tree.rebuild()
    assert verify_log(registrar.store, service.identity.signer.verifier, ORIGIN).ok
