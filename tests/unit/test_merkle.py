"""The RFC 9162 tree: known answers, every proof up to 64 leaves, and altered proofs refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.registrar.transparency import merkle
from services.registrar.transparency.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    extend,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from tests import rfc9162_reference as ref

# The reference test data of Certificate Transparency implementations, from
# github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs, RootHashes, NodeHashes)
# and proof/verify_test.go (inclusionProofs, consistencyProofs), the same as
# google/certificate-transparency-go's merkletree tests. They hash the leaf DATA with 0x00.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        *("", "00", "10", "2021", "3031", "40414243"),
        *("5051525354555657", "606162636465666768696a6b6c6d6e6f"),
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
LEAF_HASHES = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
]
# (leaf index from 0, tree size, audit path); verify_test.go numbers leaves from 1.
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
    (1, 2, ["6e340b9c"]),
    (0, 2, ["96a296d2"]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
    (6, 7, ["0ebc5d34", "b08693ec", "d37ee418"]),
]
# The full hashes behind the 8-hex-digit prefixes above (NodeHashes of constants.go).
FULL = {
    h[:8]: bytes.fromhex(h)
    for h in (
        *LEAF_HASHES,
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    )
}


def _expand(prefixes: list[str]) -> list[bytes]:
    return [FULL[p] for p in prefixes]


def _flip(hashes: list[bytes], i: int, byte: int = 0) -> list[bytes]:
    changed = bytearray(hashes[i])
    changed[byte] ^= 0x01
    return [*hashes[:i], bytes(changed), *hashes[i + 1 :]]


REFERENCE = MemoryTree.from_data(LEAF_INPUTS)


def test_hashes_have_the_rfc_prefixes():
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
    assert ROOTS[0] == EMPTY_ROOT


def test_leaf_hashes_and_roots_of_the_reference_data():
    assert [h.hex() for h in REFERENCE.levels[0]] == LEAF_HASHES
    assert [REFERENCE.root(n) for n in range(9)] == ROOTS
    assert [ref.mth(LEAF_INPUTS[:n]) for n in range(9)] == ROOTS


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_inclusion_proofs_of_the_reference_data(index, size, expected):
    path = REFERENCE.inclusion_proof(index, size)
    assert path == _expand(expected)
    assert verify_inclusion(REFERENCE.node(0, index), index, size, path, ROOTS[size])
    assert ref.verify_inclusion(REFERENCE.node(0, index), index, size, path, ROOTS[size])


@pytest.mark.parametrize(("first", "second", "expected"), CONSISTENCY)
def test_consistency_proofs_of_the_reference_data(first, second, expected):
    path = REFERENCE.consistency_proof(first, second)
    assert path == _expand(expected)
    assert verify_consistency(first, second, path, ROOTS[first], ROOTS[second])
    assert ref.verify_consistency(first, second, path, ROOTS[first], ROOTS[second])


def test_edge_cases_of_consistency():
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[5])
    assert not verify_consistency(0, 5, [], ROOTS[1], ROOTS[5])  # size 0 has MTH({})
    assert not verify_consistency(0, 5, [ROOTS[1]], EMPTY_ROOT, ROOTS[5])
    assert verify_consistency(5, 5, [], ROOTS[5], ROOTS[5])
    assert not verify_consistency(5, 5, [], ROOTS[5], ROOTS[6])
    assert not verify_consistency(5, 5, [ROOTS[1]], ROOTS[5], ROOTS[5])
    assert not verify_consistency(6, 5, [], ROOTS[6], ROOTS[5])  # time travel
    assert not verify_consistency(2, 5, [], ROOTS[2], ROOTS[5])  # empty proof
    assert consistency_proof(REFERENCE.node, 0, 8) == []


def test_edge_cases_of_inclusion():
    one = REFERENCE.node(0, 0)
    assert verify_inclusion(one, 0, 1, [], ROOTS[1])
    assert not verify_inclusion(one, 1, 1, [], ROOTS[1])
    assert not verify_inclusion(one, 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(b"short", 0, 1, [], b"short")
    with pytest.raises(ValueError):
        inclusion_proof(REFERENCE.node, 8, 8)
    with pytest.raises(ValueError):
        consistency_proof(REFERENCE.node, 6, 5)


def _altered_inclusions(leaf, index, size, path, root_hash):
    """Each way a proof can be wrong (after transparency-dev/merkle's corruptInclusionProof)."""
    yield leaf, index + 1, size, path, root_hash
    yield leaf, index ^ 2, size, path, root_hash
    if index > 0:
        yield leaf, index - 1, size, path, root_hash
    yield leaf, index, size * 2, path, root_hash
    yield leaf, index, size // 2, path, root_hash
    yield _flip([leaf], 0)[0], index, size, path, root_hash
    yield leaf, index, size, path, EMPTY_ROOT
    yield leaf, index, size, [*path, root_hash], root_hash
    yield leaf, index, size, [root_hash, *path], root_hash
    for i in range(len(path)):
        yield leaf, index, size, _flip(path, i, 31), root_hash
    if path:
        yield leaf, index, size, path[:-1], root_hash


def _altered_consistencies(first, second, path, root1, root2):
    """Each way a proof can be wrong (after transparency-dev/merkle's corruptConsistencyProof)."""
    yield first - 1, second, path, root1, root2
    yield first + 1, second, path, root1, root2
    yield first ^ 2, second, path, root1, root2
    yield first, second * 2, path, root1, root2
    yield first, second // 2, path, root1, root2
    yield first, second, path, root2, root1
    yield first, second, path, _flip([root1], 0)[0], root2
    yield first, second, path, root1, _flip([root2], 0)[0]
    yield first, second, [], root1, root2
    yield first, second, [*path, root1], root1, root2
    yield first, second, [*path, root2], root1, root2
    yield first, second, [root1, *path], root1, root2
    yield first, second, [path[0], *path], root1, root2
    yield first, second, path[:-1], root1, root2
    for i in range(len(path)):
        yield first, second, _flip(path, i, 7), root1, root2


def test_every_proof_up_to_64_leaves_matches_the_rfc_and_verifies():
    entries = [i.to_bytes(4, "big") for i in range(64)]
    tree = MemoryTree.from_data(entries)
    roots = [ref.mth(entries[:n]) for n in range(65)]
    assert [tree.root(n) for n in range(65)] == roots
    for n in range(1, 65):
        for m in range(n):
            path = tree.inclusion_proof(m, n)
            assert path == ref.path(m, entries[:n]), (m, n)
            assert verify_inclusion(tree.node(0, m), m, n, path, roots[n]), (m, n)
            assert ref.verify_inclusion(tree.node(0, m), m, n, path, roots[n]), (m, n)
            for altered in _altered_inclusions(tree.node(0, m), m, n, path, roots[n]):
                assert not verify_inclusion(*altered), (m, n, altered[1:3])
                assert not ref.verify_inclusion(*altered), (m, n, altered[1:3])
        for m in range(1, n + 1):
            path = tree.consistency_proof(m, n)
            assert path == ref.proof(m, entries[:n]), (m, n)
            assert verify_consistency(m, n, path, roots[m], roots[n]), (m, n)
            assert ref.verify_consistency(m, n, path, roots[m], roots[n]), (m, n)
            if m < n:
                for altered in _altered_consistencies(m, n, path, roots[m], roots[n]):
                    assert not verify_consistency(*altered), (m, n, altered[:2])
                    assert not ref.verify_consistency(*altered), (m, n, altered[:2])


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.binary(max_size=8), min_size=1, max_size=64),
    data=st.data(),
)
def test_any_log_proves_inclusion_and_consistency_and_refuses_a_flipped_byte(entries, data):
    tree = MemoryTree.from_data(entries)
    n = data.draw(st.integers(1, len(entries)), label="tree size")
    m = data.draw(st.integers(0, n - 1), label="leaf index")
    path = tree.inclusion_proof(m, n)
    assert verify_inclusion(tree.node(0, m), m, n, path, ref.mth(entries[:n]))
    if path:
        i = data.draw(st.integers(0, len(path) - 1), label="flipped hash")
        byte = data.draw(st.integers(0, 31), label="flipped byte")
        assert not verify_inclusion(tree.node(0, m), m, n, _flip(path, i, byte), tree.root(n))
    first = data.draw(st.integers(1, n), label="first size")
    proof = tree.consistency_proof(first, n)
    assert verify_consistency(first, n, proof, ref.mth(entries[:first]), ref.mth(entries[:n]))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="flipped hash")
        byte = data.draw(st.integers(0, 31), label="flipped byte")
        assert not verify_consistency(first, n, _flip(proof, i, byte), tree.root(first), tree.root(n))


