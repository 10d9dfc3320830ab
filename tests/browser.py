"""Debian's chromium, headless, for the browser tests: one launch, a page that stays on the server,
screenshots kept as artifacts and axe-core's WCAG 2.1 AA check.

    with chromium() as browser, visit(browser, server_url) as tab:
        tab.page.goto(f"{server_url}/ops/login")
        assert tab.axe() == []
        tab.screenshot("ops-login")

No browser is ever downloaded: without Debian's chromium (or the playwright package) the test
skips and says why. Every request the page makes is recorded; one to any host other than the
server is aborted, and `visit` fails the test for it when the block ends.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ROD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# screenshots and other files a person may want to look at after the run (.gitignore'd)
ARTIFACTS = Path(os.environ.get("ROD_TEST_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts")
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]  # the level Dutch government sites must meet
BLOCKING = ("serious", "critical")  # axe's impacts a page may not have
# what chromium logs for a page that answered 4xx (a refusal page is still a page), not a problem
ANSWERED = "Failed to load resource: the server responded with a status of"


def sync_api() -> Any:
    """playwright.sync_api, or a skip naming what is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); no browser is downloaded")
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium (a playwright Browser), closed afterwards."""
    api = sync_api()
    with api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page of one browser context, with what it asked for and what went wrong in it."""

    page: Any
    origin: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors and uncaught page errors

    @property
    def elsewhere(self) -> list[str]:
        """Requests to any host but the server's (each was aborted)."""
        return [url for url in self.requests if not url.startswith(self.origin + "/")]

    def screenshot(self, name: str) -> Path:
        """The whole page as ARTIFACTS/<name>.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def axe(self) -> list[str]:
        """axe-core's serious and critical WCAG 2.1 AA violations on the page as it is now, one line
        each ("rule (impact): help -> selectors"); an empty list when there is none.

        axe runs in the page through the DevTools protocol, so a page without scripts and with a
        strict Content-Security-Policy is checked as it is. Lines name rules and selectors only,
        never the page's text (which may hold a person number). ROD_TEST_AXE_ALL=1 lists the
        moderate and minor ones too (to look at, failing the test).
        """
        axe = pytest.importorskip("axe_playwright_python.sync_playwright",
                                  reason="axe-playwright-python (the dev extras) is not installed")
        options = {"runOnly": {"type": "tag", "values": WCAG_21_AA}, "resultTypes": ["violations"]}
        found = axe.Axe().run(self.page, options=options).response["violations"]
        return [f"{v['id']} ({v['impact']}): {v['help']} -> "
                + ", ".join(" ".join(node["target"]) for node in v["nodes"])
                for v in found if v["impact"] in BLOCKING or os.environ.get("ROD_TEST_AXE_ALL")]


@contextmanager
def visit(browser: Any, origin: str, *, javascript: bool = True, **context: Any) -> Iterator[Tab]:
    """A fresh browser context on `origin` (e.g. http://127.0.0.1:8000) and its page.

    Requests to other hosts are aborted and recorded; when the block ends without an exception
    the test fails if there was one, if nothing was requested, or if a script error was logged.
    `javascript=False` shows the page as a browser without scripts does (axe then cannot run).
    """
    made = browser.new_context(java_script_enabled=javascript, **context)
    tab = Tab(made.new_page(), origin.rstrip("/"))

    def route(handled: Any) -> None:
        tab.requests.append(handled.request.url)
        if handled.request.url.startswith(tab.origin + "/"):
            handled.continue_()
        else:
            handled.abort()

    made.route("**/*", route)
    def console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith(ANSWERED):
            tab.problems.append(message.text)

    tab.page.on("console", console)
    tab.page.on("pageerror", lambda error: tab.problems.append(str(error)))
    try:
        yield tab
    finally:
        made.close()
    assert tab.requests, "the page requested nothing"
    assert tab.elsewhere == [], f"requests to another host: {tab.elsewhere}"
    assert tab.problems == [], f"script errors or blocked loads: {tab.problems}"
