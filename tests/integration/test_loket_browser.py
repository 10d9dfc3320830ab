"""Het Loket as a person at an institution uses it, in Debian's headless chromium against a whole
`rod up` (relay, distributor, impact reader, extract service, audit) on the session broker.

One walk through every page: log in with the institution's token; register a result by hand (a
wrong BSN first: the error is at the field and the values stay); upload a CSV with good and bad
records, read the table, filter the rejected ones, download the feedback; find the result by its
diploma number; delete it once the consumers have it: the chain impact names them, the avoidable
reason shows DUO's advice, the second confirmation is required; the reports page lists the periods
with their dates. Each page is kept as a screenshot (tests/artifacts/loket-*.png), checked with
axe-core (no serious or critical WCAG 2.1 AA violation), holds no script and no full person number,
and nothing is requested from any host but the server.

And the keyboard alone, in a browser without JavaScript: log in, reach the registration form, tab
through it filling each field, submit with Enter: the result is registered.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from services.audit.periods import Period
from tests.browser import Tab, chromium, visit
from tests.fixtures.bulkfiles import sample_row, write_csv
from tests.integration.rodsystem import System, leaks, rod_up_system
from tests.support import run_rod

BSN = "111222333"
WRONG_BSN = "111222334"  # fails the eleven test
MONTHS = ["januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september",
          "oktober", "november", "december"]
# the form's fields in the order a person tabs through them, with what they type
FORM = [("bsn", "123456782"), ("onderwijsnummer", ""), ("vestigingscode", "25BE01"),
        ("onderwijsaanbieder", ""), ("sector", "HO"), ("opleidingscode", "50625"),
        ("diplomavolgnummer", "KEY-1"), ("diplomadatum", "2026-07-01")]


def dutch(day: date) -> str:
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


@pytest.fixture(scope="module")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with rod_up_system(broker, tmp_path_factory.mktemp("loket")) as made:
        yield made


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


class Walk:
    """The pages one person visits: each one screenshotted, axe-checked and scanned."""

    def __init__(self, tab: Tab) -> None:
        self.tab, self.page = tab, tab.page
        self.violations: dict[str, list[str]] = {}
        self.leaked: dict[str, int] = {}

    def seen(self, name: str, *, person_numbers_allowed: bool = False) -> None:
        """The page as it is now: kept as loket-<name>.png, no script, axe and the person-number scan."""
        self.tab.screenshot(f"loket-{name}")
        assert self.page.evaluate("document.scripts.length") == 0, name
        if found := self.tab.axe():
            self.violations[name] = found
        if not person_numbers_allowed and (count := leaks(self.page.content())):
            self.leaked[name] = count

    def follow(self, name: str) -> None:
        """Click the link or button named `name` and wait for the page it leads to."""
        with self.page.expect_navigation():
            self.page.get_by_role("link", name=name, exact=True).or_(
                self.page.get_by_role("button", name=name, exact=True)).first.click()

    def field_error(self, field: str) -> str:
        """The error text shown at `field` (tied to it by aria-describedby)."""
        control = self.page.locator(f"#{field}")
        assert control.get_attribute("aria-invalid") == "true", field
        described = (control.get_attribute("aria-describedby") or "").split()
        return " ".join(self.page.locator(f"#{i}").inner_text() for i in described if i.endswith("-error"))


def consumers_have(system: System, result_id: str, names: set[str], timeout: float = 60) -> None:
    """Wait until the chain impact (the API's dry run) says `names` received the result."""
    deadline = time.monotonic() + timeout
    while True:
        answer = system.delete(result_id, dry_run=True)
        assert answer.status_code == 200, answer.status_code
        got = {d["subscription"] for d in answer.json()["impact"]["deliveries"]}
        if names <= got:
            return
        assert time.monotonic() < deadline, f"after {timeout} s only {sorted(got)} received the result"
        time.sleep(0.3)


def test_the_loket_in_headless_chromium_from_login_to_the_deletion_report(
    system: System, browser: Any, tmp_path: Path
) -> None:
    bulk = tmp_path / "aanlevering.csv"
    write_csv(bulk, [sample_row(1, diplomavolgnummer="CSV-1"), sample_row(2, diplomavolgnummer="CSV-2"),
                     sample_row(3, bsn=WRONG_BSN, diplomavolgnummer="CSV-3"),
                     sample_row(4, diplomavolgnummer="CSV-4"),
                     sample_row(5, opleidingscode="99999", diplomavolgnummer="CSV-5")])
    with visit(browser, system.url) as tab:
        walk, page = Walk(tab), tab.page
        page.goto(f"{system.url}/loket")  # no session: the login page
        assert page.url == f"{system.url}/loket/login"
        walk.seen("login")
        page.get_by_label("token", exact=True).fill("not-a-token")
        walk.follow("Inloggen")
        assert page.locator("#token").get_attribute("aria-invalid") == "true"
        walk.seen("login-refused")
        page.get_by_label("token", exact=True).fill(system.institution_token)
        walk.follow("Inloggen")
        assert page.url == f"{system.url}/loket"
        nav = page.get_by_role("navigation")
        assert nav.get_by_role("link").all_inner_texts() == [
            "Resultaat registreren", "Bestand aanleveren", "Resultaten", "Verwijderrapportages"]
        walk.seen("home")

        # Resultaat registreren: a wrong BSN first
        walk.follow("Resultaat registreren")
        walk.seen("register")
        values = {"bsn": WRONG_BSN, "vestigingscode": "25BE01", "opleidingscode": "56551",
                  "diplomavolgnummer": "HAND-1", "diplomadatum": "2026-07-01"}
        for name, value in values.items():
            page.get_by_label(name, exact=True).fill(value)
        page.get_by_label("sector", exact=True).select_option("HO")
        walk.follow("Registreren")
        assert "elfproef" in walk.field_error("bsn")  # the rule's message, at the field
        assert page.locator(".error-summary a[href='#bsn']").count() == 1  # the summary leads to the field
        kept = {name: page.get_by_label(name, exact=True).input_value() for name in values}
        assert kept == values and page.get_by_label("sector", exact=True).input_value() == "HO"
        walk.seen("register-error", person_numbers_allowed=True)  # the wrong number stays in its field
        page.get_by_label("bsn", exact=True).fill(BSN)
        walk.follow("Registreren")
        assert re.fullmatch(re.escape(system.url) + r"/loket/resultaten/[0-9a-f-]{36}\?nieuw=1", page.url)
        assert "geregistreerd" in page.get_by_role("status").inner_text()
        assert "B Geneeskunde" in page.locator("dl.facts").inner_text()  # the catalogue's name
        result_id = page.url.split("/")[-1].split("?")[0]
        walk.seen("registered")

        # Bestand aanleveren
        walk.follow("Bestand aanleveren")
        walk.seen("upload")
        page.get_by_label("Bestand (CSV of XML)").set_input_files(str(bulk))
        walk.follow("Aanleveren")
        assert "/loket/aanleveringen/" in page.url
        summary = dict(zip(page.locator("#summary dt").all_inner_texts(),
                           page.locator("#summary dd").all_inner_texts(), strict=True))
        assert (summary["Verwerkt"], summary["Afgekeurd"]) == ("3", "2"), summary
        rows = page.locator("#feedback tbody tr")
        assert rows.count() == 5
        assert "BSN_INVALID" in rows.nth(2).inner_text() and "afgekeurd" in rows.nth(2).inner_text()
        for record in (1, 2, 4):  # each result link has a name of its own for a screen reader
            assert page.get_by_role("link", name=f"resultaat van record {record}", exact=True).count() == 1
        assert page.get_by_role("link", name="resultaat", exact=True).count() == 0
        walk.seen("batch")
        walk.follow("Alleen afgekeurde records tonen")
        assert [r.split("\t")[0] for r in page.locator("#feedback tbody tr").all_inner_texts()] == ["3", "5"]
        walk.seen("batch-rejected")
        walk.follow("English")  # the filter is kept, only the language changes
        assert page.url.endswith("?afgekeurd=1&lang=en"), page.url
        assert [r.split("\t")[0] for r in page.locator("#feedback tbody tr").all_inner_texts()] == ["3", "5"]
        walk.follow("Nederlands")
        assert page.url.endswith("?afgekeurd=1&lang=nl"), page.url
        assert page.locator("html").get_attribute("lang") == "nl"
        with page.expect_download() as downloading:
            page.get_by_role("link", name="Terugkoppeling downloaden (CSV)").click()
        feedback = Path(downloading.value.path()).read_text(encoding="utf-8-sig")
        table = list(csv.DictReader(feedback.splitlines()))
        assert len(table) == 5 and leaks(feedback) == 0
        assert sum("BSN_INVALID" in ";".join(row.values()) for row in table) == 1

        # Resultaten: find the hand-registered one by its diploma number
        walk.follow("Resultaten")
        walk.seen("results")
        page.get_by_label("diplomavolgnummer", exact=True).fill("HAND-1")
        walk.follow("Zoeken")
        walk.seen("results-found")
        found = page.locator("main table tbody tr")
        assert found.count() == 1 and "Geregistreerd" in found.inner_text()
        assert found.locator("time").get_attribute("datetime") == "2026-07-01"
        assert found.locator("time").inner_text() == "1 juli 2026"  # as the result page spells it
        walk.follow("HAND-1")
        assert page.url == f"{system.url}/loket/resultaten/{result_id}"
        walk.seen("result")

        # Verwijderen, once the consumers have it: the impact names them
        consumers_have(system, result_id, {"cibg-big", "mijnoverheid"})
        walk.follow("Verwijderen")
        impact = page.locator("#impact").inner_text()
        today = dutch(datetime.now(UTC).date())
        assert f"CIBG heeft dit resultaat op {today} ontvangen" in impact, impact
        assert "MijnOverheid toont het al" in impact, impact
        walk.seen("delete-impact")
        page.get_by_label("reden", exact=True).select_option("EXTRA_COURSES_OR_GRADE_IMPROVEMENT")
        walk.follow("Verder")  # the first confirmation
        assert "Vermijd het verwijderen" in page.locator("#advice").inner_text()  # the seeds' advice
        assert "CIBG" in page.locator("#impact").inner_text()  # still in view while confirming
        walk.seen("delete-confirm")
        walk.follow("Definitief verwijderen")  # without the second confirmation
        assert walk.field_error("bevestiging")
        walk.seen("delete-confirm-missing")
        system_events = system.delete(result_id, dry_run=True)
        assert system_events.status_code == 200  # still there: nothing was deleted
        page.get_by_label(re.compile("Ik weet dat anderen dit resultaat al hebben")).check()
        walk.follow("Definitief verwijderen")
        assert page.url == f"{system.url}/loket/resultaten/{result_id}?verwijderd=1"
        assert "verwijderd" in page.get_by_role("status").inner_text()
        assert "Verwijderd" in page.locator("dd.state-deleted").inner_text()
        assert page.get_by_role("link", name="Verwijderen", exact=True).count() == 0
        walk.seen("deleted")
        with system.institution() as api:
            assert api.get(f"/v1/results/{result_id}").json()["status"] == "deleted"

        # Verwijderrapportages: this period's report (the audit's files), with the period's dates
        now = Period.containing(datetime.now(UTC))
        run_rod("report", "--period", now.id, env=system.env, check=True)
        walk.follow("Verwijderrapportages")
        listed = {row.locator("th").inner_text(): row.inner_text()
                  for row in page.locator("#reports tbody tr").all()}
        assert now.id in listed, listed
        for period_id, row in listed.items():  # "2027-05  1 november 2026  30 april 2027  1  voorlopig"
            period = Period.parse(period_id)
            assert dutch(period.first_day) in row and dutch(period.last_day) in row, row
        assert "voorlopig" in listed[now.id]
        walk.seen("reports")
        page.get_by_role("link", name=f"Bekijken {now.id}").click()
        page.wait_for_url(f"{system.url}/loket/rapportages/{now.id}.html")
        walk.seen("report-html")

        # a refusal (a result that is not ours answers like an unknown one), and the pages in English
        answer = page.goto(f"{system.url}/loket/resultaten/00000000-0000-4000-8000-000000000000")
        assert answer is not None and answer.status == 404
        walk.seen("not-found")
        page.goto(f"{system.url}/loket/registreren?lang=en")
        assert page.locator("html").get_attribute("lang") == "en"
        walk.follow("Register")  # empty: every required field says so, in English
        assert page.locator(".error-summary li").count() >= 4
        walk.seen("register-errors-en")
        walk.follow("Deletion reports")  # the choice is kept
        assert page.locator("html").get_attribute("lang") == "en" and "Up to and including" in page.content()
        walk.seen("reports-en")
    assert walk.violations == {}, "axe: serious or critical WCAG 2.1 AA violations on Loket pages"
    assert walk.leaked == {}, "full person numbers on Loket pages (counts per page)"


def test_the_registration_form_by_keyboard_alone_and_without_javascript(system: System, browser: Any) -> None:
    with visit(browser, system.url, javascript=False) as tab:
        page, keys = tab.page, tab.page.keyboard

        def tab_to(selector: str, limit: int = 12) -> None:
            for _ in range(limit):
                keys.press("Tab")
                if page.locator(f"{selector}:focus").count():
                    return
            raise AssertionError(f"{selector} not reached with {limit} presses of Tab")

        page.goto(f"{system.url}/loket/login")
        keys.press("Tab")
        assert page.locator("a.skip:focus").inner_text() == "Naar de inhoud"  # the skip link comes first
        tab_to("#token")
        keys.type(system.institution_token)
        with page.expect_navigation():
            keys.press("Enter")
        assert page.url == f"{system.url}/loket"
        tab_to("nav a[href='/loket/registreren']")
        with page.expect_navigation():
            keys.press("Enter")
        assert page.url == f"{system.url}/loket/registreren"

        tab_to("#bsn")  # past the skip link, the header and the navigation
        for n, (name, value) in enumerate(FORM):
            if n:
                keys.press("Tab")  # the next field, in the form's order: nothing in between, no trap
            assert page.locator(f"#{name}:focus").count() == 1, f"Tab did not lead to {name}"
            if value:
                keys.type(value)  # in the select: picks the option typed
        assert page.locator("#sector").input_value() == "HO"
        with page.expect_navigation():
            keys.press("Enter")  # in the last field: submits the form
        assert re.fullmatch(re.escape(system.url) + r"/loket/resultaten/[0-9a-f-]{36}\?nieuw=1", page.url)
        assert "geregistreerd" in page.get_by_role("status").inner_text()
        result_id = page.url.split("/")[-1].split("?")[0]
    with system.institution() as api:
        stored = api.get(f"/v1/results/{result_id}").json()
    registered = stored["registration"]
    assert stored["status"] == "registered"
    assert (registered["diploma_number"], registered["programme_code"], registered["sector"]) == (
        "KEY-1", "50625", "HO")
