"""The log over HTTP (issue 15): checkpoint, key and proofs, checked as an outsider would.

The API runs in real uvicorn over SQLite and PostgreSQL; the log component is driven by hand
(build, then sign). The checkpoint is opened with `cryptography` and the key from
`GET /v1/log/key`; every proof is checked with tests/rfc9162_reference.py against roots read
from signed checkpoints, never with the project's own verifier. No request carries a token.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.kernel.settings import Settings
from services.registrar.store import EventStore
from services.registrar.transparency.checkpoint import Signer
from services.registrar.transparency.keys import LogIdentity
from services.registrar.transparency.service import LogService
from tests import rfc9162_reference as rfc
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.test_log_tree import ORIGIN, event_hashes, open_with_cryptography, register


@pytest.fixture
def api(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningApi]:
    monkeypatch.delenv("ROD_ALLOWED_HOSTS", raising=False)  # the Host check as installed
    with running_api(settings) as running:
        yield running


@pytest.fixture
def service(api: RunningApi) -> Iterator[LogService]:
    identity = LogIdentity(ORIGIN, Signer.generate(ORIGIN), "test")
    store = EventStore(api.settings.database_urls["registrar"])
    service = LogService(api.settings, None, store=store, identity=identity)
    yield service
    service.close()


def codes(response: httpx.Response) -> list[str]:
    return [e["code"] for e in response.json()["errors"]]


def hashes(answer: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(h) for h in answer["hashes"]]


def leaf(leaves: list[bytes], index: int) -> bytes:
    return rfc.mth(leaves[index:index + 1])  # the leaf hash, by the reference


def test_before_the_log_component_ran_each_endpoint_says_so_with_503(api: RunningApi) -> None:
    with api.client(None) as public:
        for path, code in (("/v1/log/checkpoint", "LOG_NO_CHECKPOINT"), ("/v1/log/key", "LOG_KEY_UNKNOWN"),
                           ("/v1/log/proofs/inclusion?position=1", "LOG_NO_CHECKPOINT"),
                           ("/v1/log/proofs/consistency?first=1&second=1", "LOG_NO_CHECKPOINT")):
            answer = public.get(path)
            assert (answer.status_code, codes(answer)) == (503, [code]), path


def test_checkpoints_and_proofs_verify_with_the_published_key_and_the_rfc(
    api: RunningApi, service: LogService
) -> None:
    registrar = api.api.registrar
    signed: dict[int, str] = {}
    for first, count in ((0, 7), (7, 6), (13, 3)):
        register(registrar, first, count)
        service.build()
        made = service.sign_due(force=True)
        assert made is not None
        signed[made.tree_size] = made.note
    assert sorted(signed) == [7, 13, 16]
    register(registrar, 16, 2)
    service.build()  # the tree holds 18, the newest checkpoint 16
    leaves = event_hashes(registrar.store)

    with api.client(None) as public:
        key = public.get("/v1/log/key")
        assert key.status_code == 200 and key.headers["content-type"].startswith("text/plain")
        answer = public.get("/v1/log/checkpoint")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.text == signed[16]
        roots = {}
        for size, note in signed.items():  # each signed checkpoint opened by hand with the served key
            origin, opened_size, roots[size] = open_with_cryptography(note, key.text)
            assert (origin, opened_size, roots[size]) == (ORIGIN, size, rfc.mth(leaves[:size]))

        for size in (7, 13, 16):
            for position in range(1, size + 1):
                wanted = {"position": position, "tree_size": size}
                proof = public.get("/v1/log/proofs/inclusion", params=wanted)
                assert proof.status_code == 200, proof.text
                body = proof.json()
                assert (body["leaf_index"], body["tree_size"]) == (position - 1, size)
                assert rfc.verify_inclusion(leaf(leaves, position - 1), position - 1, size, hashes(body),
                                            roots[size]), (position, size)
        # without tree_size: against the newest checkpoint; an altered proof fails
        newest = public.get("/v1/log/proofs/inclusion", params={"position": 5}).json()
        assert newest["tree_size"] == 16
        path = hashes(newest)
        assert rfc.verify_inclusion(leaf(leaves, 4), 4, 16, path, roots[16])
        altered = [path[0][:-1] + bytes([path[0][-1] ^ 1]), *path[1:]]
        assert not rfc.verify_inclusion(leaf(leaves, 4), 4, 16, altered, roots[16])
        assert not rfc.verify_inclusion(leaf(leaves, 5), 4, 16, path, roots[16])  # another event

        for first, second in ((7, 13), (13, 16), (7, 16)):
            proof = public.get("/v1/log/proofs/consistency", params={"first": first, "second": second})
            assert proof.status_code == 200, proof.text
            body = proof.json()
            assert (body["first"], body["second"]) == (first, second)
            assert rfc.verify_consistency(first, second, hashes(body), roots[first], roots[second])
            assert not rfc.verify_consistency(first, second, hashes(body), roots[first], rfc.mth(leaves[:18]))
        assert public.get("/v1/log/proofs/consistency", params={"first": 13}).json() == {
            "first": 13, "second": 16, "hashes": public.get(
                "/v1/log/proofs/consistency", params={"first": 13, "second": 16}).json()["hashes"]}
        assert public.get("/v1/log/proofs/consistency?first=16&second=16").json()["hashes"] == []


def test_proof_requests_that_cannot_be_answered_get_400_saying_what_to_fix(
    api: RunningApi, service: LogService
) -> None:
    registrar = api.api.registrar
    register(registrar, 0, 10)
    service.build()
    assert service.sign_due(force=True) is not None
    register(registrar, 10, 3)
    service.build()  # 13 in the tree, 10 signed

    refused = {
        "/v1/log/proofs/inclusion?position=1&tree_size=11": ("LOG_SIZE_BEYOND_CHECKPOINT", "tree_size"),
        "/v1/log/proofs/inclusion?position=0": ("LOG_POSITION_OUT_OF_RANGE", "position"),
        "/v1/log/proofs/inclusion?position=11": ("LOG_POSITION_OUT_OF_RANGE", "position"),
        "/v1/log/proofs/inclusion?position=5&tree_size=4": ("LOG_POSITION_OUT_OF_RANGE", "position"),
        "/v1/log/proofs/inclusion?position=-3": ("LOG_POSITION_OUT_OF_RANGE", "position"),
        "/v1/log/proofs/inclusion?position=abc": ("LOG_NUMBER_INVALID", "position"),
        "/v1/log/proofs/inclusion?position=1.5": ("LOG_NUMBER_INVALID", "position"),
        "/v1/log/proofs/inclusion": ("LOG_NUMBER_INVALID", "position"),
        "/v1/log/proofs/inclusion?position=1&tree_size=%EF%BC%91": ("LOG_NUMBER_INVALID", "tree_size"),
        "/v1/log/proofs/consistency?first=3&second=11": ("LOG_SIZE_BEYOND_CHECKPOINT", "second"),
        "/v1/log/proofs/consistency?first=8&second=5": ("LOG_SIZES_OUT_OF_ORDER", "first"),
        "/v1/log/proofs/consistency?first=0&second=5": ("LOG_SIZES_OUT_OF_ORDER", "first"),
        "/v1/log/proofs/consistency?first=11": ("LOG_SIZES_OUT_OF_ORDER", "first"),
        "/v1/log/proofs/consistency?second=5": ("LOG_NUMBER_INVALID", "first"),
    }
    with api.client(None) as public:
        for path, (code, field) in refused.items():
            answer = public.get(path)
            assert answer.status_code == 400, (path, answer.text)
            [error] = answer.json()["errors"]
            assert (error["code"], error["field"]) == (code, field), path
        beyond = public.get("/v1/log/proofs/inclusion?position=1&tree_size=11").json()["errors"][0]
        assert "(10)" in beyond["message"]  # names the size it may ask for
        within = public.get("/v1/log/proofs/inclusion?position=10&tree_size=10")
        assert within.status_code == 200


def test_no_token_is_asked_and_the_host_check_still_holds(api: RunningApi, service: LogService) -> None:
    register(api.api.registrar, 0, 2)
    service.build()
    service.sign_due(force=True)
    with httpx.Client(base_url=api.url) as anonymous:
        for path in ("/v1/log/checkpoint", "/v1/log/key", "/v1/log/proofs/inclusion?position=1",
                     "/v1/log/proofs/consistency?first=1&second=2"):
            assert anonymous.get(path).status_code == 200, path
            unknown = anonymous.get(path, headers={"Authorization": "Bearer not-a-token"})
            assert unknown.status_code == 200, path  # nothing to authenticate: a token is ignored
            foreign = anonymous.get(path, headers={"Host": "evil.example"})
            assert (foreign.status_code, codes(foreign)) == (400, ["HOST_NOT_ALLOWED"]), path
        assert anonymous.get("/v1/results/x").status_code == 401  # the rest of /v1/ keeps its token
