"""Bearer tokens: long random strings, stored only as their SHA-256 (institutions and operators)."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex: enough for 256-bit random tokens (they are not passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()
