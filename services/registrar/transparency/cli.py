"""`rod log`: the log's checkpoints, proofs, verification and rebuild, from the registrar's store.

    rod log checkpoint                      the newest signed checkpoint, as GET /v1/log/checkpoint
    rod log prove POSITION [--tree-size N]  an inclusion proof (--json: as the HTTP answer)
    rod log consistency FIRST [SECOND]      a consistency proof (--json: as the HTTP answer)
    rod log verify [--key KEY]              every checkpoint against its key, the next one and the store
    rod log rebuild                         the tree again from the store's events

Results go to stdout, logs to stderr. Unlike the HTTP API, the proofs may use any size up to the
stored tree (an operator's check), not only signed ones; a size left out is the newest checkpoint's
(without one, the stored tree's).

The key `rod log verify` (and `rod verify`) checks the checkpoints with: `--key` (verifier key
text or a file holding it), else this installation's signing key (ROD_LOG_SIGNING_KEY or the one
under `<data dir>/log/`; never made here), else the verifier key the log component recorded in
the database, with a warning (whoever can write the database could have replaced that one too).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import click

from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.store import EventStore
from services.registrar.transparency import proofs
from services.registrar.transparency.checkpoint import NoteError, Signer, Verifier, parse_verifier
from services.registrar.transparency.keys import KEY_FILE, load_identity, origin
from services.registrar.transparency.tree import CheckpointLog, StoredTree, TreeError, kept_verifier
from services.registrar.transparency.verify import LogVerdict, verify_log

log = get_logger("registrar.log_cli")


def _store(ctx: click.Context) -> EventStore:
    settings: Settings = ctx.obj["settings"]
    return EventStore(settings.database_urls["registrar"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- verification (also `rod verify`) -------------------------------------------------------------


def log_verifier(settings: Settings, store: EventStore, key: str | None = None) -> Verifier | None:
    """The key to check the checkpoints with (see the module), or None when there is none."""
    if key:
        text = Path(key).read_text().strip() if Path(key).is_file() else key.strip()
        try:
            return parse_verifier(text)
        except NoteError as exc:
            raise click.BadParameter(str(exc), param_hint="--key") from None
    kept = kept_verifier(store)
    configured = (os.environ.get("ROD_LOG_SIGNING_KEY") or "").strip()
    if configured or (settings.data_dir / "log" / KEY_FILE).is_file():
        verifier = load_identity(settings).signer.verifier
        if kept is not None and kept != verifier.text():
            log.warning("log_key_differs", signing_key=verifier.text(), recorded=kept,
                        note="the log component ran with another key; checking with the signing key")
        return verifier
    if kept is not None:
        log.warning("log_checked_with_recorded_key", verifier=kept,
                    note="no signing key here: checking with the key recorded in the database; "
                         "give --key for a check that does not trust the database")
        return parse_verifier(kept)
    return None


def check_log(settings: Settings, store: EventStore, key: str | None = None) -> LogVerdict:
    """verify_log with the key `log_verifier` finds; KEY_MISSING when checkpoints exist but no key."""
    verifier = log_verifier(settings, store, key)
    if verifier is None:
        count = CheckpointLog(store).count()
        if count:
            return LogVerdict(False, count, 0, "KEY_MISSING",
                              "no key to check the checkpoints with: set ROD_LOG_SIGNING_KEY or give --key")
        verifier = Signer.generate(origin()).verifier  # no checkpoint to check: any key will do
    try:
        return verify_log(store, verifier, origin())
    except TreeError as exc:
        return LogVerdict(False, 0, 0, "TREE_INCOMPLETE", str(exc))


def verdict_line(verdict: LogVerdict) -> str:
    """One line: `log intact: ...` or `log BROKEN: CODE at checkpoint N, position P: reason`."""
    if verdict.ok:
        return f"log intact: {verdict.checkpoints} checkpoints, {verdict.events} events verified"
    where = [f"checkpoint {verdict.checkpoint}"] if verdict.checkpoint is not None else []
    where += [f"position {verdict.position}"] if verdict.position is not None else []
    at = f" at {', '.join(where)}" if where else ""
    return f"log BROKEN: {verdict.code}{at}: {verdict.reason}"


# --- the commands ---------------------------------------------------------------------------------


@click.group("log")
def log_group() -> None:
    """The log's signed checkpoints and proofs (RFC 9162, C2SP tlog-checkpoint)."""


