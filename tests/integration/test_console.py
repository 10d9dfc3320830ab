"""The operator console `/ops` over real HTTP (uvicorn), with the relay, the distributor and the
log component running on the real local broker: who may look and act, the actions and their
record on rod.operations.v1, the log's newest checkpoint, and the page in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from services.audit.periods import Period
from services.distributor.ledger import Ledger
from services.distributor.loop import Distributor
from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.operations import deadletters
from services.operations.actions import TOPIC
from services.operations.identity import add_operator
from services.operations.store import OperationsStore, actions
from services.registrar.relay import Relay
from services.registrar.store import EventStore
from services.registrar.transparency.service import LogService
from tests import browser
from tests.integration.apiserver import RunningApi, registration, running_api
from tests.support import LOG_SINK, PERSON_NUMBERS, read_topic, run_rod, settings_env

FORM = "application/x-www-form-urlencoded"


@dataclass
class Ops:
    api: RunningApi
    settings: Settings
    operator_token: str
    log_stop: threading.Event  # set it to stop the log component (tree builder and checkpoint signer)
    log_worker: threading.Thread

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api.url, headers=headers, timeout=60, **kwargs)

    def paused(self, name: str) -> bool:
        ledger = Ledger(self.settings.database_urls["distributor"])
        try:
            with ledger.reading() as conn:
                state = ledger.states(conn).get(name)  # absent until a distributor or action syncs it
            return state is not None and state.paused
        finally:
            ledger.dispose()

    def recorded(self) -> int:
        """Operator actions stored so far (a refused request must not add one)."""
        store = OperationsStore(self.settings.database_urls["operations"])
        try:
            with store.reading() as conn:
                return conn.execute(select(func.count()).select_from(actions)).scalar_one()
        finally:
            store.dispose()

    def published_actions(self, at_least: int) -> list[dict]:
        records = read_topic(self.settings.kafka_bootstrap or "", self.settings.topic(TOPIC), at_least)
        return [Codec().decode(r.value)[1] for r in records]


@pytest.fixture
def ops(tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    """The HTTP app with the console, the relay, a (solo) distributor and the log component, and one
    operator, alice."""
    monkeypatch.setenv("ROD_LOG_CHECKPOINT_SECONDS", "0.5")
    settings = Settings.from_env({
        "ROD_DATA_DIR": str(tmp_path / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
        "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'rod.db'}",
        "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
    })
    operations = OperationsStore(settings.database_urls["operations"])
    token = add_operator(operations, "alice", "test")
    operations.dispose()
    stop = threading.Event()
    relay = Relay(EventStore(settings.database_urls["registrar"]), settings, broker)
    distributor = Distributor(settings, broker, group=False)
    log_stop = threading.Event()
    log_worker = threading.Thread(target=LogService(settings, broker).run, args=(log_stop,), daemon=True)
    workers = [threading.Thread(target=relay.run, args=(stop,), daemon=True),
               threading.Thread(target=distributor.run, args=(stop,), daemon=True)]
    for worker in [*workers, log_worker]:
        worker.start()
    try:
        with running_api(settings, bootstrap=broker) as api:
            yield Ops(api, dataclasses.replace(settings, catalogue=api.settings.catalogue), token,
                      log_stop, log_worker)
    finally:
        stop.set()
        log_stop.set()
        for worker in [*workers, log_worker]:
            worker.join(30)
        relay.close()
        distributor.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page's forms carry a CSRF token"
    return found.group(1)


def _login(ops: Ops, client: httpx.Client) -> str:
    """Log `client` in at /ops/login as alice; returns the page's CSRF token."""
    answer = client.post("/ops/login", data={"token": ops.operator_token})
    assert answer.status_code == 303 and answer.headers["location"] == "/ops"
    page = client.get("/ops")
    assert page.status_code == 200
    return _csrf(page.text)


