"""The log's public face over HTTP: the newest signed checkpoint, its key, and proofs.

    router = log_router(event_store)
    realms = log_realms()  # for the gate: /v1/log/ takes no token

Nothing here needs a token or carries personal data: a checkpoint is the tree's size and root,
a proof is hashes. The checkpoint and key are answered `Cache-Control: no-cache` (a cache may
keep them but must ask again: a new checkpoint comes every few seconds while events arrive).
Reads are a few stored rows each: on the event loop for SQLite, on the blocking pool otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from services.kernel.blocking import in_thread
from services.kernel.codes import problem
from services.kernel.gate import Realm
from services.registrar.api import ApiError
from services.registrar.api_models import ErrorsOut
from services.registrar.store import EventStore
from services.registrar.transparency import proofs
from services.registrar.transparency.tree import CheckpointLog, kept_verifier

T = TypeVar("T")
NO_CACHE = {"cache-control": "no-cache"}
TEXT = "text/plain; charset=utf-8"
_NUMBER = re.compile(r"-?[0-9]{1,18}")
_REFUSED: dict[int | str, dict[str, Any]] = {400: {"model": ErrorsOut}, 503: {"model": ErrorsOut}}
_HASHES = "RFC 9162 hashes, each 32 bytes in standard base64, in the RFC's order."


class InclusionOut(BaseModel):
    leaf_index: int = Field(description="The event's position minus 1 (RFC 9162 counts leaves from 0).")
    tree_size: int
    hashes: list[str] = Field(description=_HASHES)


class ConsistencyOut(BaseModel):
    first: int
    second: int
    hashes: list[str] = Field(description=_HASHES + " Empty when first equals second.")


Position = Annotated[str | None, Query(description="The event's position in the log, from 1 (required).")]
TreeSize = Annotated[str | None, Query(description="The tree size; left out: the newest checkpoint's.")]
First = Annotated[str | None, Query(description="The older tree size, from 1 (required).")]
Second = Annotated[str | None, Query(description="The newer tree size; left out: the newest checkpoint's.")]


def log_realms() -> list[Realm]:
    """The gate's realm: everything under /v1/log/ is public."""
    return [Realm("/v1/log/", "public", None)]


def _number(value: str | None, field: str, required: bool) -> int | None:
    if value is None and not required:
        return None
    if value is None or not _NUMBER.fullmatch(value):
        raise ApiError(400, [problem("LOG_NUMBER_INVALID", field)])
    return int(value)


def log_router(store: EventStore) -> APIRouter:
    router = APIRouter(tags=["log"])
    checkpoints = CheckpointLog(store)

    # SQLite in WAL mode: a reader never waits for a writer, and a proof is well under a
    # millisecond of local reads, so it runs on the event loop (the hop to a thread cost ~1 ms a
    # proof, measured in process: p50 2.65 -> 1.58 ms). PostgreSQL's reads cross a network that
    # may be slow or away: they stay on the blocking pool, so the API keeps answering.
    local = store.engine.dialect.name == "sqlite"

    async def read(function: Callable[..., T], *args: Any) -> T:
        return function(*args) if local else await in_thread("log", function, *args)

    async def answer(compute: Callable[[], dict[str, Any]]) -> Response:
        try:
            return JSONResponse(await read(compute), headers=NO_CACHE)
        except proofs.ProofRefused as exc:
            raise ApiError(exc.status, [exc.problem]) from None

    @router.get("/v1/log/checkpoint", response_class=PlainTextResponse, responses={503: {"model": ErrorsOut}})
    async def checkpoint() -> Response:
        """The newest signed checkpoint: a C2SP tlog-checkpoint in a signed note (Ed25519)."""
        latest = await read(checkpoints.latest)
        if latest is None:
            raise ApiError(503, [problem("LOG_NO_CHECKPOINT")])
        return Response(latest.note, media_type=TEXT, headers=NO_CACHE)

    @router.get("/v1/log/key", response_class=PlainTextResponse, responses={503: {"model": ErrorsOut}})
    async def key() -> Response:
        """The checkpoints' verifier key, `<name>+<key id hex>+<base64(0x01 || public key)>`."""
        text = await read(kept_verifier, store)
        if text is None:
            raise ApiError(503, [problem("LOG_KEY_UNKNOWN")])
        return Response(text, media_type=TEXT, headers=NO_CACHE)

    @router.get("/v1/log/proofs/inclusion", response_model=InclusionOut, responses=_REFUSED)
    async def inclusion(position: Position = None, tree_size: TreeSize = None) -> Response:
        """RFC 9162 §2.1.3 audit path of the event at `position` in the tree of `tree_size` leaves
        (left out: the newest checkpoint's size). 400 for a size beyond the newest checkpoint."""
        wanted = _number(position, "position", required=True) or 0
        size = _number(tree_size, "tree_size", required=False)
        return await answer(lambda: proofs.inclusion(store, wanted, size))

    @router.get("/v1/log/proofs/consistency", response_model=ConsistencyOut, responses=_REFUSED)
    async def consistency(first: First = None, second: Second = None) -> Response:
        """RFC 9162 §2.1.4 proof that the tree of `second` leaves (left out: the newest
        checkpoint's size) extends the tree of `first`; empty when they are equal."""
        older = _number(first, "first", required=True) or 0
        newer = _number(second, "second", required=False)
        return await answer(lambda: proofs.consistency(store, older, newer))

    return router
