"""The operator console: `GET /ops` and its actions, mounted in the registrar's HTTP app.

Server-rendered HTML (Jinja2, autoescaped), no script, no external asset; a strict
Content-Security-Policy says so to the browser. Who may look and act: an operator, by a
session cookie from `/ops/login` or by `Authorization: Bearer <operator token>`. An
institution token is recognised only to answer 403 instead of 401: it never opens the console.
A wrong token (form or header) is logged and counts, with the API's, towards the block of its
client address (429 with Retry-After; a live session cookie is not held up).

Actions are POST forms. With a session cookie each form carries the session's CSRF token
(compared in constant time) and a cross-site Origin is refused, so another site cannot make
an operator's browser act; a bearer header is never sent by a browser on its own, so bearer
requests need no CSRF token. Every action asks for a reason and is recorded on
rod.operations.v1 (the dead-letter functions record their own).
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import delete, insert, inspect, select
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from services.audit.projection import reports as audit_reports
from services.distributor.ledger import Ledger
from services.distributor.subscriptions import load as load_subscriptions
from services.kernel.broker import BrokerUnavailable, resolve_bootstrap
from services.kernel.codec import Codec
from services.kernel.database import make_engine
from services.kernel.logging import get_logger, mask_digits
from services.kernel.settings import Settings
from services.kernel.throttle import FailedLogins, client_address, retry_after
from services.kernel.web import (
    Refused,
    aware,
    csrf_matches,
    drop_private_cookie,
    hash_id,
    new_id,
    page_headers,
    page_policy,
    read_form,
    same_origin,
    set_private_cookie,
)
from services.kernel.web import now as _now
from services.operations.actions import ActionLog
from services.operations.identity import operator_for
from services.operations.store import OperationsStore, flashes, sessions
from services.registrar.store import log_tree
from services.registrar.transparency import progress as log_progress
from services.registrar.verify import last_verification

log = get_logger("operations.console")

TEMPLATES = Path(__file__).resolve().parent / "templates"
COOKIE = "rod_ops_session"
SESSION_HOURS = 12
FLASH_MINUTES = 10  # an action's outcome waits this long for the page that shows it
FORM_LIMIT = 16 * 1024  # bytes of a console form; a reason is a sentence
REASON_MAX = 500
REPORTS_SHOWN = 10
_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,119}")  # fullmatch: no trailing newline
SUBSCRIPTION_ACTIONS = {
    "pause": {"paused": True},
    "resume": {"paused": False},
    # the running distributor sees the mode and sends the feed again from the start of the log
    "replay": {"mode": "backfilling", "backfill_owner": None, "backfill_heartbeat": None},
}
DONE = {  # what the page says after an action: (action, outcome) → text
    ("subscription-pause", "ok"): "paused",
    ("subscription-resume", "ok"): "resumed",
    ("subscription-replay", "ok"): "replay requested (the running distributor sends the feed again)",
    ("deadletter-replay", "replayed"): "replayed",
    ("deadletter-replay", "failed"): "replay failed again: still open, with the new reason",
    ("deadletter-replay", "error"): "not replayed: its database or the broker is away, try again",
    ("deadletter-replay", "not open"): "already closed: nothing changed",
    ("deadletter-discard", "discarded"): "discarded",
    ("deadletter-discard", "not open"): "already closed: nothing changed",
}


LOGIN_REFUSALS = {  # a failed login's outcome → its answer
    "missing": (401, "Log in with an operator token."),
    "invalid": (401, "This token is not an operator's."),
    "forbidden": (403, "An institution token does not open the operator console."),
}


@dataclass(frozen=True)
class Operator:
    """Who is acting, and how they proved it."""

    name: str
    session: str | None = None  # hash of the session id (cookie login), None for a bearer token
    csrf: str | None = None


class Console:
    """What the console's endpoints share: stores, templates and the checks of who may act."""

    def __init__(
        self, settings: Settings, is_institution_token: Callable[[str], bool], registrar_engine: Engine,
        bootstrap: str | None = None, failed_logins: FailedLogins | None = None,
    ) -> None:
        self.settings = settings
        self.is_institution_token = is_institution_token
        self.failed_logins = failed_logins or FailedLogins()
        self.failed_logins.watch(["console"])
        self.registrar_engine = registrar_engine
        self._bootstrap = bootstrap
        self.store = OperationsStore(settings.database_urls["operations"])
        self.codec = Codec()
        self.templates = Environment(loader=FileSystemLoader(TEMPLATES),
                                     autoescape=select_autoescape(["html"]))
        self.templates.globals.update(fmt=fmt, tabulate=tabulate)
        self.css = (TEMPLATES / "console.css").read_text()
        self.policy = page_policy(self.css)  # nothing may load or run but the one inline style block
        self._lazy: dict[str, Any] = {}
        self._lock = threading.Lock()

    # the other services' stores, opened on first use (read only, except the ledger's own calls)

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._lazy:
                self._lazy[key] = make()
            return self._lazy[key]

    def ledger(self) -> Ledger:
        return self._once("ledger", lambda: Ledger(self.settings.database_urls["distributor"]))

    def audit_engine(self) -> Engine:
        return self._once("audit", lambda: make_engine(self.settings.database_urls["audit"]))

    def bootstrap(self) -> str | None:
        if self._bootstrap:
            return self._bootstrap
        try:
            return resolve_bootstrap(self.settings)
        except BrokerUnavailable:
            return None

    def dispose(self) -> None:
        self.store.dispose()
        for value in self._lazy.values():
            value.dispose()

    # who is asking

    def identify(self, request: Request) -> Operator:
        """The operator behind the request; Refused(401) without a credential, 403 for an institution's."""
        operator = self._identify(request)
        request.state.operator = operator.name  # the access line names who asked
        return operator

    def _identify(self, request: Request) -> Operator:
        header = request.headers.get("authorization")
        if header is not None:
            client = self.unblocked_client(request)
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise self.login_failed(request, client, "missing")
            name = operator_for(self.store, token)
            if name is not None:
                return Operator(name)
            forbidden = len(token) <= 256 and self.is_institution_token(token)
            raise self.login_failed(request, client, "forbidden" if forbidden else "invalid")
        session_id = request.cookies.get(COOKIE)
        if session_id and len(session_id) <= 128:
            digest = hash_id(session_id)
            with self.store.reading() as conn:
                row = conn.execute(select(sessions).where(sessions.c.id_hash == digest)).first()
            alive = row is not None and aware(row.expires_at) > _now()
            if alive and hmac.compare_digest(row.id_hash, digest):
                return Operator(row.operator, row.id_hash, row.csrf)
        raise Refused(401, "Log in with an operator token.")

    def unblocked_client(self, request: Request) -> str:
        """The request's client address; Refused(429) while it is blocked for failed logins."""
        client = client_address(request.scope)
        wait = self.failed_logins.blocked(client, "console")
        if wait is not None:
            raise Refused(429, "Too many failed logins from your address: try again later.",
                          {"retry-after": retry_after(wait)})
        return client

    def login_failed(self, request: Request, client: str, outcome: str) -> Refused:
        """Record a failed login (a token, never the token itself); the refusal to raise."""
        route = getattr(request.scope.get("route"), "path", "unmatched")
        self.failed_logins.failed(client, "console", outcome, route)
        return Refused(*LOGIN_REFUSALS[outcome])

    def start_session(self, operator: str) -> str:
        """A new session for `operator`; returns the id for the cookie (only its hash is stored)."""
        session_id = new_id()
        moment = _now()
        with self.store.writing() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < moment))  # the expired ones
            conn.execute(insert(sessions).values(
                id_hash=hash_id(session_id), operator=operator, csrf=secrets.token_urlsafe(32),
                created_at=moment, expires_at=moment + timedelta(hours=SESSION_HOURS),
            ))
        return session_id

    def flash(self, operator: str, message: str) -> str:
        """Keep `message` for `operator`'s next page; returns the one-time id the redirect carries."""
        flash_id = secrets.token_urlsafe(16)
        moment = _now()
        with self.store.writing() as conn:
            conn.execute(delete(flashes).where(flashes.c.expires_at < moment))
            conn.execute(insert(flashes).values(id_hash=hash_id(flash_id), operator=operator, message=message,
                                                expires_at=moment + timedelta(minutes=FLASH_MINUTES)))
        return flash_id

    def take_flash(self, operator: str, flash_id: str) -> str | None:
        """The message kept under `flash_id` for `operator`, once: taking it deletes it."""
        mine = (flashes.c.id_hash == hash_id(flash_id)) & (flashes.c.operator == operator)
        with self.store.writing() as conn:
            row = conn.execute(select(flashes).where(mine)).first()
            conn.execute(delete(flashes).where(mine))
        return row.message if row is not None and aware(row.expires_at) > _now() else None

    def end_session(self, operator: Operator) -> None:
        if operator.session:
            with self.store.writing() as conn:
                conn.execute(delete(sessions).where(sessions.c.id_hash == operator.session))

    # what the page shows

    def facts(self) -> dict[str, Any]:
        """Every section of the page; one that cannot be read says so instead of failing the page."""
        broker = self.bootstrap()
        out: dict[str, Any] = {"broker_unknown": broker is None}
        for key, read in (("overview", lambda: self._overview(broker)),
                          ("log", self._log), ("deadletters", self._open_deadletters),
                          ("verification", self._verification),
                          ("reports", self._reports)):
            try:
                out[key] = read()
            except Exception as exc:  # noqa: BLE001 - one section down must not hide the others
                log.warning("console_section_failed", section=key, error=type(exc).__name__)
                out[key] = None
                out[f"{key}_error"] = type(exc).__name__
        try:
            out["subscriptions"] = (out["overview"] or {}).get("subscriptions") or self._subscriptions()
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("console_section_failed", section="subscriptions", error=type(exc).__name__)
            out["subscriptions"], out["subscriptions_error"] = [], type(exc).__name__
        return out

    def _subscriptions(self) -> list[dict[str, Any]]:
        """Each configured subscription's state and counts from the ledger (when the overview has none)."""
        configured = load_subscriptions(codec=self.codec)
        ledger = self.ledger()
        with ledger.reading() as conn:
            states = ledger.states(conn)
        counts = ledger.counts()
        return [{"name": s.name, "state": "paused" if states[s.name].paused else "running",
                 **counts.get(s.name, {})} for s in configured if s.name in states]

    def _overview(self, broker: str | None) -> dict[str, Any] | None:
        """The chain overview, or None (no broker known: the page says so)."""
        if broker is None:
            return None
        try:
            from services.operations import overview
        except ImportError:
            return None
        return overview.gather(self.settings, broker)

    def _open_deadletters(self) -> list[dict[str, Any]]:
        from services.operations import deadletters

        return [x for x in deadletters.list_all(self.settings) if x["status"] == "open"]

    def _log(self) -> dict[str, Any] | None:
        """The log's tree and newest checkpoint, from the registrar's tables (no broker needed)."""
        with self.registrar_engine.connect() as conn:
            if not inspect(conn).has_table(log_tree.name):
                return None
            progress = log_progress.read(conn)
        return {**progress.view(_now()), "checkpoint_signed_at": progress.signed_at}  # fmt shows the time

    def _verification(self) -> dict[str, Any] | None:
        return last_verification(self.registrar_engine)

    def _reports(self) -> list[dict[str, Any]]:
        engine = self.audit_engine()
        if not inspect(engine).has_table(audit_reports.name):
            return []  # the audit service has not run here yet
        query = (select(audit_reports).order_by(audit_reports.c.generated_at.desc(), audit_reports.c.scope)
                 .limit(REPORTS_SHOWN))
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["generated_at"] = datetime.fromtimestamp(row["generated_at"] / 1000, UTC)
        return rows

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(css=self.css, **values)
        return HTMLResponse(html, status_code=status, headers=self.headers())

    def headers(self) -> dict[str, str]:
        return page_headers(self.policy)

    # actions

    def subscription_action(self, operator: str, name: str, action: str, reason: str) -> str:
        subscriptions = {s.name: s for s in load_subscriptions(codec=self.codec)}
        if name not in subscriptions:
            raise Refused(404, "No such subscription.")
        ledger = self.ledger()
        ledger.sync_subscriptions([(s.name, s.start) for s in subscriptions.values()])
        if action == "replay":
            with ledger.reading() as conn:
                if ledger.states(conn)[name].paused:
                    raise Refused(409, "This subscription is paused: resume it before a replay.")
        ledger.set_subscription(name, **SUBSCRIPTION_ACTIONS[action])
        ActionLog(self.store, self.settings, self.bootstrap()).record(
            operator, "console", f"subscription-{action}", name, reason)
        return "ok"

    def deadletter_action(self, operator: str, letter: str, action: str, reason: str) -> str:
        """Replay or discard one open dead letter (recorded by the dead-letter module); its outcome."""
        from services.operations import deadletters

        known = {x["id"]: x for x in deadletters.list_all(self.settings)}
        if letter not in known:
            raise Refused(404, "No such dead letter.")
        if known[letter]["status"] != "open":
            raise Refused(409, "This dead letter is closed already.")
        bootstrap = self.bootstrap()
        if action == "discard":
            closed = deadletters.discard(self.settings, letter, reason, operator, "console", bootstrap)
            return closed["outcome"]
        if bootstrap is None:
            raise Refused(503, "No broker is known: a replay needs one.")
        [outcome] = deadletters.replay(self.settings, bootstrap, [letter], operator=operator, via="console",
                                       reason=reason)
        return outcome["outcome"]


