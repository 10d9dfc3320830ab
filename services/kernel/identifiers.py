"""Person numbers: the BSN and DUO's onderwijsnummer, as pure functions.

Both are nine digits checked with the same weighted "eleven test" (weights 9..2 and -1):
a BSN's weighted sum is divisible by 11, an onderwijsnummer starts with ``10`` and its
weighted sum leaves remainder 5. No number can pass both checks.

Nothing here logs or raises with a number in the message; show a number to people only
through :func:`mask_person_number`.
"""

from __future__ import annotations

import hashlib
import re
import uuid

_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)
_SEPARATORS = str.maketrans("", "", " .-")
_ZERO = ord("0")


def normalize_person_number(raw: str) -> str:
    """Strip spaces, dots and dashes, and pad an old 8-digit number to 9 digits.

    The result is not validated: check it with :func:`is_valid_bsn` or
    :func:`is_valid_onderwijsnummer`.

    >>> normalize_person_number("1112.22.333")
    '111222333'
    >>> normalize_person_number("1234-5672")
    '012345672'
    """
    number = raw.strip().translate(_SEPARATORS)
    if len(number) == 8 and _is_digits(number):
        return "0" + number
    return number


def is_valid_bsn(n: str) -> bool:
    """True for a well-formed BSN: 9 digits, weighted sum divisible by 11, not all zeros.

    >>> is_valid_bsn("111222333"), is_valid_bsn("123456789"), is_valid_bsn("000000000")
    (True, False, False)
    """
    return len(n) == 9 and _is_digits(n) and n != "000000000" and _weighted_sum(n) % 11 == 0


def is_valid_onderwijsnummer(n: str) -> bool:
    """True for a well-formed onderwijsnummer: 9 digits, starts with 10, weighted sum mod 11 is 5.

    >>> is_valid_onderwijsnummer("101222331"), is_valid_onderwijsnummer("101222333")
    (True, False)
    """
    return len(n) == 9 and n.startswith("10") and _is_digits(n) and _weighted_sum(n) % 11 == 5


PERSON_NUMBER_MASK = "******"
MASKED_PERSON_NUMBER = re.compile(r"\*{6}\d{3}")  # what mask_person_number gives for a number


def mask_person_number(n: str) -> str:
    """The register's one masked form of a person number: six asterisks and its last three digits.

    Everything that shows or logs a person number uses it: reports, extracts, `rod feed tail`,
    the console, the Loket and the logs' masking processor. Spaces, dots and dashes written in
    the number are dropped first; the mask has a fixed width, so it does not reveal the length
    of what it hides, and a value of fewer than three digits is hidden whole.

    >>> mask_person_number("111222333"), mask_person_number("1112.22.333"), mask_person_number("333")
    ('******333', '******333', '******333')
    """
    digits = n.translate(_SEPARATORS)
    return PERSON_NUMBER_MASK + (digits[-3:] if len(digits) >= 3 else "")


def _is_digits(s: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as '²' or Arabic-Indic numerals.
    return s.isascii() and s.isdigit()


def _weighted_sum(n: str) -> int:
    return sum((ord(c) - _ZERO) * w for c, w in zip(n, _WEIGHTS, strict=True))


EVENT_NAMESPACE = uuid.UUID("5b0c7c1e-3f1e-4a8e-9d55-8a3c2f0e7d10")


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """uuid.uuid5(namespace, name) as text, written out (RFC 4122: SHA-1 of namespace and name):
    ids made for every record and message, where uuid's objects cost three times more."""
    raw = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_id_for(result_id: str, version: int) -> str:
    """Deterministic event id: what the event is (this result, this version), so a republished
    event, and a deletion's id worked out from its registration, are always the same."""
    return uuid5_text(EVENT_NAMESPACE, f"{result_id}/{version}")
