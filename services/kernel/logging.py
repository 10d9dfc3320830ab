"""structlog set-up: JSON when not on a terminal, readable on one; person numbers always masked.

The masking is a processor in the chain, so no call site can forget it. It rewrites every
string in the event dict (keys' values, nested lists and dicts, the message itself): any
run of 8 to 10 digits, also when written with spaces, dots or dashes as institutions do,
becomes `*****` plus its last three digits. Integers (positions, offsets, counts) are left
alone: the code base never holds a person number as an int. Ids are never mangled: a UUID
(result, event, batch, delivery and extract ids) is kept whole, even where its groups hold
a run of digits, and so is a client's network address under the key `client` (an IP address
parsed as one: `192.168.100.200` is no person number).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from typing import Any, TextIO

import structlog

_PERSON_NUMBER_RUN = re.compile(r"(?<![\d])\d(?:[ .-]?\d){7,9}(?![\d])")
_UUID = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![0-9A-Za-z])")


def mask_digits(text: str) -> str:
    """Mask every digit run that could be a person number, keeping its last three digits; UUIDs stay.

    >>> mask_digits("bsn 111 222 333 rejected")
    'bsn *****333 rejected'
    """
    kept, start = [], 0
    for uuid in _UUID.finditer(text):
        kept += [_masked(text[start:uuid.start()]), uuid.group()]
        start = uuid.end()
    return "".join([*kept, _masked(text[start:])])


def _masked(text: str) -> str:
    return _PERSON_NUMBER_RUN.sub(lambda m: "*****" + re.sub(r"\D", "", m.group())[-3:], text)


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
