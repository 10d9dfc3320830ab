"""structlog set-up: JSON when not on a terminal, readable on one; person numbers always masked.

The masking is a processor in the chain, so no call site can forget it. It rewrites every
string in the event dict (keys' values, nested lists and dicts, exceptions, the message
itself): any run of 8 to 10 digits, also when written with spaces, dots or dashes as
institutions do, becomes the register's one masked form (`******333`: six asterisks and the
last three digits, :func:`services.kernel.identifiers.mask_person_number`). Integers
(positions, offsets, counts) are left alone: the code base never holds a person number as
an int.

Ids are never mangled: a digit run inside an id is not a person number. Kept whole are a UUID
(result, event, batch, delivery and extract ids), also one whose first group is all digits
(`91264990-38f2-…`, `12345678-9abc-…`), and a hexadecimal id of 16 or more hex digits
(Avro fingerprints, digests, a UUID without its dashes: `123456789abcdef0`); a run of nine
digits standing alone or glued to other letters is still masked. A client's network address
under the key `client` (an IP address parsed as one: `192.168.100.200`) is kept too.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from typing import Any, TextIO

import structlog

from services.kernel.identifiers import mask_person_number

_PERSON_NUMBER_RUN = re.compile(r"(?<![\d])\d(?:[ .-]?\d){7,9}(?![\d])")
_HEX = "[0-9a-fA-F]"
_ID = re.compile(  # a UUID, or 16+ hex digits; not part of a longer word
    rf"(?<![0-9A-Za-z])(?:{_HEX}{{8}}(?:-{_HEX}{{4}}){{3}}-{_HEX}{{12}}|{_HEX}{{16,}})(?![0-9A-Za-z])"
)


def mask_digits(text: str) -> str:
    """Mask every digit run that could be a person number (mask_person_number); ids stay whole.

    >>> mask_digits("bsn 111 222 333 rejected")
    'bsn ******333 rejected'
    >>> mask_digits("batch 91264990-38f2-4a1b-8c2d-123456789abc, fingerprint 123456789abcdef0")
    'batch 91264990-38f2-4a1b-8c2d-123456789abc, fingerprint 123456789abcdef0'
    """
    if not _PERSON_NUMBER_RUN.search(text):
        return text  # the common case: nothing that could be a person number
    kept, start = [], 0
    for found in _ID.finditer(text):
        kept += [_masked(text[start:found.start()]), found.group()]
        start = found.end()
    return "".join([*kept, _masked(text[start:])])


def _masked(text: str) -> str:
    return _PERSON_NUMBER_RUN.sub(lambda m: mask_person_number(m.group()), text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_digits(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(v) for v in value)
    if isinstance(value, BaseException):
        return mask_digits(repr(value))
    return value


def mask_person_numbers(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask person numbers in every value of the event dict."""
    return {key: value if key == "client" and _is_address(value) else _mask(value)
            for key, value in event_dict.items()}


def _is_address(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def configure(stream: TextIO | None = None, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process; tests pass their own stream."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            mask_person_numbers,  # after exception formatting, so tracebacks are masked too
            structlog.processors.TimeStamper(fmt="iso", utc=True),  # after masking: its digits stay
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger with the component name; lazy, so module-level loggers made before
    configure() still follow it (an eager bind() would freeze the default set-up)."""
    return structlog.get_logger(component=name)
