"""Signed checkpoints: the C2SP `tlog-checkpoint` body inside a C2SP `signed-note` (Ed25519).

Pure functions, no I/O. A checkpoint note reads

    rodchain.local/log
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

    — rodchain.local/log Az3grlgt...

The signature covers the note text (the body, up to and including its last newline, without
the blank line). Key texts use the format of Go's `golang.org/x/mod/sumdb/note`, so that
package and any transparency-log tool read them: the verifier key
`<name>+<key id hex>+<base64(0x01 || public key)>` and the signer key
`PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || 32-byte seed)>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01  # the signed-note signature type of Ed25519
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # as Go's note.Open; the spec asks for at least 16
_NAME = re.compile(r"[^\s+]+")  # non-empty, no Unicode space, no plus
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_PRIVATE_PREFIX = "PRIVATE+KEY+"


class NoteError(ValueError):
    """A note, checkpoint or key text that is malformed or does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """The three lines of a tlog-checkpoint body (and any extension lines)."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The note text: origin, tree size, base64 root hash, extension lines, each ending in newline."""
        return checkpoint_body(self.origin, self.tree_size, self.root_hash, self.extensions)


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 note verifier: the key name, its 4-byte key id and the public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    def text(self) -> str:
        """The verifier key text `<name>+<key id hex>+<base64(0x01 || public key)>`."""
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ED25519]) + _raw(self.public_key))}"


@dataclass(frozen=True)
class Signer:
    """An Ed25519 note signer: the key name and the private key."""

    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A new signer with a fresh Ed25519 key."""
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @property
    def verifier(self) -> Verifier:
        """The matching verifier."""
        public = self.private_key.public_key()
        return Verifier(self.name, key_id(self.name, _raw(public)), public)

    def text(self) -> str:
        """The signer key text `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>` (a secret)."""
        seed = self.private_key.private_bytes_raw()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.verifier.key_id.hex()}+{_b64(bytes([ED25519]) + seed)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NoteError("a key name must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def checkpoint_body(origin: str, tree_size: int, root_hash: bytes, extensions: tuple[str, ...] = ()) -> str:
    """The tlog-checkpoint note text for a tree of `tree_size` leaves with `root_hash`."""
    _check_name(origin)
    if tree_size < 0:
        raise NoteError("tree size must not be negative")
    if len(root_hash) != 32:
        raise NoteError("the root hash has 32 bytes")
    if any(not line or "\n" in line for line in extensions):
        raise NoteError("an extension line must be non-empty and one line")
    return "".join(f"{line}\n" for line in (origin, str(tree_size), _b64(root_hash), *extensions))


def parse_checkpoint(body: str) -> Checkpoint:
    """Read a tlog-checkpoint note text (as `open_note` returns it); NoteError when malformed."""
    if not body.endswith("\n"):
        raise NoteError("a checkpoint ends in a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a tree size and a root hash line")
    origin, size, root_text, *extensions = lines
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if not _DECIMAL.fullmatch(size):
        raise NoteError("the checkpoint's tree size is not a decimal number without leading zeros")
    root_hash = _unb64(root_text, "the checkpoint's root hash")
    if len(root_hash) != 32:
        raise NoteError("the checkpoint's root hash does not have 32 bytes")
    if any(not line for line in extensions):
        raise NoteError("a checkpoint's extension line is empty")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def parse_verifier(text: str) -> Verifier:
    """Read a verifier key text `<name>+<key id hex>+<base64(0x01 || public key)>`; NoteError if malformed."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key has three parts: name+keyid+key")
    name, id_hex, key_text = parts
    _check_name(name)
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise NoteError("a verifier key's id is 8 lowercase hex digits")
    key = _unb64(key_text, "the verifier key")
    if len(key) != 33 or key[0] != ED25519:
        raise NoteError("the verifier key is not an Ed25519 key (0x01 and 32 bytes)")
    if key_id(name, key[1:]) != bytes.fromhex(id_hex):
        raise NoteError("the verifier key's id does not match its name and key")
    return Verifier(name, bytes.fromhex(id_hex), Ed25519PublicKey.from_public_bytes(key[1:]))


def parse_signer(text: str) -> Signer:
    """Read a signer key text `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`."""
    if not text.startswith(_PRIVATE_PREFIX):
        raise NoteError("a signer key starts with PRIVATE+KEY+")
    parts = text[len(_PRIVATE_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise NoteError("a signer key has three parts after PRIVATE+KEY+: name+keyid+key")
    name, id_hex, key_text = parts
    _check_name(name)
    key = _unb64(key_text, "the signer key")
    if len(key) != 33 or key[0] != ED25519:
        raise NoteError("the signer key is not an Ed25519 seed (0x01 and 32 bytes)")
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
    if not _KEY_ID_HEX.fullmatch(id_hex) or signer.verifier.key_id.hex() != id_hex:
        raise NoteError("the signer key's id does not match its name and key")
    return signer


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends in a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise NoteError("a note holds no control characters other than newline")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise NoteError("a note is valid UTF-8") from None


def sign_note(text: str, signer: Signer) -> str:
    """The signed note: `text`, a blank line and the signer's signature line."""
    _check_text(text)
    signature = signer.private_key.sign(text.encode())
    return f"{text}\n{SIGNATURE_PREFIX}{signer.name} {_b64(signer.verifier.key_id + signature)}\n"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: the key name, the 4-byte key id and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """The text of a signed note and its signature lines, unverified; NoteError when malformed."""
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a signed note has a blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise NoteError("a signed note has at least one signature line")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note has at most {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("a signature line starts with an em dash and a space")
        name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not space or not _NAME.fullmatch(name) or " " in encoded:
            raise NoteError("a signature line is '— <key name> <base64 signature>'")
        raw = _unb64(encoded, "a signature")
        if len(raw) < 5:
            raise NoteError("a signature holds a 4-byte key id and the signature")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, signatures


def open_note(note: str, verifier: Verifier) -> str:
    """The text of a signed note once `verifier`'s signature on it checks; NoteError otherwise.

    As the signed-note spec says: signatures by other keys (another name or key id) are
    ignored, a failing signature by this key rejects the note, and a note without a
    verifying signature by this key is rejected.
    """
    text, signatures = split_note(note)
    verified = False
    for signature in signatures:
        if signature.name != verifier.name or signature.key_id != verifier.key_id:
            continue
        try:
            verifier.public_key.verify(signature.signature, text.encode())
        except InvalidSignature:
            raise NoteError(f"invalid signature for key {verifier.name}+{verifier.key_id.hex()}") from None
        verified = True
    if not verified:
        raise NoteError(f"the note has no signature by key {verifier.name}+{verifier.key_id.hex()}")
    return text


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a signed note."""
    return sign_note(checkpoint.body(), signer)


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint in a signed note once its signature by `verifier` checks; NoteError otherwise."""
    return parse_checkpoint(open_note(note, verifier))