def test_ops_is_401_with_the_login_form_403_for_an_institution_and_200_for_an_operator(ops: Ops) -> None:
    with ops.client() as anonymous:
        answer = anonymous.get("/ops")
        assert answer.status_code == 401
        assert '<form method="post" action="/ops/login">' in answer.text and 'name="token"' in answer.text
        assert anonymous.get("/ops/login").status_code == 200
    with ops.client(ops.api.tokens["25BE"]) as institution:
        assert institution.get("/ops").status_code == 403
        assert institution.post("/ops/subscriptions/cibg-big/pause", data={"reason": "x"}).status_code == 403
    with ops.client("not-a-token") as stranger:
        assert stranger.get("/ops").status_code == 401
    with ops.client() as browser:
        assert browser.post("/ops/login", data={"token": ops.api.tokens["25BE"]}).status_code == 403
        assert browser.post("/ops/login", data={"token": "wrong"}).status_code == 401
    with ops.client(ops.operator_token) as operator:
        page = operator.get("/ops")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "form-action 'self'" in policy
    assert all(f'id="subscription-{name}"' in page.text for name in ("cibg-big", "mijnoverheid", "extract"))

    with ops.client() as browser:
        answer = browser.post("/ops/login", data={"token": ops.operator_token})
        cookie = answer.headers["set-cookie"]
        assert answer.status_code == 303
        assert all(part in cookie for part in ("HttpOnly", "SameSite=strict", "Path=/ops"))
        assert ops.operator_token not in cookie  # a session id, never the token
        assert browser.get("/ops").status_code == 200
        csrf = _csrf(browser.get("/ops").text)
        assert browser.post("/ops/logout", data={"csrf": csrf}).status_code == 303
        assert browser.get("/ops").status_code == 401  # the session is gone, not only the cookie


def test_every_console_action_works_with_an_operator_token_and_is_on_rod_operations(ops: Ops) -> None:
    with ops.client(ops.operator_token) as operator:
        for action, reason in (("pause", "CIBG maintenance window"), ("resume", "maintenance over"),
                               ("replay", "CIBG lost a day of messages")):
            answer = operator.post(f"/ops/subscriptions/cibg-big/{action}", data={"reason": reason})
            assert answer.status_code == 303, answer.text
            assert answer.headers["location"].startswith("/ops?flash=")
            if action == "pause":
                assert ops.paused("cibg-big")
                page = operator.get(answer.headers["location"])
                assert "cibg-big: paused" in page.text
            if action == "resume":
                assert not ops.paused("cibg-big")
        assert operator.post("/ops/subscriptions/nope/pause", data={"reason": "x"}).status_code == 404
    published = ops.published_actions(3)
    assert [(a["operator"], a["via"], a["action"], a["target"], a["reason"]) for a in published] == [
        ("alice", "console", "subscription-pause", "cibg-big", "CIBG maintenance window"),
        ("alice", "console", "subscription-resume", "cibg-big", "maintenance over"),
        ("alice", "console", "subscription-replay", "cibg-big", "CIBG lost a day of messages"),
    ]


def _open_letter(ops: Ops) -> str:
    """The id of the dead letter the running distributor makes of a poison message (with a person number)."""
    kafka.ensure_topics(ops.settings, ops.settings.kafka_bootstrap or "", ["rod.results.v1"])
    producer = kafka.producer(ops.settings.kafka_bootstrap or "")
    producer.send(ops.settings.topic("rod.results.v1"), key=b"poison", value=b"bsn 111222333 is not Avro",
                  partition=0).get(timeout=10)
    producer.close()
    deadline = time.monotonic() + 60
    while not (letters := deadletters.open_ids(ops.settings)):
        assert time.monotonic() < deadline, "the distributor did not record the poison message"
        time.sleep(0.2)
    return letters[0]


def test_dead_letters_are_shown_and_replayed_or_discarded_from_the_console(ops: Ops) -> None:
    letter = _open_letter(ops)
    with ops.client() as browser:
        csrf = _login(ops, browser)
        page = browser.get("/ops")
        assert f'id="deadletter-{letter}"' in page.text and "NOT_SINGLE_OBJECT" in page.text
        assert not [n for n in PERSON_NUMBERS if n in page.text]
        url = f"/ops/deadletters/{letter}"
        assert browser.post(f"{url}/discard", data={"csrf": csrf}).status_code == 400  # no reason
        answer = browser.post(f"{url}/replay", data={"csrf": csrf, "reason": "try it once more"})
        assert answer.status_code == 303
        assert "replay failed again" in browser.get(answer.headers["location"]).text
        assert deadletters.open_ids(ops.settings) == [letter]  # still open, never re-queued by itself
        answer = browser.post(f"{url}/discard", data={"csrf": csrf, "reason": "garbage from a test tool"})
        assert answer.status_code == 303
        assert f"{letter}: discarded" in browser.get(answer.headers["location"]).text
        assert deadletters.open_ids(ops.settings) == []
        assert browser.post(f"{url}/discard", data={"csrf": csrf, "reason": "again"}).status_code == 409
    published = [(a["operator"], a["via"], a["action"], a["target"]) for a in ops.published_actions(2)]
    assert published == [("alice", "console", "deadletter-replay", letter),
                         ("alice", "console", "deadletter-discard", letter)]


