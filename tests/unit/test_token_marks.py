"""The memory of known tokens against revocations made elsewhere (issue 13, finding 5), on SQLite:
a remembered token is trusted only under a revocation generation read since the revocation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.kernel import tokens
from services.kernel.tokens import hash_token
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.store import EventStore
from services.registrar.tokens import TokenBook, institution_tokens, rotate_token


def test_a_remembered_token_is_refused_once_revocation_returns(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "FRESH_SECONDS", 0.3)
    monkeypatch.setattr(tokens, "REFRESH_SECONDS", 0.05)
    store = EventStore(f"sqlite:///{tmp_path / 'registrar.db'}")
    registrar = Registrar(store, Catalogue.load(None))
    kept, revoked = (registrar.add_institution(code, code, ["HO"]) for code in ("25BE", "30XX"))
    book = TokenBook(store.engine)  # the server's
    assert book.lookup(kept) == "25BE" and book.lookup(revoked) == "30XX"
    for _ in range(10):  # requests keep coming: the generation is read again in the background
        assert book.cached(kept) == "25BE" and book.cached(revoked) == "30XX"
        time.sleep(0.05)

    elsewhere = institution_tokens(EventStore(f"sqlite:///{tmp_path / 'registrar.db'}").engine)  # the CLI's
    assert elsewhere.revoke(hash_token(revoked), "test", "left") == "30XX"
    assert book.cached(revoked) is None and book.lookup(revoked) is None  # no wait for the 60 s memory
    assert book.lookup(kept) == "25BE" and book.cached(kept) == "25BE"  # the others are looked up once more
    assert elsewhere.revoke(hash_token(revoked), "test", "again") is None

    new = rotate_token(elsewhere.engine, "25BE", "test", "rotated")
    assert book.cached(kept) is None and book.lookup(kept) is None
    assert book.lookup(new) == "25BE"
    listed = {row["owner"]: row for row in elsewhere.listing() if not row["revoked"]}
    assert set(listed) == {"25BE"} and listed["25BE"]["last_used"]  # the lookup noted its use
