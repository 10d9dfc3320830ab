"""`rod log verify`: the log's checkpoints against their key, each other and the store.

1. every stored checkpoint's note verifies with the log's key and says what its row says;
2. each checkpoint is consistent with the next (RFC 9162 §2.1.4 proofs from the stored tree,
   checked as an outsider would);
3. every checkpoint's root equals the root recomputed from the store's events (streamed
   once, folding the leaves as they come: no tree is held in memory), and every stored node
   equals the one recomputed (a wrong inner node would break the proofs through it); the
   first event under the first node that differs is named.

An operator who rewrites an event and re-hashes every later one passes `rod verify`'s chain
walk, but not this: the checkpoints signed before the rewrite no longer match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from sqlalchemy import select
from sqlalchemy.engine import Connection

from services.registrar.store import EventStore, events, log_nodes
from services.registrar.transparency import merkle
from services.registrar.transparency.checkpoint import NoteError, Verifier, open_checkpoint
from services.registrar.transparency.tree import BATCH, CheckpointLog, StoredCheckpoint, StoredTree, TreeError


@dataclass(frozen=True)
class LogVerdict:
    """Outcome of `rod log verify`; on failure the first checkpoint (by tree size) and/or event
    position that fails, with a stable code."""

    ok: bool
    checkpoints: int
    events: int
    code: str | None = None
    reason: str | None = None
    checkpoint: int | None = None  # tree size of the first failing checkpoint
    position: int | None = None  # first event whose leaf differs from the stored tree


class _Fold:
    """Roots of a growing log, leaf by leaf, keeping only the O(log n) complete subtrees."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing
        self.size = 0

    def add(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf hash; returns the subtrees it completes (level, index, hash), itself first."""
        index = self.size
        level, value = 0, leaf
        completed = [(0, index, leaf)]
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            value, level = merkle.node_hash(left, value), level + 1
            completed.append((level, index >> level, value))
        self.stack.append((level, value))
        self.size += 1
        return completed

    def root(self) -> bytes:
        if not self.stack:
            return merkle.EMPTY_ROOT
        value = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            value = merkle.node_hash(left, value)
        return value


def verify_log(store: EventStore, verifier: Verifier, origin: str) -> LogVerdict:
    """Check every checkpoint and the stored tree against the store's events (see the module)."""
    tree = StoredTree(store)
    kept = CheckpointLog(store)  # read in pages, once per pass: a year of checkpoints is millions
    count = kept.count()
    failure = _check_notes(kept.all(), count, verifier, origin) or _check_consistency(tree, kept.all(), count)
    if failure:
        return failure
    return _check_against_events(store, tree, kept.all(), count)


def _check_notes(
    checkpoints: Iterator[StoredCheckpoint], count: int, verifier: Verifier, origin: str
) -> LogVerdict | None:
    for stored in checkpoints:
        try:
            opened = open_checkpoint(stored.note, verifier)
        except NoteError as exc:
            return LogVerdict(False, count, 0, "CHECKPOINT_SIGNATURE",
                              f"checkpoint {stored.tree_size}: {exc}", checkpoint=stored.tree_size)
        says = (opened.origin, opened.tree_size, opened.root_hash)
        if says != (origin, stored.tree_size, stored.root_hash):
            return LogVerdict(False, count, 0, "CHECKPOINT_MISMATCH",
                              f"checkpoint {stored.tree_size}: the signed note says other than its row",
                              checkpoint=stored.tree_size)
    return None


def _check_consistency(
    tree: StoredTree, checkpoints: Iterator[StoredCheckpoint], count: int
) -> LogVerdict | None:
    for older, newer in pairwise(checkpoints):
        if older.tree_size == 0:
            continue  # the empty tree is a prefix of every tree
        try:
            proof = tree.consistency_proof(older.tree_size, newer.tree_size)
            consistent = merkle.verify_consistency(
                older.tree_size, newer.tree_size, proof, older.root_hash, newer.root_hash)
        except TreeError as exc:
            return LogVerdict(False, count, 0, "TREE_INCOMPLETE",
                              f"checkpoint {newer.tree_size}: {exc}", checkpoint=newer.tree_size)
        if not consistent:
            return LogVerdict(False, count, 0, "CHECKPOINTS_INCONSISTENT",
                              f"checkpoint {newer.tree_size} is not consistent with checkpoint "
                              f"{older.tree_size}",
                              checkpoint=newer.tree_size)
    return None


def _check_against_events(
    store: EventStore, tree: StoredTree, checkpoints: Iterator[StoredCheckpoint], count: int
) -> LogVerdict:
    fold = _Fold()
    stored_size = tree.size()
    due = checkpoints
    waiting = next(due, None)
    differs: tuple[int, int] | None = None  # the stored node (level, index) first found wrong
    failed: StoredCheckpoint | None = None

    def settle() -> None:
        nonlocal waiting, failed
        while waiting is not None and waiting.tree_size == fold.size:
            if failed is None and fold.root() != waiting.root_hash:
                failed = waiting
            waiting = next(due, None)

    settle()
    with store.reading() as conn:
        while True:
            rows = conn.execute(select(events.c.position, events.c.hash).where(events.c.position > fold.size)
                                .order_by(events.c.position).limit(BATCH)).all()
            if not rows:
                break
            made: list[tuple[int, int, bytes]] = []
            for row in rows:
                if row.position != fold.size + 1:
                    return LogVerdict(False, count, fold.size, "POSITION_MISSING",
                                      f"position {fold.size + 1} is missing", position=fold.size + 1)
                made += fold.add(merkle.leaf_hash(bytes(row.hash)))
                settle()
            if differs is None:
                differs = _first_stored_difference(conn, made, stored_size)
    total = fold.size
    position = (differs[1] << differs[0]) + 1 if differs else None  # the first event under it
    if waiting is not None:  # a checkpoint of more events than the store holds
        return LogVerdict(False, count, total, "CHECKPOINT_BEYOND_STORE",
                          f"checkpoint {waiting.tree_size} is beyond the store's {total} events",
                          checkpoint=waiting.tree_size, position=position)
    if stored_size > total:
        return LogVerdict(False, count, total, "TREE_BEYOND_STORE",
                          f"the stored tree holds {stored_size} leaves, the store {total} events")
    if failed is not None:
        where = f"; the first event that differs from the tree is at position {position}" if position else ""
        return LogVerdict(False, count, total, "ROOT_MISMATCH",
                          f"checkpoint {failed.tree_size} no longer matches the store's events{where}",
                          checkpoint=failed.tree_size, position=position)
    if differs is not None:
        level, index = differs
        return LogVerdict(False, count, total, "TREE_MISMATCH",
                          f"the stored tree's node ({level}, {index}) differs from the store's events "
                          f"(the subtree from position {position}): `rod log rebuild` mends it",
                          position=position)
    return LogVerdict(True, count, total)


def _first_stored_difference(
    conn: Connection, made: list[tuple[int, int, bytes]], stored_size: int
) -> tuple[int, int] | None:
    """The stored node that differs from the recomputed ones (within the stored tree): the
    lowest level first (a differing leaf names its event exactly), then the earliest; one range
    read per level."""
    by_level: dict[int, dict[int, bytes]] = {}
    for level, index, value in made:
        if (index + 1) << level <= stored_size:
            by_level.setdefault(level, {})[index] = value
    wrong: list[tuple[int, int]] = []
    for level, computed in by_level.items():
        rows = conn.execute(select(log_nodes.c.idx, log_nodes.c.hash).where(
            log_nodes.c.level == level, log_nodes.c.idx.between(min(computed), max(computed))))
        stored = {row.idx: bytes(row.hash) for row in rows}
        wrong += [(level, index) for index, value in computed.items() if stored.get(index) != value]
    return min(wrong) if wrong else None