def test_the_console_outcome_cannot_be_forged_from_the_url(ops: Ops) -> None:
    operations = OperationsStore(ops.settings.database_urls["operations"])
    other_token = add_operator(operations, "bob", "test")
    operations.dispose()
    forged = ["/ops?done=subscription-replay&outcome=ok&target=mijnoverheid",
              "/ops?done=subscription-replay&outcome=ok&target=mijnoverheid%0A",
              "/ops?flash=made-up"]
    with ops.client(ops.operator_token) as operator, ops.client(other_token) as other:
        for url in forged:
            page = operator.get(url)
            assert page.status_code == 200 and 'id="message"' not in page.text, url
        answer = operator.post("/ops/subscriptions/mijnoverheid/pause", data={"reason": "night run"})
        assert answer.status_code == 303
        assert 'id="message"' not in other.get(answer.headers["location"]).text  # not another's outcome
        shown = operator.get(answer.headers["location"]).text
        assert '<p class="message" role="status" id="message">mijnoverheid: paused</p>' in shown
        assert 'id="message"' not in operator.get(answer.headers["location"]).text  # once
    assert ops.recorded() == 1  # the forged URLs did nothing either


def test_an_operator_token_cannot_register_or_delete_a_result(ops: Ops) -> None:
    with ops.api.client("25BE") as institution:
        registered = institution.post("/v1/results", json=registration())
    assert registered.status_code == 201
    result_id = registered.json()["result_id"]
    before = ops.api.events()
    with ops.client(ops.operator_token) as operator:
        answer = operator.post("/v1/results", json=registration(diploma_number="API-2"))
        assert answer.status_code in (401, 403)
        deletion = {"reason": "ADMINISTRATIVE_ERROR"}
        answer = operator.post(f"/v1/results/{result_id}/deletions", json=deletion)
        assert answer.status_code in (401, 403)
    assert ops.api.events() == before


def test_a_refused_action_changes_nothing(ops: Ops) -> None:
    with ops.client() as browser:
        csrf = _login(ops, browser)
        recorded = ops.recorded()
        url = "/ops/subscriptions/mijnoverheid/pause"
        assert browser.post(url, data={"csrf": csrf}).status_code == 400  # no reason
        assert browser.post(url, data={"csrf": csrf, "reason": "   "}).status_code == 400
        assert browser.post(url, data={"csrf": "forged", "reason": "why"}).status_code == 403
        assert browser.post(url, data={"reason": "why"}).status_code == 403  # no CSRF token at all
        cross_site = {"origin": "https://evil.example"}
        assert browser.post(url, data={"csrf": csrf, "reason": "why"}, headers=cross_site).status_code == 403
        assert not ops.paused("mijnoverheid") and ops.recorded() == recorded
        same_site = {"origin": ops.api.url}
        answer = browser.post(url, data={"csrf": csrf, "reason": "night run"}, headers=same_site)
        assert answer.status_code == 303 and ops.paused("mijnoverheid")
        assert ops.recorded() == recorded + 1


def test_the_console_shows_the_last_verify_and_reports_and_no_person_number(ops: Ops) -> None:
    with ops.api.client("25BE") as institution:
        for i, person in enumerate(PERSON_NUMBERS[:4]):
            body = registration(person={"bsn": person}, diploma_number=f"PN-{i}")
            assert institution.post("/v1/results", json=body).status_code == 201
    env = settings_env(ops.settings)
    verified = run_rod("verify", env=env, check=True)
    assert "4 events verified" in verified.stdout
    period = Period.containing(datetime.now(UTC)).id
    run_rod("report", "--period", period, env=env, check=True)
    with ops.client(ops.operator_token) as operator:
        page = operator.get("/ops")
    assert page.status_code == 200
    assert "chain intact</span> up to position 4" in page.text
    assert f"<td>{period}</td>" in page.text and "<td>25BE</td>" in page.text  # the reports just published
    assert not [n for n in PERSON_NUMBERS if n in page.text]


def _page_when(ops: Ops, done: Callable[[str], bool], timeout: float = 30) -> str:
    """/ops as alice sees it, once `done` holds for the page's HTML."""
    deadline = time.monotonic() + timeout
    with ops.client(ops.operator_token) as operator:
        while not done(page := operator.get("/ops").text):
            assert time.monotonic() < deadline, page[-3000:]
            time.sleep(0.3)
    return page