def fmt(value: Any) -> str:
    """One table cell as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return aware(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def tabulate(value: Any, skip: tuple[str, ...] = ()) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows for any overview section: a list of objects, objects by name, or one object."""
    if not value:
        return [], []
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            rows = [{"name": k, **v} for k, v in value.items()]
        else:
            rows = [value]
    elif isinstance(value, list | tuple):
        rows = [v if isinstance(v, dict) else {"value": v} for v in value]
    else:
        rows = [{"value": value}]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in skip)
    return columns, rows


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (the only kind the console's pages send), capped in size."""
    return await read_form(request, FORM_LIMIT)


def _csrf(operator: Operator, form: dict[str, str]) -> None:
    """A cookie session's form must carry its CSRF token (compared in constant time)."""
    if operator.session is not None and not csrf_matches(operator.csrf, form.get("csrf", "")):
        raise Refused(403, "The form has expired: reload the console and try again.")


def _checked(operator: Operator, form: dict[str, str]) -> str:
    """The action's reason, once the CSRF token of a cookie session matches; Refused otherwise."""
    _csrf(operator, form)
    reason = " ".join(form.get("reason", "").split())
    if not reason:
        raise Refused(400, "Give a reason: it is kept with the action.")
    if len(reason) > REASON_MAX:
        raise Refused(400, f"A reason is at most {REASON_MAX} characters.")
    return reason


def console_router(
    settings: Settings, is_institution_token: Callable[[str], bool], registrar_engine: Engine,
    bootstrap: str | None = None, failed_logins: FailedLogins | None = None,
) -> APIRouter:
    """`/ops`, `/ops/login`, `/ops/logout` and the actions, for the system of `settings`; failed
    logins go to `failed_logins` (the app shares one with the gate)."""
    router = APIRouter(tags=["operations"], include_in_schema=False)
    console = Console(settings, is_institution_token, registrar_engine, bootstrap, failed_logins)

    def refused(refusal: Refused) -> HTMLResponse:
        if refusal.status in (401, 429):
            response = console.render("login.html", refusal.status, message=refusal.message)
            if refusal.status == 401:
                response.headers["www-authenticate"] = 'Bearer realm="rod-ops"'
        else:
            response = console.render("refused.html", refusal.status, message=refusal.message)
        response.headers.update(refusal.headers)
        return response

    @router.get("/ops/login")
    def login_form() -> HTMLResponse:
        return console.render("login.html")

    @router.post("/ops/login")
    async def login(request: Request) -> Response:
        try:
            same_origin(request)
            client = console.unblocked_client(request)
            token = (await _form(request)).get("token", "").strip()
            name = await run_in_threadpool(operator_for, console.store, token)
            if name is None:
                institution = bool(token) and len(token) <= 256 and await run_in_threadpool(
                    console.is_institution_token, token)
                outcome = "forbidden" if institution else "invalid" if token else "missing"
                raise console.login_failed(request, client, outcome)
        except Refused as refusal:
            return refused(refusal)
        session_id = await run_in_threadpool(console.start_session, name)
        log.info("operator_logged_in", operator=name)
        response = RedirectResponse("/ops", status_code=303)
        set_private_cookie(request, response, COOKIE, session_id, "/ops", SESSION_HOURS * 3600)
        return response

    @router.post("/ops/logout")
    async def logout(request: Request) -> Response:
        try:
            operator = await run_in_threadpool(console.identify, request)
            same_origin(request)
            form = await _form(request)
            _csrf(operator, form)
        except Refused as refusal:
            return refused(refusal)
        await run_in_threadpool(console.end_session, operator)
        response = RedirectResponse("/ops/login", status_code=303)
        drop_private_cookie(response, COOKIE, "/ops")
        return response

    @router.get("/ops")
    def page(request: Request, flash: str | None = None) -> HTMLResponse:
        try:
            operator = console.identify(request)
        except Refused as refusal:
            return refused(refusal)
        # an outcome is shown only from the server's own record of the action, never from the URL
        message = console.take_flash(operator.name, flash) if flash and len(flash) <= 64 else None
        facts = console.facts()
        return console.render("console.html", operator=operator, message=message, mask=mask_digits,
                              now=_now(), **facts)

    async def act(
        request: Request, perform: Callable[[str, str], str], action: str, target: str
    ) -> Response:
        try:
            operator = await run_in_threadpool(console.identify, request)
            same_origin(request)
            reason = _checked(operator, await _form(request))
            outcome = await run_in_threadpool(perform, operator.name, reason)
        except Refused as refusal:
            return refused(refusal)
        log.info("operator_action", operator=operator.name, action=action, target=target, via="console",
                 outcome=outcome)
        said = DONE.get((action, outcome))
        if said is None:
            return RedirectResponse("/ops", status_code=303)
        flash_id = await run_in_threadpool(console.flash, operator.name, f"{target}: {said}")
        return RedirectResponse(f"/ops?flash={flash_id}", status_code=303)

    @router.post("/ops/subscriptions/{name}/{action}")
    async def subscription(request: Request, name: str, action: str) -> Response:
        if action not in SUBSCRIPTION_ACTIONS or not _TARGET.fullmatch(name):
            return refused(Refused(404, "No such action."))
        return await act(request, lambda who, why: console.subscription_action(who, name, action, why),
                         f"subscription-{action}", name)

    @router.post("/ops/deadletters/{letter}/{action}")
    async def deadletter(request: Request, letter: str, action: str) -> Response:
        if action not in ("replay", "discard") or not _TARGET.fullmatch(letter):
            return refused(Refused(404, "No such action."))
        return await act(request, lambda who, why: console.deadletter_action(who, letter, action, why),
                         f"deadletter-{action}", letter)

    router.console = console  # type: ignore[attr-defined]  # for build_app's dispose
    return router