@log_group.command("checkpoint")
@click.pass_context
def checkpoint(ctx: click.Context) -> None:
    """Print the newest signed checkpoint (the note as stored); exit 1 when there is none yet."""
    store = _store(ctx)
    try:
        latest = CheckpointLog(store).latest()
    finally:
        store.dispose()
    if latest is None:
        click.echo("LOG_NO_CHECKPOINT: no checkpoint has been signed yet (does `rod up` run the log "
                   "component?)", err=True)
        sys.exit(1)
    click.echo(latest.note, nl=False)


def _print_proof(answer: dict, as_json: bool, head: str) -> None:
    if as_json:
        click.echo(json.dumps(answer))
        return
    click.echo(head)
    for value in answer["hashes"]:
        click.echo(value)


def _prove(ctx: click.Context, make) -> dict:  # noqa: ANN001 - a proof function of the store
    store = _store(ctx)
    try:
        return make(store)
    except proofs.ProofRefused as exc:
        click.echo(f"{exc.problem.code}: {exc.problem.text('en')}", err=True)
    except TreeError as exc:
        click.echo(f"TREE_SIZE_BEYOND_TREE: {exc}", err=True)
    finally:
        store.dispose()
    sys.exit(1)


@log_group.command("prove")
@click.argument("position", type=int)
@click.option("--tree-size", type=int, default=None,
              help="The tree size to prove against (default: the newest checkpoint's).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer of GET /v1/log/proofs/inclusion.")
@click.pass_context
def prove(ctx: click.Context, position: int, tree_size: int | None, as_json: bool) -> None:
    """Inclusion proof of the event at POSITION: the audit path, nearest the leaf first."""
    answer = _prove(ctx, lambda store: proofs.inclusion(store, position, tree_size, signed_only=False))
    _print_proof(answer, as_json, f"inclusion of position {position} (leaf index {answer['leaf_index']}) "
                                  f"in tree size {answer['tree_size']}: {len(answer['hashes'])} hashes")


@log_group.command("consistency")
@click.argument("first", type=int)
@click.argument("second", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the answer of GET /v1/log/proofs/consistency.")
@click.pass_context
def consistency(ctx: click.Context, first: int, second: int | None, as_json: bool) -> None:
    """Consistency proof that tree size SECOND (default: the newest checkpoint's) extends FIRST."""
    answer = _prove(ctx, lambda store: proofs.consistency(store, first, second, signed_only=False))
    _print_proof(answer, as_json, f"consistency of tree size {first} with tree size {answer['second']}: "
                                  f"{len(answer['hashes'])} hashes")


@log_group.command("verify")
@click.option("--key", default=None,
              help="The verifier key text (name+keyid+key), or a file holding it "
                   "(default: this installation's signing key).")
@click.pass_context
def verify(ctx: click.Context, key: str | None) -> None:
    """Every checkpoint's signature, each consistent with the next, the roots equal to the store's
    events; exit 1 naming the first checkpoint or position that fails."""
    store = _store(ctx)
    try:
        verdict = check_log(ctx.obj["settings"], store, key)
    finally:
        store.dispose()
    click.echo(verdict_line(verdict))
    if not verdict.ok:
        sys.exit(1)


@log_group.command("rebuild")
@click.pass_context
def rebuild(ctx: click.Context) -> None:
    """Build the tree again from the store's events; exit 1 when the old tree's root differs."""
    store = _store(ctx)
    tree = StoredTree(store)
    try:
        old_size = tree.size()
        try:
            old_root: bytes | None = tree.root(old_size)
        except TreeError:
            old_root = None  # nodes missing: nothing to compare
        size, root = tree.rebuild()
        again = tree.root(old_size) if old_size <= size else None
    finally:
        store.dispose()
    click.echo(f"rebuilt the log tree: size {size}, root {_b64(root)}")
    if old_root is not None and again == old_root:
        click.echo(f"the old tree (size {old_size}) had the same root")
        return
    old = _b64(old_root) if old_root is not None else "unreadable (nodes missing)"
    now = _b64(again) if again is not None else "none (the store holds fewer events)"
    click.echo(f"the old tree (size {old_size}) DIFFERS: its root was {old}, rebuilt it is {now}; "
               "run `rod log verify`")
    sys.exit(1)


COMMANDS = [log_group]
