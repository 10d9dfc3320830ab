"""Finding 5 of issue 13: tokens are listed, revoked and rotated with `rod`, run as its own
process beside a running API, and a revoked or rotated token stops working at once: the API
remembers known tokens for 60 s, the console keeps sessions, and neither may let it through."""

from __future__ import annotations

import json
import uuid

import httpx

from services.kernel.codec import Codec
from services.operations.actions import TOPIC
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from tests.integration.apiserver import RunningApi, running_api
from tests.support import read_topic, run_rod, settings_env


def _status(api: RunningApi, token: str, path: str | None = None) -> int:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        return client.get(path or f"/v1/results/{uuid.uuid4()}").status_code


def _tokens(env: dict[str, str]) -> list[dict]:
    return json.loads(run_rod("token", "list", "--json", env=env, check=True).stdout)


def test_revoked_and_rotated_tokens_stop_working_at_once(settings) -> None:  # type: ignore[no-untyped-def]
    env = settings_env(settings)
    with running_api(settings, bootstrap=settings.kafka_bootstrap) as api:
        operations = OperationsStore(settings.database_urls["operations"])
        operator = add_operator(operations, "alice", "test")
        operations.dispose()
        portal = api.api.extract.store.add_portal("portal-a")
        for _ in range(2):  # the second answer comes from the API's memory of known tokens
            assert _status(api, api.tokens["25BE"]) == 404
            assert _status(api, api.tokens["30XX"]) == 404
            assert _status(api, portal, "/v1/extracts/nope/pdf") == 404
        browser = httpx.Client(base_url=api.url, timeout=60)
        assert browser.post("/ops/login", data={"token": operator}).status_code == 303
        assert browser.get("/ops").status_code == 200

        listed = _tokens(env)
        secrets = [*api.tokens.values(), operator, portal]
        assert not any(secret in json.dumps(listed) for secret in secrets)
        by_owner = {(row["kind"], row["owner"]): row for row in listed}
        assert {"institution", "operator", "portal"} <= {kind for kind, _ in by_owner}
        used = by_owner[("institution", "30XX")]
        assert used["created"] and used["last_used"] and used["revoked"] is None
        assert by_owner[("institution", "40MB")]["last_used"] is None  # never used

        # revoked while the API still remembers it: refused on the very next request
        revoked = run_rod("token", "revoke", used["id"], "--reason", "left the chain", env=env, check=True)
        assert used["id"] in revoked.stdout
        assert _status(api, api.tokens["30XX"]) == 401
        assert _status(api, api.tokens["25BE"]) == 404  # the others still work
        portal_id = by_owner[("portal", "portal-a")]["id"]
        run_rod("token", "revoke", portal_id, "--reason", "x", env=env, check=True)
        assert _status(api, portal, "/v1/extracts/nope/pdf") == 401

        rotated = run_rod("institution", "rotate-token", "25BE", "--reason", "leaked", env=env, check=True)
        new = rotated.stdout.strip().splitlines()[-1]
        assert new != api.tokens["25BE"] and api.tokens["25BE"] not in rotated.stdout
        assert _status(api, api.tokens["25BE"]) == 401
        assert _status(api, new) == 404

        # an operator rotated: the old token and the console session end with it
        rotated = run_rod("operator", "rotate-token", "alice", env=env, check=True)
        new_operator = rotated.stdout.strip().splitlines()[-1]
        assert browser.get("/ops").status_code == 401
        assert _status(api, operator, "/ops") == 401
        assert _status(api, new_operator, "/ops") == 200
        browser.close()

        listed = {row["id"]: row for row in _tokens(env)}
        assert listed[used["id"]]["revoked"] and listed[used["id"]]["reason"] == "left the chain"
        live = [row["owner"] for row in listed.values() if row["kind"] == "institution"
                and not row["revoked"]]
        assert sorted(live) == ["25BE", "40MB"]
        assert not any(secret in json.dumps(listed) for secret in [*secrets, new, new_operator])

    records = read_topic(settings.kafka_bootstrap or "", settings.topic(TOPIC), at_least=4)
    done = {(a["action"], a["target"], a["reason"]) for a in (Codec().decode(r.value)[1] for r in records)}
    assert ("token-revoke", used["id"], "left the chain") in done
    assert ("token-rotate", "institution:25BE", "leaked") in done
    assert ("token-rotate", "operator:alice", "rotated") in done
