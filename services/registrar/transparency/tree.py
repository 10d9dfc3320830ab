"""The log's Merkle tree kept in the registrar's tables, and its signed checkpoints.

The tree builder appends after the events are stored, never inside the registrar's write
transaction: it reads the events above the tree's size, hashes them into the subtrees they
complete (about two rows per event, O(log n) reads of the tree's right edge per batch) and
writes those rows with the new size in one transaction. A builder killed at any point leaves
the old tree; two builders at once cannot both move the size (the update is guarded by the
size they started from). Proofs read only the O(log n) stored nodes they need, in one query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import TextClause, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.kernel.clock import now_millis, utc
from services.kernel.database import writing
from services.kernel.logging import get_logger
from services.registrar.store import EventStore, events, log_checkpoints, log_nodes, log_tree, meta
from services.registrar.transparency import merkle
from services.registrar.transparency.checkpoint import Checkpoint, Signer, sign_checkpoint

log = get_logger("registrar.tree")

BATCH = 5000
VERIFIER_KEY = "log_verifier"  # registrar_meta: the verifier key text, for readers without the private key
T = TypeVar("T")


class TreeError(Exception):
    """The stored tree cannot answer (a size beyond it, a missing node, events out of order)."""


class _Moved(Exception):
    """Another builder moved the tree first."""


def right_edge(size: int) -> list[tuple[int, int]]:
    """The complete subtrees [0, size) splits into, largest first: what appending needs to read."""
    levels = range(size.bit_length() - 1, -1, -1)
    return [(level, (size >> level) - 1) for level in levels if size >> level & 1]


@lru_cache(maxsize=256)
def _nodes_query(count: int) -> TextClause:
    """SELECT of `count` nodes by (level, idx): an OR of equalities, not `(level, idx) IN (VALUES
    ...)`, which SQLite answers by scanning the whole table (50 ms a proof at 200,000 leaves)
    where it looks each pair up in the primary key for this form; PostgreSQL does the same for
    both. Text, made once per count: building the expression took longer than running it."""
    pairs = " OR ".join(f"(level = :l{n} AND idx = :i{n})" for n in range(count))
    return text(f"SELECT level, idx, hash FROM {log_nodes.name} WHERE {pairs}")


def _read_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    params: dict[str, int] = {}
    for n, (level, idx) in enumerate(wanted):
        params[f"l{n}"], params[f"i{n}"] = level, idx
    rows = conn.execute(_nodes_query(len(wanted)), params)
    return {(level, idx): bytes(value) for level, idx, value in rows}


class StoredTree:
    """The registrar's log tree: append (the builder), roots and proofs (everyone else)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.engine = store.engine

    def size(self) -> int:
        with self.engine.connect() as conn:
            return self._size(conn)

    @staticmethod
    def _size(conn: Connection) -> int:
        return conn.execute(select(log_tree.c.size).where(log_tree.c.id == 1)).scalar_one()

    # --- building ------------------------------------------------------------------------

    def append_once(self, limit: int = BATCH) -> int:
        """Add the next stored events to the tree; returns how many (0: caught up or lost a race)."""
        with self.engine.connect() as conn:
            size = self._size(conn)
            rows = self._events(conn, size, limit)
            if not rows:
                return 0
            edge = _read_nodes(conn, right_edge(size))
        new = self._extend(size, rows, edge)
        try:
            with writing(self.engine) as conn:
                moved = conn.execute(
                    update(log_tree).where(log_tree.c.id == 1, log_tree.c.size == size)
                    .values(size=size + len(rows))
                ).rowcount
                if moved != 1:
                    raise _Moved
                _insert_nodes(conn, new)
        except (_Moved, IntegrityError):
            return 0
        return len(rows)

    def catch_up(self, limit: int = BATCH) -> int:
        """Append until the tree holds every stored event; returns how many were added."""
        added = 0
        while n := self.append_once(limit):
            added += n
        return added

    def rebuild(self) -> tuple[int, bytes]:
        """Build the tree again from the store's events in one transaction (old tree or new one,
        never a mix); returns (size, root)."""
        with writing(self.engine) as conn:
            conn.execute(delete(log_nodes))
            size, edge = 0, {}
            while rows := self._events(conn, size, BATCH):
                new = self._extend(size, rows, edge)
                _insert_nodes(conn, new)
                size += len(rows)
                keep = set(right_edge(size))
                edge = {key: value for key, value in {**edge, **new}.items() if key in keep}
            conn.execute(update(log_tree).where(log_tree.c.id == 1).values(size=size))
        log.info("log_tree_rebuilt", tree_size=size)
        return size, self.root(size)

    @staticmethod
    def _events(conn: Connection, size: int, limit: int) -> list:
        rows = conn.execute(
            select(events.c.position, events.c.hash).where(events.c.position > size)
            .order_by(events.c.position).limit(limit)
        ).all()
        if rows and rows[-1].position != size + len(rows):
            raise TreeError(f"events after position {size} are not contiguous")
        return rows

    @staticmethod
    def _extend(size: int, rows: list, edge: dict[tuple[int, int], bytes]) -> dict[tuple[int, int], bytes]:
        def known(level: int, index: int) -> bytes:
            try:
                return edge[(level, index)]
            except KeyError:
                raise TreeError(f"the stored tree lacks node ({level}, {index})") from None

        return merkle.extend(size, (merkle.leaf_hash(bytes(row.hash)) for row in rows), known)

    # --- answering -----------------------------------------------------------------------

    def _answer(self, compute: Callable[[merkle.SubtreeHash], T], within: int) -> T:
        """Run `compute` over stored nodes of a tree of at least `within` leaves: first to learn
        which nodes it reads (proofs do not branch on hash values), then once more with those
        nodes read in one query; the size check and the read share one connection."""
        with self.engine.connect() as conn:
            stored = self._size(conn)
            if within > stored:
                raise TreeError(f"tree size {within} is beyond the stored tree ({stored})")
            wanted: list[tuple[int, int]] = []

            def record(level: int, index: int) -> bytes:
                wanted.append((level, index))
                return bytes(merkle.HASH_SIZE)

            compute(record)
            found = _read_nodes(conn, wanted)
        missing = [key for key in wanted if key not in found]
        if missing:
            raise TreeError(f"the stored tree lacks node {missing[0]}")
        return compute(lambda level, index: found[(level, index)])

    def root(self, size: int) -> bytes:
        """MTH of the first `size` leaves."""
        return self._answer(lambda node: merkle.root(node, size), size)

    def leaf(self, index: int) -> bytes:
        """The stored leaf hash of leaf `index` (the event at position index + 1)."""
        return self._answer(lambda node: node(0, index), index + 1)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[0:size]) from stored nodes."""
        return self._answer(lambda node: merkle.inclusion_proof(node, index, size), size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(first, D[0:second]) from stored nodes."""
        return self._answer(lambda node: merkle.consistency_proof(node, first, second), second)

    def leaves(self, after: int = 0, limit: int = BATCH) -> list[tuple[int, bytes]]:
        """Stored leaf hashes (index, hash) from index `after` on, in order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(log_nodes.c.idx, log_nodes.c.hash)
                .where(log_nodes.c.level == 0, log_nodes.c.idx >= after)
                .order_by(log_nodes.c.idx).limit(limit)
            )
            return [(row.idx, bytes(row.hash)) for row in rows]


def _insert_nodes(conn: Connection, nodes: dict[tuple[int, int], bytes]) -> None:
    """Write new nodes in one statement of three arrays on PostgreSQL (2-3x the rate of an
    executemany: catch_up over 100,000 events 9-11k -> 20-27k leaves/s), with the driver's own
    executemany on SQLite (SQLAlchemy's per-row parameter processing of a Core insert cost more
    than SQLite's inserts themselves)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"INSERT INTO {log_nodes.name} (level, idx, hash)"
            " SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::bytea[])",
            ([level for level, _ in nodes], [index for _, index in nodes], list(nodes.values())),
        )
        return
    conn.exec_driver_sql(
        f"INSERT INTO {log_nodes.name} (level, idx, hash) VALUES (?, ?, ?)",
        [(level, index, value) for (level, index), value in nodes.items()],
    )


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str
    created_at: datetime
    partition: int | None
    offset: int | None


