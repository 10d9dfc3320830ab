"""Inclusion and consistency proofs as `GET /v1/log/proofs/...` and `rod log prove` answer them.

    inclusion(store, position=5, tree_size=None)   # {"leaf_index": 4, "tree_size": N, "hashes": [...]}
    consistency(store, first=8, second=None)       # {"first": 8, "second": N, "hashes": [...]}

A size left out is the newest checkpoint's. Each answer reads the newest checkpoint's size and
the O(log n) stored nodes the proof needs; nothing is rehashed. Over HTTP a size beyond the
newest checkpoint is refused (an outsider checks a proof against a root it holds signed, so an
unsigned size helps nobody); the operator's CLI may ask up to the stored tree (`signed_only=False`).
Hashes are standard base64, as in the checkpoint's root line.
"""

from __future__ import annotations

import base64
from typing import Any

from services.kernel.codes import Problem, problem
from services.registrar.store import EventStore
from services.registrar.transparency.tree import CheckpointLog, StoredTree


class ProofRefused(Exception):
    """A proof that cannot be given: the HTTP status and the problem that says what to fix."""

    def __init__(self, status: int, refusal: Problem) -> None:
        super().__init__(refusal.code)
        self.status = status
        self.problem = refusal


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _newest(store: EventStore, signed_only: bool) -> tuple[int | None, int | None]:
    """(the default size, the largest size allowed; None: up to the stored tree)."""
    latest = CheckpointLog(store).latest()
    if latest is None:
        if signed_only:
            raise ProofRefused(503, problem("LOG_NO_CHECKPOINT"))
        return None, None
    return latest.tree_size, latest.tree_size if signed_only else None


def _within(size: int, limit: int | None, field: str) -> None:
    if limit is not None and size > limit:
        raise ProofRefused(400, problem("LOG_SIZE_BEYOND_CHECKPOINT", field, newest=limit))


def inclusion(store: EventStore, position: int, tree_size: int | None = None,
              signed_only: bool = True) -> dict[str, Any]:
    """The RFC 9162 §2.1.3 audit path of the event at `position` in the tree of `tree_size` leaves.

    Raises ProofRefused (and, with signed_only=False, TreeError for a size beyond the stored tree).
    """
    default, limit = _newest(store, signed_only)
    tree = StoredTree(store)
    size = tree_size if tree_size is not None else default if default is not None else tree.size()
    _within(size, limit, "tree_size")
    if not 1 <= position <= size:
        raise ProofRefused(400, problem("LOG_POSITION_OUT_OF_RANGE", "position", tree_size=size))
    hashes = tree.inclusion_proof(position - 1, size)
    return {"leaf_index": position - 1, "tree_size": size, "hashes": [b64(h) for h in hashes]}


def consistency(store: EventStore, first: int, second: int | None = None,
                signed_only: bool = True) -> dict[str, Any]:
    """The RFC 9162 §2.1.4 proof that the tree of `second` leaves extends the one of `first`
    (empty when they are equal)."""
    default, limit = _newest(store, signed_only)
    tree = StoredTree(store)
    size = second if second is not None else default if default is not None else tree.size()
    _within(size, limit, "second")
    if not 1 <= first <= size:
        raise ProofRefused(400, problem("LOG_SIZES_OUT_OF_ORDER", "first"))
    hashes = tree.consistency_proof(first, size)
    return {"first": first, "second": size, "hashes": [b64(h) for h in hashes]}
