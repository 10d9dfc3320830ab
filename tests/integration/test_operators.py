"""Operator identity and the record of what operators did (rod.operations.v1), through the CLI."""

from __future__ import annotations

from sqlalchemy import select

from services.kernel.codec import Codec
from services.kernel.settings import Settings
from services.operations.actions import TOPIC, ActionLog
from services.operations.identity import operator_for
from services.operations.store import OperationsStore, operators
from tests.support import read_topic, run_rod, settings_env


def _actions(settings: Settings, at_least: int) -> list[dict]:
    records = read_topic(settings.kafka_bootstrap or "", settings.topic(TOPIC), at_least)
    return [Codec().decode(r.value)[1] for r in records]


def test_operator_add_prints_a_token_that_is_kept_only_as_a_hash(settings: Settings) -> None:
    env = settings_env(settings)
    added = run_rod("operator", "add", "alice", env=env, check=True)
    token = added.stdout.strip().splitlines()[-1]
    store = OperationsStore(settings.database_urls["operations"])
    try:
        assert operator_for(store, token) == "alice"
        assert operator_for(store, token + "x") is None
        with store.reading() as conn:
            stored = [tuple(row) for row in conn.execute(select(operators))]
        assert token not in repr(stored)
    finally:
        store.dispose()
    again = run_rod("operator", "add", "alice", env=env)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_every_cli_action_is_on_rod_operations_with_who_what_and_why(settings: Settings) -> None:
    env = settings_env(settings)
    run_rod("subscription", "pause", "cibg-big", "--reason", "CIBG maintenance", "--as", "bob",
            env=env, check=True)
    run_rod("subscription", "resume", "cibg-big", "--reason", "maintenance over", env=env, check=True)
    actions = _actions(settings, 2)
    assert [(a["operator"], a["via"], a["action"], a["target"], a["reason"]) for a in actions][:1] == [
        ("bob", "cli", "subscription-pause", "cibg-big", "CIBG maintenance"),
    ]
    assert actions[1]["action"] == "subscription-resume" and actions[1]["operator"]  # the OS user
    assert len({a["action_id"] for a in actions}) == 2


def test_an_action_taken_while_the_broker_is_away_is_published_later(settings: Settings) -> None:
    env = settings_env(settings)
    del env["ROD_KAFKA_BOOTSTRAP"]  # no broker known to this CLI: the action waits in the outbox
    run_rod("subscription", "pause", "mijnoverheid", "--reason", "night run", "--as", "carol",
            env=env, check=True)
    store = OperationsStore(settings.database_urls["operations"])
    try:
        # what `rod up` does when it starts
        assert ActionLog(store, settings, settings.kafka_bootstrap).publish_pending() == 1
        assert ActionLog(store, settings, settings.kafka_bootstrap).publish_pending() == 0
    finally:
        store.dispose()
    assert [(a["operator"], a["target"]) for a in _actions(settings, 1)] == [("carol", "mijnoverheid")]
