"""Text that enters the system must be Unicode: one check, used at every kind of entry.

Python strings can hold lone surrogates (`"\\ud800"`), which are not Unicode and cannot be
encoded as UTF-8: JSON lets one through as an escape, and undecodable bytes become one under
`surrogateescape`. Left alone, such text fails deep inside (the Avro encoder, the database)
as a 500. Each entry refuses it with TEXT_NOT_UNICODE instead: JSON bodies through
`JsonBody`, bulk files per record (services/registrar/bulk.py), console forms
(services/operations/console.py) and `rod` arguments (services/cli.py).

    >>> is_unicode("diploma"), is_unicode("\\ud800")
    (True, False)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

# pydantic error types that mean "not Unicode": ours for a value, pydantic's own for an object
# key (it then names the object that holds the key)
NOT_UNICODE = frozenset({"text_not_unicode", "string_unicode"})


def is_unicode(text: str) -> bool:
    """False for text with a lone surrogate (it has no UTF-8 form)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class JsonBody(BaseModel):
    """A JSON request body: unknown fields are refused (422 FIELD_UNKNOWN), and so is a text
    field, or a text in a list, that is not Unicode (422 TEXT_NOT_UNICODE, pydantic error type
    `text_not_unicode`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _unicode(cls, value: Any) -> Any:
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str) and not text.isascii() and not is_unicode(text):  # ASCII: at a glance
                raise PydanticCustomError("text_not_unicode", "text is not valid Unicode")
        return value
