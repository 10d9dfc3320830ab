"""Fuzzing the API: schemathesis against the server's own OpenAPI document (data that fits
it and data that does not), then near-valid registrations and deletions from hypothesis.
No request may get a 5xx, responses must match the document, and the chain stays valid."""

from __future__ import annotations

import itertools
import os
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.kernel.settings import Settings
from services.registrar.store import EventStore
from services.registrar.transparency.checkpoint import Signer
from services.registrar.transparency.keys import LogIdentity
from services.registrar.transparency.service import LogService
from services.registrar.verify import verify
from tests.integration.apiserver import registration, running_api

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Examples per operation and mode: bounded in `make test` (the same generator, derandomised);
# ROD_FUZZ_EXAMPLES=200 is the long run (bench/README.md).
PER_OPERATION_AND_MODE = int(os.environ.get("ROD_FUZZ_EXAMPLES") or 50)
NEAR_VALID = 3 * PER_OPERATION_AND_MODE

FUZZ = settings(max_examples=PER_OPERATION_AND_MODE, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
NEAR_VALID_RUN = settings(max_examples=NEAR_VALID, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))


BAD_VALUES: dict[str, list[Any]] = {
    "person": [{"bsn": "123456789"}, {"onderwijsnummer": "101222331"}, {"bsn": "106071665"}, {},
               {"bsn": "111222333", "onderwijsnummer": "101222331"}, {"bsn": " 111.222.333 "}],
    "institution": ["30XX", "99ZZ", "25be", ""],
    "branch": ["25BE02", "30XX01", "25BE1"],
    "sector": ["VO", "PRO", "MBO", "XX"],
    "programme_code": ["34560", "0090", "Praktijkonderwijs", "70001", "99999"],
    "diploma_date": ["2024-01-15", "2022-07-31", "2999-01-01", "2026-02-30", "1 juli"],
    "provider": ["110A133", "100B490", None],
}


@st.composite
def near_valid_registration(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body, half the time with one field changed to a value the rules know to refuse."""
    body: dict[str, Any] = {
        "person": {"bsn": draw(st.sampled_from(["111222333", "123456782", "249566758", "319072356"]))},
        "institution": "25BE", "branch": "25BE01", "sector": "HO", "programme_code": "56551",
        "diploma_number": draw(st.from_regex(r"[A-Z0-9-]{1,8}", fullmatch=True)),
        "diploma_date": "2026-07-01",
    }
    field = draw(st.sampled_from([None, None, None, *BAD_VALUES]))
    if field:
        body[field] = draw(st.sampled_from(BAD_VALUES[field]))
    return body


def test_fuzzing_gets_no_5xx_answers_as_documented_and_leaves_the_chain_valid(settings: Settings) -> None:
    with running_api(settings) as api:
        token = api.tokens["25BE"]
        with api.client() as client:  # a log with a signed checkpoint: /v1/log/ answers 503 only before
            assert client.post("/v1/results", json=registration()).status_code == 201
        identity = LogIdentity("rodchain.test/log", Signer.generate("rodchain.test/log"), "test")
        logged = LogService(settings, None, store=EventStore(settings.database_urls["registrar"]),
                            identity=identity)
        logged.build()
        assert logged.sign_due(force=True) is not None
        logged.close()
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        sent = itertools.count()

        for operation in (result.ok() for result in schema.get_all_operations()):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode)

                @FUZZ
                @given(case=strategy)
                def call(case: Any) -> None:
                    response = case.call(session=session)
                    next(sent)
                    case.validate_response(response, checks=CHECKS)

                try:
                    call()
                except Unsatisfiable:  # nothing to negate in an operation without inputs
                    assert mode is GenerationMode.NEGATIVE

        accepted: list[str] = []
        with api.client() as client:

            @NEAR_VALID_RUN
            @given(body=near_valid_registration(), delete=st.booleans(),
                   reason=st.sampled_from(["ADMINISTRATIVE_ERROR", "FRAUD", "OTHER", "VERVEELD"]),
                   explanation=st.sampled_from(["Fraude vastgesteld", "", None]))
            def register_and_delete(
                body: dict[str, Any], delete: bool, reason: str, explanation: str | None
            ) -> None:
                response = client.post("/v1/results", json=body)
                next(sent)
                assert response.status_code in (200, 201, 403, 409, 422), response.text
                if response.status_code == 201:
                    accepted.append(response.json()["result_id"])
                if delete and accepted:
                    answer = client.post(f"/v1/results/{accepted[-1]}/deletions",
                                         json={"reason": reason, "explanation": explanation})
                    next(sent)
                    assert answer.status_code in (201, 409, 422), answer.text

            register_and_delete()
            assert httpx.get(f"{api.url}/healthz").status_code == 200

        total = next(sent)
        print(f"fuzz: {total} requests, {len(accepted)} results registered")
        assert total >= 10 * PER_OPERATION_AND_MODE, total  # every operation and mode had its run
        assert len(accepted) > 20
        verdict = verify(api.api.registrar.store)
        assert verdict.ok and verdict.checked == api.events() >= len(accepted), verdict
