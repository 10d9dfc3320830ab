"""Het Loket (`/loket`) over real HTTP (uvicorn) and a real database: logging in with an
institution's token, the registration form on the API's own path, uploads with their paged
feedback, results by diploma number, the deletion flow with the chain impact (real receipts
on the real broker) and the reports; and who may see and do what."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete as sql_delete
from sqlalchemy import update

from services.distributor.feed import FeedStore
from services.distributor.ledger import Ledger
from services.kernel import kafka
from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.kernel.tokens import FRESH_SECONDS, hash_token
from services.operations.identity import add_operator
from services.operations.store import OperationsStore
from services.registrar.catalogue import Catalogue
from services.registrar.commands import Registrar
from services.registrar.impact import DELIVERIES_TOPIC, EXTRACTS_TOPIC, ImpactReader
from services.registrar.loket.pages import FIELDS, Page, environment
from services.registrar.loket.sessions import Session, SessionBook
from services.registrar.rules import SECTORS
from services.registrar.store import DIPLOMAS_INDEXED, EventStore, diplomas, meta
from services.registrar.tokens import institution_tokens, rotate_token
from tests.fixtures.bulkfiles import sample_row, write_csv, write_xml
from tests.integration.apiserver import CATALOGUE, RunningApi, registration, running_api
from tests.integration.test_audit_http import reported  # noqa: F401 - the scripted year's reports, served
from tests.support import LOG_SINK

ATTACKER, NEIGHBOUR, COLLEAGUE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
CROSS_SITE = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}


@pytest.fixture
def api(settings: Settings) -> Iterator[RunningApi]:
    with running_api(settings) as running:
        yield running


def browser(api: RunningApi, address: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=60, transport=httpx.HTTPTransport(local_address=address))


@contextmanager
def logged_in(api: RunningApi, institution: str = "25BE") -> Iterator[tuple[httpx.Client, str]]:
    """A browser logged in to the Loket as `institution`, and its session's CSRF token."""
    with browser(api) as client:
        answer = client.post("/loket/login", data={"token": api.tokens[institution]})
        assert answer.status_code == 303 and answer.headers["location"] == "/loket"
        yield client, csrf_of(client.get("/loket").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page's forms carry a CSRF token"
    return found.group(1)


def form(csrf: str, **changes: str) -> dict[str, str]:
    """The registration form as a browser sends it (every field, empty ones too)."""
    values = {
        "csrf": csrf,
        "bsn": "111222333",
        "onderwijsnummer": "",
        "vestigingscode": "25BE01",
        "onderwijsaanbieder": "",
        "sector": "HO",
        "opleidingscode": "56551",
        "diplomavolgnummer": "L-1",
        "diplomadatum": "2026-07-01",
    }
    values.update(changes)
    return values


def field_errors(html: str) -> dict[str, str]:
    """Each field's error container (one per field) and its messages, joined by " | "."""
    found = re.findall(r'class="field-error" id="([a-z]+)-error"[^>]*>(.*?)</div>', html)
    assert len({name for name, _ in found}) == len(found), "one error container per field"
    return {name: " | ".join(re.findall(r"<p>([^<]+)</p>", inner)) for name, inner in found}


def result_id_of(answer: httpx.Response) -> str:
    assert answer.status_code == 303, answer.text
    found = re.fullmatch(r"/loket/resultaten/([0-9a-f-]{36})\?\w+=1", answer.headers["location"])
    assert found, answer.headers["location"]
    return found.group(1)


def logged_since(start: int) -> str:
    return "".join(LOG_SINK.parts[start:])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_login_wrong_tokens_other_kinds_and_the_throttle(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROD_AUTH_FAILURES_PER_MINUTE", "3")
    with running_api(settings) as api:
        operations = OperationsStore(api.settings.database_urls["operations"])
        operator = add_operator(operations, "olga", "test")
        operations.dispose()
        ledger = Ledger(settings.database_urls["distributor"])
        consumer = FeedStore(ledger).add_consumer("cibg", "cibg-big", {"cibg-big"})
        ledger.dispose()
        portal = api.api.extract.store.add_portal("mijnduo")
        start = len(LOG_SINK.parts)

        with browser(api) as anonymous:
            for path in ("/loket", "/loket/registreren", "/loket/resultaten", "/loket/rapportages"):
                answer = anonymous.get(path)
                assert answer.status_code == 303 and answer.headers["location"] == "/loket/login"
            page = anonymous.get("/loket/login")
            assert (
                page.status_code == 200 and 'name="token"' in page.text and '<label for="token">' in page.text
            )
            assert page.headers["cache-control"] == "no-store"
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert '<html lang="nl">' in page.text and "Loket Onderwijsdeelnemers" in page.text
            english = anonymous.get("/loket/login?lang=en")
            assert '<html lang="en">' in english.text and "Log in" in english.text
            assert '<html lang="en">' in anonymous.get("/loket/login").text  # the choice is kept

        with browser(api, NEIGHBOUR) as neighbour:
            for token in (operator, consumer, portal):
                refused = neighbour.post("/loket/login", data={"token": token})
                assert refused.status_code == 403 and "geen token van een onderwijsinstelling" in refused.text
                assert "rod_loket_session" not in refused.headers.get("set-cookie", "")

        with browser(api, ATTACKER) as attacker:
            for n in range(3):
                wrong = attacker.post("/loket/login", data={"token": f"rodi_wrong{n}secret"})
                assert wrong.status_code == 401 and 'action="/loket/login"' in wrong.text
            held = attacker.post("/loket/login", data={"token": api.tokens["25BE"]})  # a right one waits too
            assert held.status_code == 429 and 1 <= int(held.headers["retry-after"]) <= 60
            assert attacker.get("/v1/results/x", headers={"Authorization": "Bearer x"}).status_code == 429

        with browser(api, COLLEAGUE) as colleague:
            answer = colleague.post("/loket/login", data={"token": api.tokens["25BE"]})
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/loket" in cookie
            home = colleague.get("/loket")
            assert home.status_code == 200 and home.headers["cache-control"] == "no-store"
            for text in ("Resultaat registreren", "Bestand aanleveren", "Resultaten", "Verwijderrapportages"):
                assert f">{text}</a>" in home.text
            assert colleague.post("/loket/logout", data={"csrf": csrf_of(home.text)}).status_code == 303
            assert colleague.get("/loket").status_code == 303  # the session ended

    logged = logged_since(start)
    assert '"surface": "loket"' in logged and '"route": "/loket/login"' in logged
    assert not [t for t in (operator, consumer, portal, *api.tokens.values()) if t in logged]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_wrong_bsn_is_shown_at_its_field_with_the_values_kept_then_a_good_one_registers(
    api: RunningApi,
) -> None:
    with logged_in(api) as (client, csrf):
        page = client.get("/loket/registreren")
        for name in (
            "bsn",
            "onderwijsnummer",
            "vestigingscode",
            "onderwijsaanbieder",
            "sector",
            "opleidingscode",
            "diplomavolgnummer",
            "diplomadatum",
        ):
            assert f'<label for="{name}">{name}</label>' in page.text and f'name="{name}"' in page.text
        before = api.events()
        wrong = client.post("/loket/registreren", data=form(csrf, bsn="123456789"))
        assert wrong.status_code == 422
        assert field_errors(wrong.text) == {"bsn": "Het BSN is ongeldig (9 cijfers en de elfproef)."}
        assert 'aria-describedby="bsn-hint bsn-error"' in wrong.text and 'aria-invalid="true"' in wrong.text
        assert (
            'value="L-1"' in wrong.text and 'value="25BE01"' in wrong.text and "B Geneeskunde" in wrong.text
        )
        assert api.events() == before

        several = client.post(
            "/loket/registreren?lang=en",
            data=form(csrf, bsn="", vestigingscode="99XX01", diplomadatum="1 juli"),
        )
        errors = field_errors(several.text)
        assert set(errors) == {"bsn", "vestigingscode", "diplomadatum"}
        assert errors["bsn"] == "Neither a BSN nor an onderwijsnummer was given."
        assert '<html lang="nl">' in client.get("/loket?lang=nl").text  # back to Dutch

        result_id = result_id_of(client.post("/loket/registreren", data=form(csrf)))
        shown = client.get(f"/loket/resultaten/{result_id}?nieuw=1")
        assert shown.status_code == 200 and "Het resultaat is geregistreerd." in shown.text
        assert "56551 – B Geneeskunde" in shown.text and "******333" in shown.text
        assert "111222333" not in shown.text and "1 juli 2026" in shown.text
        again = client.post("/loket/registreren", data=form(csrf))  # the API's identical repeat
        assert result_id_of(again) == result_id and "bekend=1" in again.headers["location"]
    with api.client() as rest:  # the very result the API registers and reads
        read = rest.get(f"/v1/results/{result_id}").json()
        assert read["status"] == "registered" and read["registration"]["diploma_number"] == "L-1"
    assert api.events() == before + 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_another_institution_gets_404_for_every_page_and_action_of_a_foreign_result(
    api: RunningApi, tmp_path: Path
) -> None:
    with api.client() as rest:
        result_id = rest.post("/v1/results", json=registration(diploma_number="OURS-1")).json()["result_id"]
        write_csv(tmp_path / "ours.csv", [sample_row(1)])
        batch_id = rest.post(
            "/v1/batches", content=(tmp_path / "ours.csv").read_bytes(), headers={"content-type": "text/csv"}
        ).json()["batch_id"]
    before = api.events()
    with logged_in(api, "30XX") as (client, csrf):
        for path in (
            f"/loket/resultaten/{result_id}",
            f"/loket/resultaten/{result_id}/verwijderen",
            f"/loket/aanleveringen/{batch_id}",
            f"/loket/aanleveringen/{batch_id}/terugkoppeling.csv",
            f"/loket/aanleveringen/{batch_id}?afgekeurd=1",
            "/loket/resultaten/not-an-id",
        ):
            assert client.get(path).status_code == 404, path
        for step in ({"stap": "reden"}, {"stap": "bevestigen", "bevestiging": "ja"}):
            deleted = client.post(
                f"/loket/resultaten/{result_id}/verwijderen",
                data={"csrf": csrf, "reden": "ADMINISTRATIVE_ERROR", **step},
            )
            assert deleted.status_code == 404
        listed = client.get("/loket/resultaten")
        assert "OURS-1" not in listed.text and result_id not in listed.text
        searched = client.get("/loket/resultaten", params={"diplomavolgnummer": "OURS-1"})
        assert result_id not in searched.text and "Geen resultaten gevonden." in searched.text
    assert api.events() == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_posts_without_the_csrf_token_or_from_another_site_are_refused_and_change_nothing(
    api: RunningApi, tmp_path: Path
) -> None:
    with api.client() as rest:
        result_id = rest.post("/v1/results", json=registration()).json()["result_id"]
    write_csv(tmp_path / "file.csv", [sample_row(7)])
    before = api.events()
    deletion = {"stap": "bevestigen", "reden": "ADMINISTRATIVE_ERROR", "bevestiging": "ja"}
    with logged_in(api) as (client, csrf):
        for sent, headers in (
            ({}, {}),
            ({"csrf": "wrong"}, {}),
            ({"csrf": csrf}, CROSS_SITE),
            ({"csrf": csrf}, {"origin": "http://evil.example"}),
        ):
            registered = client.post("/loket/registreren", data={**form(""), **sent}, headers=headers)
            assert registered.status_code == 403, registered.text
            deleted = client.post(
                f"/loket/resultaten/{result_id}/verwijderen", data={**deletion, **sent}, headers=headers
            )
            assert deleted.status_code == 403
            uploaded = client.post(
                "/loket/aanleveren",
                data=sent,
                headers=headers,
                files={"bestand": ("file.csv", (tmp_path / "file.csv").read_bytes(), "text/csv")},
            )
            assert uploaded.status_code == 403
            assert client.post("/loket/logout", data={**sent, "x": ""}, headers=headers).status_code == 403
        assert client.get("/loket").status_code == 200  # still logged in
    with browser(api) as stranger:  # no session: to the login page, nothing done
        answer = stranger.post("/loket/registreren", data=form(csrf))
        assert answer.status_code == 303 and answer.headers["location"] == "/loket/login"
    assert api.events() == before
    with api.client() as rest:
        assert rest.get(f"/v1/results/{result_id}").json()["status"] == "registered"


def test_a_revoked_or_rotated_token_ends_its_sessions(api: RunningApi) -> None:
    engine = api.api.registrar.store.engine
    with logged_in(api, "25BE") as (ours, _), logged_in(api, "30XX") as (theirs, _):
        assert ours.get("/loket/resultaten").status_code == 200
        assert theirs.get("/loket/resultaten").status_code == 200
        assert institution_tokens(engine).revoke(hash_token(api.tokens["25BE"]), "test", "left") == "25BE"
        ended = ours.get("/loket/resultaten")
        assert ended.status_code == 303 and ended.headers["location"] == "/loket/login"
        assert ours.post("/loket/login", data={"token": api.tokens["25BE"]}).status_code == 401
        assert theirs.get("/loket/resultaten").status_code == 200  # another institution's session stays
        fresh = rotate_token(engine, "30XX", "test", "rotated")
        assert theirs.get("/loket/resultaten").status_code == 303
        assert theirs.post("/loket/login", data={"token": fresh}).status_code == 303
        assert theirs.get("/loket/resultaten").status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_session_is_remembered_a_second_at_most_a_logout_forgets_it_at_once_and_memory_is_bounded(
    api: RunningApi,
) -> None:
    engine = api.api.registrar.store.engine
    here, there = (SessionBook(engine, institution_tokens(engine)) for _ in range(2))  # two processes
    opened = here.start("25BE", api.tokens["25BE"])
    session = here.find(opened)
    assert session is not None and here.remembered(opened) == session  # no database the next time
    there.end(session)  # another process logs it out: the row is gone, this one trusts it briefly
    assert here.find(opened) is None and here.remembered(opened) == session
    time.sleep(FRESH_SECONDS)
    assert here.remembered(opened) is None
    again = here.start("25BE", api.tokens["25BE"])
    session = here.find(again)
    assert session is not None and here.remembered(again) == session
    here.end(session)  # a logout in this process: forgotten at once
    assert here.remembered(again) is None and here.find(again) is None
    here.recent.size = 2
    opened = [here.start("25BE", api.tokens["25BE"]) for _ in range(3)]
    assert all(here.find(one) for one in opened)
    assert len(here.recent._known) == 2 and here.remembered(opened[0]) is None
    assert here.remembered(opened[1]) and here.remembered(opened[2])


def test_an_upload_shows_its_summary_the_paged_feedback_the_rejected_filter_and_the_csv(
    api: RunningApi, tmp_path: Path
) -> None:
    rows = [sample_row(i) for i in range(60)]
    bad = {3: {"bsn": "123456789"}, 17: {"diplomadatum": "2099-01-01"}, 55: {"sector": "XX"}}
    for i, change in bad.items():
        rows[i] = {**rows[i], **change}
    write_csv(tmp_path / "upload.csv", rows)
    with logged_in(api) as (client, csrf):
        assert '<label for="bestand">' in client.get("/loket/aanleveren").text
        answer = client.post(
            "/loket/aanleveren",
            data={"csrf": csrf},
            files={"bestand": ("upload.csv", (tmp_path / "upload.csv").read_bytes(), "text/csv")},
        )
        assert answer.status_code == 303, answer.text
        batch_page = answer.headers["location"]
        batch_id = batch_page.rsplit("/", 1)[1]
        first = client.get(batch_page)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        summary = dict(re.findall(r"<dt>([^<]+)</dt><dd>(\d+)</dd>", first.text))
        assert summary["Verwerkt"] == "57" and summary["Afgekeurd"] == "3"
        records = re.findall(r'<tr><td class="n">(\d+)</td><td class="n">(\d+)</td>', first.text)
        assert [int(r) for r, _line in records] == list(range(1, 51))  # one page of 50
        named = re.findall(r'>resultaat<span class="vh"> van record (\d+)</span></a>', first.text)
        assert named == [str(r) for r in range(1, 51) if r not in (4, 18)]  # a name of its own each
        assert ("4", "5") in records  # record 4 is on line 5 (after the header)
        assert "BSN_INVALID</code>: Het BSN is ongeldig" in first.text
        following = client.get(re.search(r'href="([^"]+na=50)"', first.text).group(1).replace("&amp;", "&"))
        assert [
            int(r)
            for r, _ in re.findall(r'<tr><td class="n">(\d+)</td><td class="n">(\d+)</td>', following.text)
        ] == list(range(51, 61))
        assert f'href="/loket/aanleveringen/{batch_id}?na=50&amp;lang=en" lang="en">English' in following.text
        rejected = client.get(batch_page, params={"afgekeurd": "1"})
        shown = re.findall(r'<tr><td class="n">(\d+)</td>', rejected.text)
        assert shown == ["4", "18", "56"] and "outcome-accepted" not in rejected.text
        english = re.search(r'href="([^"]+)" lang="en">English</a>', rejected.text).group(1)
        english = english.replace("&amp;", "&")
        assert english == f"{batch_page}?afgekeurd=1&lang=en"  # the filter kept, only the language set
        in_english = client.get(english)
        assert re.findall(r'<tr><td class="n">(\d+)</td>', in_english.text) == shown
        assert "Show all records" in in_english.text
        dutch = re.search(r'href="([^"]+)" lang="nl">Nederlands', in_english.text).group(1)
        assert dutch == f"{batch_page}?afgekeurd=1&amp;lang=nl"
        client.get(dutch.replace("&amp;", "&"))  # back to Dutch

        feedback = client.get(f"/loket/aanleveringen/{batch_id}/terugkoppeling.csv")
        assert feedback.status_code == 200 and feedback.headers["content-type"].startswith("text/csv")
        assert feedback.headers["cache-control"] == "no-store"
        lines = feedback.text.splitlines()
        assert lines[0] == "record,line,outcome,result_id,codes" and len(lines) == 61
        assert lines[4].startswith("4,5,rejected,,BSN_INVALID")

        before = api.events()
        (tmp_path / "empty.csv").write_bytes(b"")
        refused = client.post(
            "/loket/aanleveren", data={"csrf": csrf}, files={"bestand": ("empty.csv", b"", "text/csv")}
        )
        assert refused.status_code in (400, 422) and "Er is niets verwerkt." in refused.text
        assert re.search(r"<code>[A-Z_]+</code>", refused.text)
        other = client.post(
            "/loket/aanleveren", data={"csrf": csrf}, files={"bestand": ("notes.txt", b"hello", "text/plain")}
        )
        assert other.status_code == 415
        assert api.events() == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_mbo_institution_uploads_xml_and_its_csv_is_refused_with_the_rule(
    api: RunningApi, tmp_path: Path
) -> None:
    rows = [
        sample_row(
            i,
            instellingscode="40MB",
            vestigingscode="40MB01",
            sector="MBO",
            opleidingscode="25655",
            onderwijsaanbieder=None,
        )
        for i in range(3)
    ]
    write_xml(tmp_path / "mbo.xml", rows, "40MB")
    write_csv(tmp_path / "mbo.csv", rows)
    with logged_in(api, "40MB") as (client, csrf):
        before = api.events()
        refused = client.post(
            "/loket/aanleveren",
            data={"csrf": csrf},
            files={"bestand": ("mbo.csv", (tmp_path / "mbo.csv").read_bytes(), "text/csv")},
        )
        assert refused.status_code == 422 and "<code>FILE_FORMAT_NOT_ALLOWED</code>" in refused.text
        assert api.events() == before
        taken = client.post(
            "/loket/aanleveren",
            data={"csrf": csrf},
            files={"bestand": ("mbo.xml", (tmp_path / "mbo.xml").read_bytes(), "text/xml")},
        )
        assert taken.status_code == 303, taken.text
        page = client.get(taken.headers["location"])
        assert re.search(r"<dt>Verwerkt</dt><dd>3</dd>", page.text)
        assert api.events() == before + 3


def test_results_are_found_by_diploma_number_and_paged_newest_first(api: RunningApi) -> None:
    """The new store query on SQLite and PostgreSQL: bounded pages, an institution's own only."""
    with api.client() as ours, api.client("30XX") as theirs:
        mine = [
            ours.post("/v1/results", json=registration(diploma_number=f"N-{i}")).json()["result_id"]
            for i in range(5)
        ]
        theirs.post(
            "/v1/results", json=registration(institution="30XX", branch="30XX01", diploma_number="N-1")
        )
    store = api.api.registrar.store
    first = store.results_page("25BE", limit=2)
    assert [r.result_id for r in first] == mine[::-1][:2]
    second = store.results_page("25BE", before=first[-1].result_id, limit=2)
    assert [r.result_id for r in second] == mine[::-1][2:4]
    [found] = store.results_page("25BE", diploma_number="N-1")
    assert found.result_id == mine[1] and found.status == "registered"
    with logged_in(api) as (client, _csrf):
        page = client.get("/loket/resultaten", params={"diplomavolgnummer": "N-3"})
        assert page.status_code == 200 and f"/loket/resultaten/{mine[3]}" in page.text
        assert all(f"/loket/resultaten/{other}" not in page.text for other in mine if other != mine[3])
        assert "******333" in page.text and "111222333" not in page.text
        assert '<time datetime="2026-07-01">1 juli 2026</time>' in page.text  # as the result page says it
        assert "<td>2026-07-01" not in page.text
        assert 'href="/loket/resultaten?diplomavolgnummer=N-3&amp;lang=en" lang="en">English' in page.text
        everything = client.get("/loket/resultaten")
        assert all(f"/loket/resultaten/{r}" in everything.text for r in mine)
        later = client.get("/loket/resultaten", params={"voor": mine[2], "lang": "en"})
        assert f'href="/loket/resultaten?voor={mine[2]}&amp;lang=nl" lang="nl">Nederlands' in later.text
        assert '<time datetime="2026-07-01">1 July 2026</time>' in later.text
        client.get("/loket", params={"lang": "nl"})


def test_a_field_with_several_errors_has_one_error_container_that_its_control_is_described_by() -> None:
    """The form's fields (the macro's and the sector select): every message of a field in one
    element with a unique id, which aria-describedby names (the rules give one error per field
    today, the API's problem list allows more)."""
    page = Page("nl", Session("25BE", "0" * 64, "c" * 64), "/loket/registreren")
    errors = {"bsn": ["Eerste melding.", "Tweede melding."], "sector": ["Kies een sector.", "Nog een."]}
    html = environment().get_template("register.html").render(
        css="", page=page, tr=page.tr, lang="nl", sectors=SECTORS, fields=FIELDS, values={}, errors=errors,
        general=[], programme=None)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert field_errors(html) == {"bsn": "Eerste melding. | Tweede melding.",
                                  "sector": "Kies een sector. | Nog een."}
    for name in ("bsn", "sector"):
        assert re.search(rf'id="{name}"[^>]*aria-describedby="{name}-hint {name}-error"', html, re.S), name


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def receipts(settings: Settings, result_id: str, event_id: str) -> None:
    """CIBG and MijnOverheid received the result, and the student downloaded an extract of it."""
    bootstrap = settings.kafka_bootstrap
    assert bootstrap
    codec = Codec()
    producer = kafka.producer(bootstrap)
    moment = datetime(2026, 7, 3, 10, 0, tzinfo=UTC)
    for subscription in ("cibg-big", "mijnoverheid"):
        producer.send(
            settings.topic(DELIVERIES_TOPIC),
            key=result_id.encode(),
            value=codec.encode(
                "DeliveryReceipt",
                {
                    "delivery_id": f"{subscription}:{event_id}:DELIVERY",
                    "subscription": subscription,
                    "kind": "DELIVERY",
                    "event_id": event_id,
                    "result_id": result_id,
                    "institution": "25BE",
                    "delivered_at": moment,
                },
            ),
        )
    producer.send(
        settings.topic(EXTRACTS_TOPIC),
        key=result_id.encode(),
        value=codec.encode(
            "ExtractIssued",
            {
                "extract_id": "X-1",
                "result_id": result_id,
                "event_id": event_id,
                "institution": "25BE",
                "issued_at": datetime(2026, 7, 4, 9, 0, tzinfo=UTC),
            },
        ),
    )
    producer.flush()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_deletion_shows_the_chain_impact_needs_a_second_confirmation_and_ends_deleted(
    api: RunningApi, settings: Settings
) -> None:
    assert settings.kafka_bootstrap
    kafka.ensure_topics(settings, settings.kafka_bootstrap, [DELIVERIES_TOPIC, EXTRACTS_TOPIC])
    with api.client() as rest:
        delivered = rest.post("/v1/results", json=registration(diploma_number="DEL-1")).json()
        quiet = rest.post("/v1/results", json=registration(diploma_number="DEL-2")).json()["result_id"]
    result_id = delivered["result_id"]
    stop = threading.Event()
    reader = ImpactReader(api.api.impact_store, settings, settings.kafka_bootstrap)
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        receipts(settings, result_id, delivered["event_id"])
        with logged_in(api) as (client, csrf):
            start_page = f"/loket/resultaten/{result_id}/verwijderen"
            wait_for(lambda: "een uittreksel gedownload" in client.get(start_page).text)
            shown = client.get(start_page).text
            assert "CIBG heeft dit resultaat op 3 juli 2026 ontvangen en kan het niet terugdraaien." in shown
            assert "MijnOverheid toont het al" in shown
            assert "De student heeft op 4 juli 2026 een uittreksel gedownload" in shown
            assert '<label for="reden">reden</label>' in shown and "Administratieve fout" in shown
            url = f"/loket/resultaten/{result_id}/verwijderen"

            missing = client.post(url, data={"csrf": csrf, "stap": "reden", "reden": ""})
            assert missing.status_code == 422 and set(field_errors(missing.text)) == {"reden"}
            unexplained = client.post(url, data={"csrf": csrf, "stap": "reden", "reden": "OTHER"})
            assert set(field_errors(unexplained.text)) == {"toelichting"}

            avoidable = {"csrf": csrf, "reden": "EXTRA_COURSES_OR_GRADE_IMPROVEMENT", "toelichting": ""}
            confirm = client.post(url, data={**avoidable, "stap": "reden"})
            assert (
                confirm.status_code == 200
                and "Vermijd het verwijderen van onderwijsresultaten" in confirm.text
            )
            assert 'name="bevestiging"' in confirm.text and "Definitief verwijderen" in confirm.text
            once = client.post(url, data={**avoidable, "stap": "bevestigen"})  # the checkbox left empty
            assert once.status_code == 422 and "bevestiging" in field_errors(once.text)
            with api.client() as rest:
                assert rest.get(f"/v1/results/{result_id}").json()["status"] == "registered"

            done = client.post(url, data={**avoidable, "stap": "bevestigen", "bevestiging": "ja"})
            assert done.status_code == 303
            after = client.get(done.headers["location"])
            assert "Het resultaat is verwijderd." in after.text and 'class="state-deleted"' in after.text
            assert "De student wil extra vakken volgen of cijfers verhogen" in after.text
            assert client.get(start_page).status_code == 409  # nothing more to delete

            # a result nobody has: one confirmation, no checkbox
            plain = f"/loket/resultaten/{quiet}/verwijderen"
            assert "Nog niemand heeft dit resultaat ontvangen" in client.get(plain).text
            asked = client.post(plain, data={"csrf": csrf, "stap": "reden", "reden": "ADMINISTRATIVE_ERROR"})
            assert 'name="bevestiging"' not in asked.text and "Vermijd" not in asked.text
            gone = client.post(
                plain, data={"csrf": csrf, "stap": "bevestigen", "reden": "ADMINISTRATIVE_ERROR"}
            )
            assert gone.status_code == 303
        with api.client() as rest:
            for deleted in (result_id, quiet):
                answer = rest.get(f"/v1/results/{deleted}").json()
                assert answer["status"] == "deleted"
            assert answer["events"][-1]["deletion"]["reason"] == "ADMINISTRATIVE_ERROR"
    finally:
        stop.set()
        thread.join(30)


def test_the_reports_page_lists_each_period_with_its_dates_and_serves_the_files(
    reported: tuple[RunningApi, object],  # noqa: F811 - the fixture imported above
) -> None:
    api, _year = reported
    with logged_in(api) as (client, _csrf):
        page = client.get("/loket/rapportages")
        assert page.status_code == 200
        assert re.search(
            r"<th scope=\"row\">2025-05</th><td>1 november 2024</td><td>30 april 2025</td>", page.text
        )
        html = client.get("/loket/rapportages/2025-05.html")
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in html.headers["content-security-policy"]
        assert html.headers["cache-control"] == "no-store"
        as_csv = client.get("/loket/rapportages/2025-05.csv")
        assert as_csv.headers["content-disposition"] == 'attachment; filename="25BE-2025-05.csv"'
        with api.client() as rest:
            assert (
                client.get("/loket/rapportages/2025-05.json").json() == rest.get("/v1/reports/2025-05").json()
            )
        assert client.get("/loket/rapportages/2024-11.json").status_code == 404
        assert client.get("/loket/rapportages/2025-05.exe").status_code == 404
        english = client.get("/loket/rapportages?lang=en")
        assert "1 November 2024" in english.text and "30 April 2025" in english.text


def test_a_database_made_before_the_diploma_index_is_indexed_when_the_store_opens(db_url: str) -> None:
    """Results registered before registrar_diplomas existed are found by diploma number too."""
    store = EventStore(db_url)
    registrar = Registrar(store, Catalogue.load(CATALOGUE))
    registrar.add_institution("25BE", "Instelling 25BE", ["HO"])
    raw = {
        "bsn": "111222333",
        "institution": "25BE",
        "branch": "25BE01",
        "sector": "HO",
        "programme_code": "56551",
        "diploma_date": "2026-07-01",
    }
    ids = [registrar.register({**raw, "diploma_number": f"OLD-{i}"}, "25BE").result_id for i in range(3)]
    with store.engine.begin() as conn:
        conn.execute(sql_delete(diplomas))  # as a database from before the table
        conn.execute(sql_delete(meta).where(meta.c.key == DIPLOMAS_INDEXED))
    assert store.results_page("25BE") == []
    store.dispose()
    reopened = EventStore(db_url)
    try:
        assert [r.result_id for r in reopened.results_page("25BE")] == ids[::-1]
        assert [r.result_id for r in reopened.results_page("25BE", diploma_number="OLD-1")] == [ids[1]]
        # killed after the first page of a fill: the next start resumes from the recorded position
        first_position = reopened.events_after(0, 1)[0].position
        with reopened.engine.begin() as conn:
            conn.execute(sql_delete(diplomas).where(diplomas.c.result_id != ids[0]))
            conn.execute(update(meta).where(meta.c.key == DIPLOMAS_INDEXED)
                         .values(value=str(first_position).encode()))
    finally:
        reopened.dispose()
    resumed = EventStore(db_url)
    try:
        assert [r.result_id for r in resumed.results_page("25BE")] == ids[::-1]
    finally:
        resumed.dispose()