def test_the_console_shows_the_newest_checkpoint_and_warns_when_checkpoints_stop_while_events_wait(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    def register(first: int, count: int) -> None:
        with ops.api.client("25BE") as institution:
            for i in range(first, first + count):
                body = registration(person={"bsn": PERSON_NUMBERS[i]}, diploma_number=f"LOG-{i}")
                assert institution.post("/v1/results", json=body).status_code == 201

    register(0, 2)
    page = _page_when(ops, lambda html: '<strong id="log-checkpoint-size">2</strong>' in html)
    assert re.search(r'signed <strong id="log-checkpoint-age">[\d.,]+</strong> s ago', page)
    assert '<span id="log-tree-behind">0</span> behind' in page
    assert 'id="log-stalled"' not in page and 'class="problem"' not in page

    ops.log_stop.set()  # the log component stops; events go on arriving
    ops.log_worker.join(30)
    register(2, 1)
    monkeypatch.setenv("ROD_LOG_CHECKPOINT_ALERT_SECONDS", "0")  # the console judges with this limit
    page = _page_when(ops, lambda html: 'id="log-stalled"' in html)
    stalled = page.split('id="log-stalled">', 1)[1].split("</p>", 1)[0]
    assert '<strong id="log-checkpoint-size">2</strong>' in stalled  # the newest is still the old one
    assert '<span id="log-tree-behind">1</span> behind' in stalled
    assert 'Stored events in no checkpoint yet: <span id="log-unsigned">1</span>' in stalled
    assert '<span class="state-STALLED">STALLED</span>' in stalled
    assert "<code>rod up --components log</code>" in stalled
    assert '<p class="problem" id="log-stalled">' in page
    assert not [n for n in PERSON_NUMBERS if n in page]


def test_without_a_broker_address_the_overview_says_no_broker_is_known_and_logs_no_error(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env({  # no ROD_KAFKA_BOOTSTRAP, and no address `rod up` wrote
        "ROD_DATA_DIR": str(tmp_path / "var"), "ROD_DATABASE_URL": f"sqlite:///{tmp_path / 'rod.db'}",
    })
    operations = OperationsStore(settings.database_urls["operations"])
    token = add_operator(operations, "alice", "test")
    operations.dispose()
    start = len(LOG_SINK.parts)
    with running_api(settings) as api, httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as operator:
        page = operator.get("/ops")
    assert page.status_code == 200
    assert re.search(r'<p class="note" id="broker-unknown">No broker is known', page.text)
    assert 'class="problem"' not in page.text  # no section failed
    logged = "".join(LOG_SINK.parts[start:])
    assert '"route": "/ops"' in logged  # the sink took this app's lines
    assert "console_section_failed" not in logged and "TypeError" not in logged


def test_the_console_in_headless_chromium_logs_in_shows_the_chain_and_pauses_and_resumes(ops: Ops) -> None:
    sync_api = browser.sync_api()
    with browser.chromium() as chromium, browser.visit(chromium, ops.api.url) as tab:  # stays on the server
        page = tab.page
        page.goto(f"{ops.api.url}/ops/login")
        page.fill("input[name=token]", ops.operator_token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{ops.api.url}/ops")
        assert page.locator("#operator").inner_text() == "alice"
        results_topic = page.locator("#topics td", has_text=ops.settings.topic("rod.results.v1"))
        assert results_topic.first.is_visible()  # the topics as `rod topics` lists them
        row = page.locator("#subscription-cibg-big")
        assert row.is_visible() and row.locator("td").nth(1).inner_text() == "running"

        row.locator("input[name=reason]").fill("CIBG maintenance window")
        row.get_by_role("button", name="Pause").click()
        sync_api.expect(page.locator("#message")).to_have_text("cibg-big: paused")
        assert re.fullmatch(re.escape(ops.api.url) + r"/ops\?flash=[\w-]+", page.url)
        row = page.locator("#subscription-cibg-big")
        assert row.locator("td").nth(1).inner_text() == "paused" and ops.paused("cibg-big")
        screenshot = tab.screenshot("ops-console")

        row.locator("input[name=reason]").fill("maintenance over")
        row.get_by_role("button", name="Resume").click()
        sync_api.expect(page.locator("#message")).to_have_text("cibg-big: resumed")
        assert page.locator("#subscription-cibg-big td").nth(1).inner_text() == "running"
        assert not ops.paused("cibg-big")
        assert page.evaluate("document.scripts.length") == 0
    assert screenshot.stat().st_size > 10_000
    actions_seen = [(a["operator"], a["via"], a["action"]) for a in ops.published_actions(2)]
    assert actions_seen == [("alice", "console", "subscription-pause"),
                            ("alice", "console", "subscription-resume")]
