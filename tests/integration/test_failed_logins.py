"""Failed logins over real HTTP (uvicorn, real database): every refused token is logged without
the token, and a client address that sends too many unknown tokens is held up with 429 while
other addresses go on. Another loopback address (`local_address`) is another client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY

from services.kernel.settings import Settings
from services.kernel.throttle import FailedLogins
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.support import LOG_SINK

SOME_ID = "00000000-0000-4000-8000-000000000000"
ATTACKER, NEIGHBOUR = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def api(settings: Settings) -> Iterator[RunningApi]:
    with running_api(settings) as running:
        yield running


def client(api: RunningApi, address: str, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=30, transport=httpx.HTTPTransport(local_address=address),
                        headers={"Authorization": f"Bearer {token}"} if token else {})


def logged_since(start: int, event: str) -> list[dict]:
    lines = "".join(LOG_SINK.parts[start:]).splitlines()
    entries = (json.loads(line) for line in lines if line.startswith("{"))
    return [e for e in entries if e.get("event") == event]


def counted(surface: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("rod_auth_failures_total", {"surface": surface, "outcome": outcome}) or 0


def held_up() -> float:
    return REGISTRY.get_sample_value("rod_auth_throttled_total", {"surface": "institution"}) or 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_failed_logins_are_logged_without_the_token_and_throttled_per_address(api: RunningApi) -> None:
    start, throttled_before = len(LOG_SINK.parts), held_up()
    invalid_before = counted("institution", "invalid")
    guesses = [f"rodi_guess{n:02d}secret" for n in range(11)]
    with client(api, ATTACKER) as attacker:
        for guess in guesses[:10]:  # the default limit: 10 unknown tokens a minute
            answer = attacker.get(f"/v1/results/{SOME_ID}", headers={"Authorization": f"Bearer {guess}"})
            assert answer.status_code == 401 and answer.json()["errors"][0]["code"] == "TOKEN_INVALID"
        held = attacker.get(f"/v1/results/{SOME_ID}", headers={"Authorization": f"Bearer {guesses[10]}"})
        assert held.status_code == 429 and held.json()["errors"][0]["code"] == "TOO_MANY_FAILED_LOGINS"
        assert 1 <= int(held.headers["retry-after"]) <= 60
        # the address is held up, whatever it sends: a correct token waits too
        right = attacker.post("/v1/results", json=registration(),
                              headers={"Authorization": f"Bearer {api.tokens['25BE']}"})
        assert right.status_code == 429 and "retry-after" in right.headers
        assert attacker.get("/healthz").status_code == 200  # public paths ask no token
    with client(api, NEIGHBOUR, api.tokens["25BE"]) as neighbour:
        assert neighbour.post("/v1/results", json=registration()).status_code == 201
        guess = {"Authorization": "Bearer x"}
        assert neighbour.get(f"/v1/results/{SOME_ID}", headers=guess).status_code == 401
        assert neighbour.get("/v1/feeds/cibg-big/messages").status_code == 403  # an institution's token
    with client(api, NEIGHBOUR) as anonymous:
        assert anonymous.get(f"/v1/results/{SOME_ID}").status_code == 401

    failed = logged_since(start, "authentication_failed")
    mine = [e for e in failed if e["client"] == ATTACKER]
    assert [(e["route"], e["surface"], e["outcome"]) for e in mine] == \
        [("/v1/results/{result_id}", "institution", "invalid")] * 10
    assert {(e["surface"], e["outcome"]) for e in failed if e["client"] == NEIGHBOUR} == {
        ("institution", "invalid"), ("consumer", "forbidden"), ("institution", "missing")}
    [throttled] = logged_since(start, "authentication_throttled")
    assert throttled["client"] == ATTACKER
    logged = "".join(LOG_SINK.parts[start:])
    assert not [t for t in [*guesses, api.tokens["25BE"]] if t in logged or t[-12:] in logged]
    assert counted("institution", "invalid") - invalid_before == 11  # the attacker's ten, the neighbour's one
    assert held_up() - throttled_before == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_failed_logins_at_the_console_are_logged_and_throttled_per_address(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROD_AUTH_FAILURES_PER_MINUTE", "3")
    with running_api(settings) as api:
        store = OperationsStore(api.settings.database_urls["operations"])
        operator = add_operator(store, "olga", "test")
        store.dispose()
        start = len(LOG_SINK.parts)
        with client(api, ATTACKER) as attacker:
            for n in range(3):
                refused = attacker.post("/ops/login", data={"token": f"rodo_wrong{n}secret"})
                assert refused.status_code == 401 and 'action="/ops/login"' in refused.text
            held = attacker.post("/ops/login", data={"token": "rodo_wrong3secret"})
            assert held.status_code == 429 and 1 <= int(held.headers["retry-after"]) <= 60
            assert 'action="/ops/login"' in held.text and "Too many failed logins" in held.text
            assert attacker.post("/ops/login", data={"token": operator}).status_code == 429
            assert attacker.get("/ops", headers={"Authorization": f"Bearer {operator}"}).status_code == 429
            # one count per address for every surface: the API holds it up too
            guess = {"Authorization": "Bearer x"}
            assert attacker.get(f"/v1/results/{SOME_ID}", headers=guess).status_code == 429
        with client(api, NEIGHBOUR) as browser:
            assert browser.post("/ops/login", data={"token": api.tokens["25BE"]}).status_code == 403
            assert browser.get("/ops", headers={"Authorization": "Bearer nope"}).status_code == 401
            answer = browser.post("/ops/login", data={"token": operator})
            assert answer.status_code == 303 and browser.get("/ops").status_code == 200

    failed = logged_since(start, "authentication_failed")
    assert [(e["route"], e["surface"], e["outcome"]) for e in failed if e["client"] == ATTACKER] == \
        [("/ops/login", "console", "invalid")] * 3
    assert [(e["route"], e["outcome"]) for e in failed if e["client"] == NEIGHBOUR] == \
        [("/ops/login", "forbidden"), ("/ops", "invalid")]
    logged = "".join(LOG_SINK.parts[start:])
    assert operator not in logged and "secret" not in logged and api.tokens["25BE"] not in logged


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_login_block_lifts_after_the_minute_and_memory_stays_bounded() -> None:
    clock = Clock()
    logins = FailedLogins(per_minute=2, max_clients=100, clock=clock)
    for _ in range(2):
        assert logins.blocked("198.51.100.1", "console") is None
        logins.failed("198.51.100.1", "console", "invalid", "/ops/login")
    logins.failed("198.51.100.1", "console", "missing", "/ops/login")  # no guess: not counted
    clock.now += 30
    assert logins.blocked("198.51.100.1", "console") == pytest.approx(30)
    assert logins.blocked("198.51.100.2", "console") is None
    clock.now += 31
    assert logins.blocked("198.51.100.1", "console") is None
    for n in range(500):
        logins.failed(f"10.0.{n // 250}.{n % 250}", "institution", "invalid", "/v1/results")
    assert len(logins.limit) <= 101
