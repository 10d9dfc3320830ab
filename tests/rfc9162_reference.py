"""RFC 9162 §2.1 written out as its recursive definitions, independent of the project's merkle module.

MTH (§2.1.1), PATH (§2.1.3.1) and PROOF/SUBPROOF (§2.1.4.1) over a list of leaf inputs, slow
and obviously right: the tests compare the project's tree, built from stored subtree hashes,
against these.
"""

from __future__ import annotations

import hashlib


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf inputs."""
    n = len(entries)
    if n == 0:
        return _hash(b"")
    if n == 1:
        return _hash(b"\x00" + entries[0])
    k = _k(n)
    return _hash(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def path(m: int, entries: list[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    n = len(entries)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return path(m, entries[:k]) + [mth(entries[k:])]
    return path(m - k, entries[k:]) + [mth(entries[:k])]


def proof(m: int, entries: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m <= n."""
    return _subproof(m, entries, True)


def _subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = _k(n)
    if m <= k:
        return _subproof(m, entries[:k], b) + [mth(entries[k:])]
    return _subproof(m - k, entries[k:], False) + [mth(entries[:k])]


def _node(left: bytes, right: bytes) -> bytes:
    return _hash(b"\x01" + left + right)


def verify_inclusion(leaf_hash: bytes, m: int, n: int, audit_path: list[bytes], root: bytes) -> bool:
    """True when `audit_path` is PATH(m, D[n]) for `leaf_hash` under `root`, read back through the definition.

    Not the RFC's §2.1.3.2 loop (the project uses that): PATH's recursion run backwards, the
    last hash being the sibling at the top.
    """

    def climb(m: int, n: int, hashes: list[bytes]) -> bytes | None:
        if n == 1:
            return leaf_hash if not hashes else None
        if not hashes:
            return None
        k, sibling = _k(n), hashes[-1]
        if m < k:
            below = climb(m, k, hashes[:-1])
            return None if below is None else _node(below, sibling)
        below = climb(m - k, n - k, hashes[:-1])
        return None if below is None else _node(sibling, below)

    return 0 <= m < n and climb(m, n, list(audit_path)) == root


def verify_consistency(m: int, n: int, hashes: list[bytes], first_root: bytes, second_root: bytes) -> bool:
    """True when `hashes` is PROOF(m, D[n]) joining the two roots, read back through SUBPROOF's definition.

    Not the RFC's §2.1.4.2 loop: each step of SUBPROOF run backwards yields the old and the new
    subtree root at once.
    """

    def roots(m: int, n: int, b: bool, hashes: list[bytes]) -> tuple[bytes, bytes] | None:
        if m == n:
            if b:
                return (first_root, first_root) if not hashes else None
            return (hashes[0], hashes[0]) if len(hashes) == 1 else None
        if not hashes:
            return None
        k, last = _k(n), hashes[-1]
        if m <= k:
            inner = roots(m, k, b, hashes[:-1])
            return None if inner is None else (inner[0], _node(inner[1], last))
        inner = roots(m - k, n - k, False, hashes[:-1])
        return None if inner is None else (_node(last, inner[0]), _node(last, inner[1]))

    if not 0 < m <= n:
        return m == 0 and not hashes and first_root == _hash(b"")
    return roots(m, n, True, list(hashes)) == (first_root, second_root)