class CheckpointLog:
    """Every signed checkpoint, kept in order of tree size; the outbox of rod.checkpoints.v1."""

    def __init__(self, store: EventStore) -> None:
        self.engine = store.engine

    def latest(self) -> StoredCheckpoint | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(log_checkpoints).order_by(log_checkpoints.c.tree_size.desc()).limit(1)
            ).first()
        return _checkpoint(row) if row else None

    def all(self) -> Iterator[StoredCheckpoint]:
        """Every checkpoint, oldest first (read in pages)."""
        after = -1
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(log_checkpoints).where(log_checkpoints.c.tree_size > after)
                                    .order_by(log_checkpoints.c.tree_size).limit(1000)).all()
            yield from (_checkpoint(row) for row in rows)
            if len(rows) < 1000:
                return
            after = rows[-1].tree_size

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(log_checkpoints)).scalar_one()

    def sign_next(self, tree: StoredTree, signer: Signer, origin: str,
                  min_age: float | None = None) -> StoredCheckpoint | None:
        """Sign and keep a checkpoint of the tree as it is now, when it grew since the last one
        (or there is none yet) and the last one is at least `min_age` seconds old; None when
        there is nothing new, it is too soon, or another process signed it."""
        latest = self.latest()
        age = time.time() - latest.created_at.timestamp() if latest is not None else None
        if min_age is not None and age is not None and age < min_age:
            return None
        size = tree.size()
        if latest is not None and latest.tree_size >= size:
            return None
        root_hash = tree.root(size)
        note = sign_checkpoint(Checkpoint(origin, size, root_hash), signer)
        made = StoredCheckpoint(size, root_hash, note, now_millis(), None, None)
        try:
            with writing(self.engine) as conn:
                conn.execute(insert(log_checkpoints).values(
                    tree_size=size, root_hash=root_hash, note=note, created_at=made.created_at))
        except IntegrityError:
            return None
        log.info("log_checkpoint_signed", tree_size=size)
        return made

    def unpublished(self, limit: int = 100) -> list[StoredCheckpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(log_checkpoints).where(log_checkpoints.c.partition.is_(None))
                                .order_by(log_checkpoints.c.tree_size).limit(limit)).all()
        return [_checkpoint(row) for row in rows]

    def mark_published(self, placed: dict[int, tuple[int, int]]) -> None:
        """Record where each checkpoint (by tree size) went: {tree_size: (partition, offset)}."""
        with writing(self.engine) as conn:
            for tree_size, (partition, offset) in placed.items():
                conn.execute(update(log_checkpoints).where(log_checkpoints.c.tree_size == tree_size)
                             .values(partition=partition, offset=offset))

    def last_published(self) -> dict[int, int]:
        """{partition: offset} of the newest published checkpoint: what the topic must still hold
        (checkpoints go out oldest first, to one partition: the key is the origin). Walks back
        from the newest, past the few not yet published."""
        with self.engine.connect() as conn:
            row = conn.execute(select(log_checkpoints.c.partition, log_checkpoints.c.offset)
                               .where(log_checkpoints.c.partition.is_not(None))
                               .order_by(log_checkpoints.c.tree_size.desc()).limit(1)).first()
        return {row.partition: row.offset} if row else {}

    def forget_published(self) -> None:
        """The topic lost what was published: publish every checkpoint again."""
        with writing(self.engine) as conn:
            conn.execute(update(log_checkpoints).values(partition=None, offset=None))


def _checkpoint(row) -> StoredCheckpoint:  # noqa: ANN001 - a result row
    return StoredCheckpoint(row.tree_size, bytes(row.root_hash), row.note, utc(row.created_at), row.partition,
                            row.offset)


def keep_verifier(store: EventStore, verifier_text: str) -> None:
    """Record the checkpoints' verifier key, so the front door serves it without the private key."""
    dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
    value = verifier_text.encode()
    with writing(store.engine) as conn:
        conn.execute(dialect.insert(meta).values(key=VERIFIER_KEY, value=value)
                     .on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def kept_verifier(store: EventStore) -> str | None:
    """The verifier key text the log component recorded, or None before it first ran."""
    with store.engine.connect() as conn:
        value = conn.execute(select(meta.c.value).where(meta.c.key == VERIFIER_KEY)).scalar()
    return bytes(value).decode() if value is not None else None
