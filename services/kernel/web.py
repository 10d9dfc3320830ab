"""What the server-rendered pages share (the operator console `/ops` and the institutions' `/loket`):
the refusal they answer with, the capped form reader, the same-origin and CSRF checks, session
ids kept as hashes, and the headers that say nothing may load or run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qs

from fastapi import Request, Response

from services.kernel.text import is_unicode


class Refused(Exception):
    """An answer other than the page: status and a short message free of personal data."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def hash_id(value: str) -> str:
    """SHA-256 hex of a session or flash id: the table keeps this, the cookie or URL the id."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_urlsafe(32)


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def check_text(parsed: dict[str, list[str]]) -> None:
    """Refused(422) naming the field when a form key or value is not valid text (a lone surrogate)."""
    for key, values in parsed.items():
        if not all(map(is_unicode, [key, *values])):
            field = key if is_unicode(key) and key.isidentifier() and len(key) <= 40 else "?"
            raise Refused(422, f"TEXT_NOT_UNICODE: the form field {field} is not valid text (Unicode).")


async def capped_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk; Refused(413) once it passes `limit` bytes."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "The form is too large.")
        yield chunk


async def read_form(request: Request, limit: int, max_fields: int = 20) -> dict[str, str]:
    """The urlencoded form of a POST, capped at `limit` bytes; each field's first value."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, "Send the form as application/x-www-form-urlencoded.")
    body = b"".join([chunk async for chunk in capped_body(request, limit)])
    try:
        # bytes that are not UTF-8 become lone surrogates (not U+FFFD), so check_text refuses them
        parsed = parse_qs(body.decode(errors="surrogateescape"), keep_blank_values=True,
                          max_num_fields=max_fields, errors="surrogateescape")
    except ValueError:
        raise Refused(400, "The form could not be read.") from None
    check_text(parsed)
    return {key: values[0] for key, values in parsed.items()}


def same_origin(request: Request) -> None:
    """Refuse a POST another site's page sent (Origin, or Sec-Fetch-Site where the browser sets it)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Refused(403, "Cross-site requests are refused.")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise Refused(403, "Cross-site requests are refused.")


def csrf_matches(expected: str | None, sent: str | None) -> bool:
    """The form's CSRF token against the session's, in constant time."""
    return bool(expected) and hmac.compare_digest((sent or "").encode(), (expected or "").encode())


def page_policy(css: str) -> str:
    """A Content-Security-Policy under which nothing loads or runs but the one inline style block."""
    style_hash = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'sha256-{style_hash}'; img-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def page_headers(policy: str) -> dict[str, str]:
    """The headers of every page that may show personal data."""
    return {"content-security-policy": policy, "x-content-type-options": "nosniff",
            "x-frame-options": "DENY", "cache-control": "no-store", "referrer-policy": "same-origin"}


def set_private_cookie(request: Request, response: Response, name: str, value: str, path: str,
                       max_age: int) -> None:
    """A cookie only this site's pages under `path` get: HttpOnly, SameSite=Strict, Secure on https."""
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def drop_private_cookie(response: Response, name: str, path: str) -> None:
    """Tell the browser to forget a cookie set_private_cookie set."""
    response.delete_cookie(name, path=path, httponly=True, samesite="strict")
