"""axe-core in Debian's headless chromium on the pages people read: the operator console `/ops` (its
login, its refusals and the console itself) and the extract verification page `/verify` (empty,
valid, withdrawn, unknown), in Dutch and English. No serious or critical violation of WCAG 2.1 AA.

One in-process server (real uvicorn, SQLite, the session broker) for the module; the extract's
results are put straight into the extract service's store, as the feed would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from services.kernel.settings import Settings
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from tests.browser import Tab, chromium, visit
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.test_extract_http import delivery, withdrawal


@dataclass
class Site:
    api: RunningApi
    operator_token: str
    valid: dict[str, str]  # id and code of an extract that stands
    withdrawn: dict[str, str]  # of one whose result was withdrawn


def _issue(api: RunningApi, portal: str, bsn: str) -> dict[str, str]:
    with api.client(None) as client:
        answer = client.post("/v1/extracts", json={"person": {"bsn": bsn}},
                             headers={"Authorization": f"Bearer {portal}"})
    assert answer.status_code == 201, answer.text
    return {"id": answer.json()["extract_id"], "code": answer.json()["verification_code"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, broker: str) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("a11y")
    settings = Settings.from_env({"ROD_DATA_DIR": str(root / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
                                  "ROD_DATABASE_URL": f"sqlite:///{root / 'rod.db'}",
                                  "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}."})
    operations = OperationsStore(settings.database_urls["operations"])
    operator_token = add_operator(operations, "alice", "test")
    operations.dispose()
    with running_api(settings, bootstrap=broker) as api:
        store = api.api.extract.store
        store.apply([delivery(1, ("BSN", "111222333")), delivery(2, ("BSN", "123456782"))], {}, [])
        portal = store.add_portal("mijnduo")
        valid, withdrawn = _issue(api, portal, "111222333"), _issue(api, portal, "123456782")
        store.apply([withdrawal(2, datetime.now(UTC) - timedelta(minutes=1))], {}, [])
        yield Site(api, operator_token, valid, withdrawn)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _checked(tab: Tab, url: str, name: str, status: int = 200) -> None:
    """Open `url`, keep its screenshot as `name`, and fail on any serious or critical violation."""
    answer = tab.page.goto(f"{tab.origin}{url}")
    assert answer is not None and answer.status == status, (url, answer and answer.status)
    tab.screenshot(f"a11y-{name}")
    assert tab.axe() == [], f"{url}: axe found serious or critical WCAG 2.1 AA violations"


def test_the_operator_console_has_no_serious_accessibility_violation(site: Site, browser: Any) -> None:
    with visit(browser, site.api.url) as tab:
        _checked(tab, "/ops/login", "ops-login")
        _checked(tab, "/ops", "ops-unauthenticated", status=401)
        tab.page.get_by_label("Operator token").fill("not-a-token")
        tab.page.get_by_role("button", name="Log in").click()
        assert "not" in tab.page.locator("[role=alert]").inner_text().lower()
        assert tab.axe() == [], "the login page with its error"
        tab.page.get_by_label("Operator token").fill(site.api.tokens["25BE"])  # an institution's
        tab.page.get_by_role("button", name="Log in").click()
        assert tab.page.locator("[role=alert]").is_visible()
        tab.screenshot("a11y-ops-refused")
        assert tab.axe() == [], "the refusal page"

        tab.page.goto(f"{tab.origin}/ops/login")
        tab.page.get_by_label("Operator token").fill(site.operator_token)
        tab.page.get_by_role("button", name="Log in").click()
        tab.page.wait_for_url(f"{tab.origin}/ops")
        assert tab.page.locator("#operator").inner_text() == "alice"
        tab.screenshot("a11y-ops-console")
        assert tab.axe() == [], "the console"


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_verify_page_has_no_serious_accessibility_violation(site: Site, browser: Any, lang: str) -> None:
    def verify(**query: Any) -> str:
        return "/verify?" + urlencode({"lang": lang, **query})

    with visit(browser, site.api.url) as tab:
        _checked(tab, verify(), f"verify-{lang}")
        _checked(tab, verify(**site.valid), f"verify-valid-{lang}")
        assert tab.page.locator("#extract table").is_visible()
        _checked(tab, verify(**site.withdrawn), f"verify-withdrawn-{lang}")
        assert tab.page.locator("#extract td.state-withdrawn").count() == 1
        _checked(tab, verify(id=site.valid["id"], code="WRONG-CODE"), f"verify-unknown-{lang}", status=404)
        _checked(tab, verify(id=site.valid["id"]), f"verify-incomplete-{lang}", status=422)


def test_the_checks_can_fail(site: Site, browser: Any) -> None:
    """A field without a label and a page without a language are reported; a request to another host
    is aborted and fails the test."""
    with visit(browser, site.api.url) as tab:
        tab.page.goto(f"{tab.origin}/verify")
        tab.page.set_content('<html><head><title>t</title></head><body><main><h1>t</h1>'
                             '<input type="text" name="x"></main></body></html>')
        found = tab.axe()
    assert any(line.startswith("label (critical)") for line in found), found
    assert any(line.startswith("html-has-lang (serious)") for line in found), found
    failing = pytest.raises(AssertionError, match="requests to another host")
    aborted = pytest.raises(Exception, match="ERR_FAILED")  # never reaching that host
    with failing, visit(browser, site.api.url) as tab, aborted:
        tab.page.goto("http://203.0.113.9/logo.png")
    assert tab.elsewhere == ["http://203.0.113.9/logo.png"]