def test_extend_writes_each_subtree_once_when_it_completes():
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(37)]
    stored: dict[tuple[int, int], bytes] = {}
    writes = 0
    for start, stop in ((0, 1), (1, 2), (2, 9), (9, 16), (16, 37)):  # batches of any size
        new = extend(start, leaves[start:stop], lambda level, index: stored[(level, index)])
        assert not new.keys() & stored.keys()
        stored.update(new)
        writes += len(new)
        assert root(lambda level, index: stored[(level, index)], stop) == ref_root(leaves[:stop])
    assert writes == 37 + 18 + 9 + 4 + 2 + 1  # every complete subtree of 37 leaves, once
    assert stored == {
        (level, index): MemoryTree(leaves).node(level, index)
        for level in range(6)
        for index in range(37 >> level)
    }


def ref_root(leaf_hashes: list[bytes]) -> bytes:
    """MTH over leaf hashes (not data), by the RFC's recursion."""
    if not leaf_hashes:
        return EMPTY_ROOT
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = 1 << ((len(leaf_hashes) - 1).bit_length() - 1)
    return node_hash(ref_root(leaf_hashes[:k]), ref_root(leaf_hashes[k:]))


def test_proofs_read_logarithmically_many_subtrees():
    tree = MemoryTree(leaf_hash(i.to_bytes(4, "big")) for i in range(1000))
    reads = 0

    def counting(level: int, index: int) -> bytes:
        nonlocal reads
        reads += 1
        return tree.node(level, index)

    for size in (1000, 999, 513, 512):
        for function, *arguments in (
            (merkle.root, size),
            (inclusion_proof, size - 1, size),
            (inclusion_proof, 0, size),
            (consistency_proof, 1, size),
            (consistency_proof, size // 3, size),
        ):
            reads = 0
            function(counting, *arguments)
            assert reads <= 2 * size.bit_length(), (function.__name__, arguments, reads)


def test_a_range_that_is_no_subtree_is_refused():
    with pytest.raises(ValueError):
        merkle.range_hash(REFERENCE.node, 1, 3)
    with pytest.raises(ValueError):
        merkle.range_hash(REFERENCE.node, 3, 3)
