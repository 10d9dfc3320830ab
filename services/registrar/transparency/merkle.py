"""The event log as an RFC 9162 (Certificate Transparency 2.0) Merkle tree, §2.1.

Pure functions, no I/O. Leaf `i` (from 0) is the event at position `i + 1`; its leaf hash is
SHA-256(0x00 || the event's 32-byte hash) and an inner node is SHA-256(0x01 || left || right).

Every proof is built from a `SubtreeHash` callable: `node(level, index)` returns the hash of
the complete subtree over leaves [index * 2**level, (index + 1) * 2**level). Those hashes never
change once the subtree is complete, so a stored tree keeps exactly them (written once each,
O(log n) per appended leaf, see `extend`) and answers a root, an inclusion proof or a
consistency proof in O(log n) reads: only one range on the tree's right edge is incomplete,
and it is folded from at most log2(n) complete subtrees.

The verifiers follow the RFC's algorithms step by step (§2.1.3.2, §2.1.4.2); they never
recompute a tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = HASH()

SubtreeHash = Callable[[int, int], bytes]
"""`node(level, index)`: the hash of the complete subtree [index * 2**level, (index + 1) * 2**level)."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the leaf hash (for rodchain `data` is the event's 32-byte hash)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an inner node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than `size` (the RFC's k, for size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def range_hash(node: SubtreeHash, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range the RFC's recursion visits (start aligned to 2**c >= end - start).

    The range splits into the complete subtrees of the binary digits of its size, largest
    first; the RFC's recursion folds them from the right.
    """
    if end <= start:
        raise ValueError(f"empty range [{start}, {end})")
    parts: list[bytes] = []
    at = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            if at % (1 << level):
                raise ValueError(f"range [{start}, {end}) is not a subtree of the log's tree")
            parts.append(node(level, at >> level))
            at += 1 << level
    result = parts[-1]
    for part in reversed(parts[:-1]):
        result = node_hash(part, result)
    return result


def root(node: SubtreeHash, size: int) -> bytes:
    """MTH(D[0:size]): the root hash of the log's first `size` leaves."""
    if size < 0:
        raise ValueError("tree size must not be negative")
    return EMPTY_ROOT if size == 0 else range_hash(node, 0, size)


def inclusion_proof(node: SubtreeHash, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of §2.1.3.1: the audit path, the sibling nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(range_hash(node, start + k, end))
            end = start + k
        else:
            path.append(node((k.bit_length() - 1), start // k))
            start += k
    path.reverse()
    return path


def consistency_proof(node: SubtreeHash, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[0:second]) of §2.1.4.1; empty when first is 0 or equals second."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    path: list[bytes] = []
    start, end, whole = 0, second, True  # SUBPROOF(first - start, D[start:end], whole)
    while first != end:
        k = _split(end - start)
        if first - start <= k:
            path.append(range_hash(node, start + k, end))
            end = start + k
        else:
            path.append(node(k.bit_length() - 1, start // k))
            start += k
            whole = False
    if not whole:
        path.append(range_hash(node, start, end))
    path.reverse()
    return path


def _hashes_ok(path: Sequence[bytes], *hashes: bytes) -> bool:
    return all(len(h) == HASH_SIZE for h in (*path, *hashes))


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root_hash: bytes) -> bool:
    """§2.1.3.2: does `path` prove leaf hash `leaf` is at `index` in the tree of `size` with `root_hash`?"""
    if not _hashes_ok(path, leaf, root_hash):
        return False
    # 1. leaf_index >= tree_size fails.
    if index < 0 or index >= size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1;  3. r = hash.
    fn, sn, r = index, size - 1, bytes(leaf)
    # 4. For each value p in the inclusion_path array:
    for p in path:
        # a. If sn is 0, stop and fail.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)  # i. r = HASH(0x01 || p || r)
            # ii. If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)  # i. r = HASH(0x01 || r || p)
        # c. Right-shift fn and sn once.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r must equal root_hash.
    return sn == 0 and r == root_hash


def verify_consistency(
    first: int, second: int, path: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """§2.1.4.2: does `path` prove the tree of size `second` extends the tree of size `first`?

    The RFC's algorithm covers 0 < first < second. Outside it: equal sizes need an empty path
    and equal roots; from size 0 the path is empty and the first root is MTH({}).
    """
    if not _hashes_ok(path, first_root, second_root) or not 0 <= first <= second:
        return False
    if first == second:
        return not path and first_root == second_root
    if first == 0:
        return not path and first_root == EMPTY_ROOT
    # 1. An empty consistency_path fails.
    if not path:
        return False
    proof = list(path)
    # 2. If first is an exact power of 2, prepend first_hash.
    if first & (first - 1) == 0:
        proof.insert(0, first_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = first - 1, second - 1
    # 4. While LSB(fn) is set, right-shift fn and sn.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value of the path.
    fr = sr = bytes(proof[0])
    # 6. For each subsequent value c:
    for c in proof[1:]:
        # a. If sn is 0, stop and fail.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)  # i.
            sr = node_hash(c, sr)  # ii.
            # iii. If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)  # i. sr = HASH(0x01 || sr || c)
        # c. Right-shift fn and sn once.
        fn >>= 1
        sn >>= 1
    # 7. fr equals first_hash, sr equals second_hash, and sn is 0.
    return fr == first_root and sr == second_root and sn == 0


def extend(size: int, leaves: Iterable[bytes], node: SubtreeHash) -> dict[tuple[int, int], bytes]:
    """The subtree hashes that appending leaf hashes `leaves` to a tree of `size` completes.

    Returns {(level, index): hash}, the leaves themselves at level 0 included: exactly what a
    stored tree writes, about two entries per leaf. `node` answers for the tree before the
    append; nodes completed earlier in the same call are read from the result.
    """
    new: dict[tuple[int, int], bytes] = {}

    def known(level: int, index: int) -> bytes:
        return new.get((level, index)) or node(level, index)

    for offset, leaf in enumerate(leaves):
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash has 32 bytes")
        index, level, current = size + offset, 0, leaf
        new[(0, index)] = current
        while index & 1:
            current = node_hash(known(level, index - 1), current)
            level, index = level + 1, index >> 1
            new[(level, index)] = current
    return new


class MemoryTree:
    """A Merkle tree held in lists, one per level: the reference the stored tree is tested against."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        self.append(leaves)

    @classmethod
    def from_data(cls, entries: Iterable[bytes]) -> MemoryTree:
        """A tree over raw leaf data (each entry hashed with `leaf_hash`)."""
        return cls(leaf_hash(entry) for entry in entries)

    @property
    def size(self) -> int:
        """How many leaves the tree holds."""
        return len(self.levels[0])

    def node(self, level: int, index: int) -> bytes:
        """The hash of a complete subtree; IndexError when it is not complete (yet)."""
        return self.levels[level][index]

    def append(self, leaves: Iterable[bytes]) -> None:
        """Append leaf hashes, storing each subtree they complete."""
        for (level, index), value in sorted(extend(self.size, leaves, self.node).items()):
            while len(self.levels) <= level:
                self.levels.append([])
            if index != len(self.levels[level]):
                raise AssertionError("subtrees complete in order")
            self.levels[level].append(value)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all when None)."""
        return root(self.node, self.size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size])."""
        return inclusion_proof(self.node, index, self.size if size is None else size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """PROOF(first, D[0:second])."""
        return consistency_proof(self.node, first, self.size if second is None else second)
