"""Signed checkpoints: Go's sumdb/note vectors, the C2SP examples, round trips and refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.registrar.transparency.checkpoint import (
    Checkpoint,
    NoteError,
    Signer,
    checkpoint_body,
    key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_signer,
    parse_verifier,
    sign_checkpoint,
    sign_note,
    split_note,
)
from services.registrar.transparency.merkle import MemoryTree

# Known answers from golang.org/x/mod, sumdb/note/note_test.go (TestNewVerifier, TestSign, TestOpen).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
# The examples of c2sp.org/signed-note and c2sp.org/tlog-checkpoint (their keys are not published).
C2SP_TEXT = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n"
C2SP_NOTE = (
    C2SP_TEXT + "\n"
    "\u2014 quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)


def test_go_note_vector_verifies():
    verifier = parse_verifier(PETER_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == bytes.fromhex("c74f20a3")
    assert verifier.text() == PETER_VKEY
    assert open_note(TEXT + "\n" + PETER_SIG, verifier) == TEXT


def test_go_signer_key_signs_byte_for_byte_as_go_does():
    signer = parse_signer(PETER_SKEY)
    assert signer.text() == PETER_SKEY
    assert signer.verifier.text() == PETER_VKEY
    assert sign_note(TEXT, signer) == TEXT + "\n" + PETER_SIG  # Ed25519 is deterministic


def test_the_key_id_is_the_spec_hash_computed_independently():
    raw = base64.b64decode(PETER_VKEY.split("+", 2)[2])
    assert raw[0] == 0x01
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4].hex() == "c74f20a3"
    assert key_id("PeterNeumann", raw[1:]).hex() == "c74f20a3"


def test_signatures_by_other_keys_are_ignored_and_a_known_one_is_needed():
    peter, enoch = parse_verifier(PETER_VKEY), parse_verifier(ENOCH_VKEY)
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, peter) == TEXT
    assert open_note(both, enoch) == TEXT
    with pytest.raises(NoteError, match="no signature by key EnochRoot"):
        open_note(TEXT + "\n" + PETER_SIG, enoch)
    # Same name, other key id: not this key's signature, so ignored (and then missing).
    other = PETER_SIG.replace("x08g", "xxxx")
    with pytest.raises(NoteError, match="no signature by key PeterNeumann"):
        open_note(TEXT + "\n" + other, peter)


def test_a_bad_signature_by_the_known_key_rejects_the_note():
    peter = parse_verifier(PETER_VKEY)
    forged = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + "\n" + forged + PETER_SIG, peter)


def test_a_changed_text_is_refused():
    peter = parse_verifier(PETER_VKEY)
    changed = TEXT.replace("problem,", "problem;")
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(changed + "\n" + PETER_SIG, peter)


@pytest.mark.parametrize(
    "note",
    [
        TEXT,  # no signatures
        TEXT + "\n",  # blank line, no signatures
        TEXT + "\n" + PETER_SIG[:-1],  # no final newline
        "\x01" + TEXT + "\n" + PETER_SIG,  # control character
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),  # a hyphen is no em dash
        TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"),  # not base64
        TEXT + "\n" + "\u2014 PeterNeumann AAAA\n",  # shorter than a key id
        TEXT + "\n" + PETER_SIG * 101,  # too many signatures
        "\ud800" + TEXT + "\n" + PETER_SIG,  # not valid Unicode
    ],
)
def test_malformed_notes_are_refused(note):
    with pytest.raises(NoteError):
        open_note(note, parse_verifier(PETER_VKEY))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # id does not match
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # hex in capitals
        "PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # other name
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
        # From Go's TestNewVerifier: wrong key length and unknown algorithm, each with its id adjusted.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_verifier_keys_are_refused(key):
    with pytest.raises(NoteError):
        parse_verifier(key)


def test_every_truncation_and_changed_byte_of_the_key_is_refused():
    # After Go's TestNewVerifier: any substring or any one changed character is not the key.
    for i in range(len(PETER_VKEY)):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteError):
                    parse_verifier(PETER_VKEY[i:j])
        with pytest.raises(NoteError):
            parse_verifier(PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :])


def test_malformed_signer_keys_are_refused():
    for key in (
        PETER_SKEY.removeprefix("PRIVATE+KEY+"),
        PETER_SKEY.replace("c74f20a3", "c74f20a4"),
        PETER_SKEY.replace("+AYEK", "+AZEK"),
        PETER_SKEY[:-1],
    ):
        with pytest.raises(NoteError):
            parse_signer(key)


def test_the_c2sp_examples_split_at_the_last_blank_line():
    text, signatures = split_note(C2SP_NOTE)
    assert text == C2SP_TEXT
    assert [s.name for s in signatures] == ["quasimodo.example/salvatore"]
    assert len(signatures[0].key_id) == 4 and len(signatures[0].signature) == 64
    text, signatures = split_note(C2SP_CHECKPOINT)
    checkpoint = parse_checkpoint(text)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.tree_size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.body() == text
    assert signatures[0].name == checkpoint.origin


def test_a_checkpoint_round_trips_and_verifies_with_cryptography_directly():
    tree = MemoryTree.from_data([b"a", b"b", b"c"])
    signer = Signer.generate("rodchain.local/log")
    checkpoint = Checkpoint("rodchain.local/log", 3, tree.root())
    note = sign_checkpoint(checkpoint, signer)
    assert note.startswith(f"rodchain.local/log\n3\n{base64.b64encode(tree.root()).decode()}\n\n\u2014 ")
    assert open_checkpoint(note, parse_verifier(signer.verifier.text())) == checkpoint
    # Checked as an outsider would: the key text and the signature line, nothing of ours.
    name, id_hex, key_text = signer.verifier.text().split("+", 2)
    public = base64.b64decode(key_text)
    assert public[0] == 0x01
    assert hashlib.sha256(name.encode() + b"\n" + public).digest()[:4].hex() == id_hex
    body, signature_line = note.split("\n\n")
    dash_name, encoded = signature_line.rstrip("\n").rsplit(" ", 1)
    assert dash_name == "\u2014 " + name
    raw = base64.b64decode(encoded)
    assert raw[:4].hex() == id_hex
    Ed25519PublicKey.from_public_bytes(public[1:]).verify(raw[4:], (body + "\n").encode())
    assert parse_signer(signer.text()).verifier.text() == signer.verifier.text()


def test_a_checkpoint_with_a_wrong_key_or_a_changed_body_is_refused():
    signer, other = Signer.generate("rodchain.local/log"), Signer.generate("rodchain.local/log")
    note = sign_checkpoint(Checkpoint("rodchain.local/log", 8, bytes(32)), signer)
    with pytest.raises(NoteError, match="no signature by key"):
        open_checkpoint(note, other.verifier)
    with pytest.raises(NoteError, match="invalid signature"):
        open_checkpoint(note.replace("\n8\n", "\n9\n"), signer.verifier)


def test_checkpoint_bodies_follow_the_spec():
    assert checkpoint_body("rodchain.local/log", 0, bytes(32)) == (
        "rodchain.local/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    )
    root_line = base64.b64encode(bytes(32)).decode()
    assert parse_checkpoint(f"o\n5\n{root_line}\next\n").extensions == ("ext",)
    for body in (
        f"o\n5\n{root_line}",  # no final newline
        "o\n5\n",  # no root line
        f"\n5\n{root_line}\n",  # empty origin
        f"o\n05\n{root_line}\n",  # leading zero
        f"o\n-5\n{root_line}\n",
        f"o\n5\n{base64.b64encode(bytes(31)).decode()}\n",  # 31 bytes
        f"o\n5\n{root_line}\n\n",  # empty extension line
    ):
        with pytest.raises(NoteError):
            parse_checkpoint(body)
    for origin, size, root_hash in (("has space", 1, bytes(32)), ("a+b", 1, bytes(32)), ("o", -1, bytes(32))):
        with pytest.raises(NoteError):
            checkpoint_body(origin, size, root_hash)
    with pytest.raises(NoteError):
        checkpoint_body("o", 1, bytes(31))
