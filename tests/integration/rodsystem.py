"""A whole `rod up` as a subprocess for the tests that need every component (relay, distributor,
impact reader, extract service, audit) on the session broker and SQLite: an institution (25BE) and a
portal (mijnduo), clients, and the person-number scan of what they were answered."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.kernel.broker import free_port
from services.kernel.settings import Settings
from tests.integration.distributor_support import CATALOGUE
from tests.support import LOG_SINK, PERSON_NUMBERS, run_rod, settings_env


def leaks(text: str | bytes) -> int:
    """How many of the test person numbers `text` holds in full (a count: never the numbers)."""
    data = text.encode() if isinstance(text, str) else text
    return sum(n.encode() in data for n in PERSON_NUMBERS)


@dataclass
class System:
    """One `rod up` with every component, an institution (25BE) and a portal (mijnduo)."""

    url: str
    env: dict[str, str]
    settings: Settings
    institution_token: str
    portal_token: str
    answers: list[httpx.Response] = field(default_factory=list)  # scanned for person numbers
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, *, scanned: bool = True,
               local_address: str | None = None) -> httpx.Client:
        """A client with `token`; its answers join the person-number scan when `scanned`.

        `local_address` (another loopback address) makes it a different client to the
        verification's per-client limit, so polling does not eat the budget of the other checks.
        """
        hooks = {"response": [self._keep]} if scanned else {}
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        made = httpx.Client(base_url=self.url, timeout=60, event_hooks=hooks, transport=transport,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
        self.clients.append(made)
        return made

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append(response)

    def institution(self) -> httpx.Client:
        return self.client(self.institution_token, scanned=False)  # the institution sees its own data

    def portal(self) -> httpx.Client:
        return self.client(self.portal_token)

    def register(self, *bodies: dict[str, Any]) -> list[str]:
        with self.institution() as institution:
            ids = []
            for body in bodies:
                answer = institution.post("/v1/results", json=body)
                assert answer.status_code == 201, answer.status_code
                ids.append(answer.json()["result_id"])
        return ids

    def standing(self, bsn: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        """The lookup's results once `count` stand (the feed reaches the extract service)."""
        deadline = time.monotonic() + timeout
        with self.portal() as portal:
            while True:
                answer = portal.post("/v1/extracts/lookup", json={"person": {"bsn": bsn}})
                assert answer.status_code == 200, answer.text
                results = answer.json()["results"]
                if len(results) >= count:
                    return results
                assert time.monotonic() < deadline, f"{len(results)} of {count} results reached extracts"
                time.sleep(0.3)

    def delete(self, result_id: str, *, dry_run: bool = False) -> httpx.Response:
        body = {"reason": "ADMINISTRATIVE_ERROR", "explanation": "Geregistreerd bij de verkeerde opleiding"}
        with self.client(self.institution_token) as institution:
            return institution.post(f"/v1/results/{result_id}/deletions",
                                    params={"dry_run": "true"} if dry_run else None, json=body)

    def verify(self, *files: Path | tuple[Path, str]) -> list[subprocess.CompletedProcess[str]]:
        """`rod extract verify FILE --url URL` for each file (this system's URL unless given), at once."""
        pairs = [f if isinstance(f, tuple) else (f, self.url) for f in files]
        commands = [["extract", "verify", str(pdf), "--url", url] for pdf, url in pairs]
        done = in_parallel(*commands, env=self.env)
        printed = sum(leaks(d.stdout + d.stderr) for d in done)
        assert printed == 0, "rod extract verify printed a full person number"
        return done


@contextmanager
def rod_up_system(broker: str, root: Path) -> Iterator[System]:
    """`rod up` as a subprocess on the session broker (its own port, data dir under `root`, SQLite file
    and topic prefix); stopped with Ctrl-C afterwards, which must end it cleanly. No answer a scanned
    client received may hold a full person number."""
    settings = Settings.from_env({"ROD_DATA_DIR": str(root / "var"), "ROD_KAFKA_BOOTSTRAP": broker,
                                  "ROD_DATABASE_URL": f"sqlite:///{root / 'rod.db'}",
                                  "ROD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}."})
    env = {**settings_env(settings), "ROD_CATALOGUE": str(CATALOGUE)}
    institution, portal = (done.stdout.strip().splitlines()[-1] for done in in_parallel(
        ["institution", "add", "25BE", "--name", "Universiteit Test", "--sectors", "HO"],
        ["portal", "add", "mijnduo"], env=env, check=True))
    assert portal.startswith("rodp_") and portal != institution
    port = free_port()
    rod = Path(sys.executable).with_name("rod")
    # output to files, not pipes: a chatty process never blocks on a full pipe
    out, err = (root / "rod-up.out").open("w+"), (root / "rod-up.err").open("w+")
    proc = subprocess.Popen([str(rod), "up", "--port", str(port)], env=env, stdout=out, stderr=err, text=True)
    made = System(f"http://127.0.0.1:{port}", env, settings, institution, portal)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"rod up ended with {proc.returncode}"
            try:
                if httpx.get(f"{made.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "rod up did not answer on /healthz within 60 s"
            time.sleep(0.3)
        yield made
    finally:
        for client in made.clients:
            client.close()
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        printed, logged = out.read(), err.read()
        out.close()
        err.close()
        LOG_SINK.write(printed + logged)
    assert proc.returncode == 0, logged[-2000:]
    assert "stopped" in printed
    leaked = sum(leaks(a.content) + leaks("\n".join(f"{k}: {v}" for k, v in a.headers.items()))
                 for a in made.answers)
    assert leaked == 0, f"{leaked} full person numbers in the answers of the extract routes"


def in_parallel(*commands: list[str], env: dict[str, str], check: bool = False
                ) -> list[subprocess.CompletedProcess[str]]:
    """Several `rod` commands at once (each starts a Python: together they take the time of one)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_rod(*args, env=env, check=check, timeout=120), commands))
