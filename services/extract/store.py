"""The extract service's own tables (extract_*), SQLite or PostgreSQL, and what it does with them.

`extract_results` holds one row per DELIVERY read from rod.feed.extract.v1, inserted if absent
by delivery_id, so a repeat changes nothing. A WITHDRAWAL stamps the row of the delivery it
takes back (`withdrawn_at`, `withdrawal_id`) once; one that arrives before its DELIVERY waits in
`extract_withdrawals_pending` and the DELIVERY is then stored already withdrawn, so the outcome
does not depend on the order of arrival. The consumer's position (`extract_offsets`) and its
dead letters move in the same transaction as the rows.

An extract is issued in two steps: the document is rendered (and signed) outside any
transaction, then the extract, its items and the document are written in one transaction that
first checks, holding the rows, that every result still stands. `extract_items` is also the
outbox of ExtractIssued messages (`published` false until they are on rod.extracts.v1).

Only a digest of the verification code is stored, bound to its extract id; a wrong code and an
unknown id look the same to the caller and take the same work. Person numbers are stored
because the service is entitled to them; they never appear in a log line or an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.kernel.clock import now_millis as now
from services.kernel.clock import utc
from services.kernel.database import create_tables, make_engine, writing
from services.kernel.deadletters import DeadLetter, DeadLetterBook, deadletter_table
from services.kernel.identifiers import mask_person_number
from services.kernel.tokens import RecentTokens, TokenMarks, hash_token, mark_tables

SERVICE = "extract"
DELIVERY, WITHDRAWAL = "DELIVERY", "WITHDRAWAL"
VALID, WITHDRAWN, STANDING = "valid", "withdrawn", "standing"
PORTAL_TOKEN_PREFIX = "rodp_"
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
CODE_LENGTH = 16  # 80 bits
_CODE_READING = str.maketrans({"I": "1", "L": "1", "O": "0", "-": None, " ": None})
_NO_DIGEST = "0" * 64
Position = tuple[int, bytes | None]  # the next offset to read, the digest of the record before it
FEED_LOCK = 0x726F645F65787472  # PostgreSQL advisory lock key of apply(): "rod_extr"
_CHUNK = 900  # bound parameters per IN list (SQLite's limit is far above; PostgreSQL's too)

metadata = MetaData()

results = Table(
    "extract_results",
    metadata,
    Column("delivery_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("result_id", String(64), nullable=False, index=True),
    Column("person_kind", String(20), nullable=False),
    Column("person_number", String(20), nullable=False),
    Column("institution", String(20), nullable=False),
    Column("branch", String(20)),
    Column("provider", String(40)),
    Column("sector", String(10), nullable=False),
    Column("programme_code", String(40), nullable=False),
    Column("programme_name", Text, nullable=False),
    Column("diploma_number", String(40), nullable=False),
    Column("diploma_date", Date, nullable=False),
    Column("registered_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
    Column("withdrawn_at", DateTime(timezone=True)),
    Column("withdrawal_id", String(64)),  # the WITHDRAWAL's delivery_id
    Index("ix_extract_results_person", "person_kind", "person_number"),
)

withdrawals_pending = Table(
    "extract_withdrawals_pending",
    metadata,
    Column("withdraws", String(64), primary_key=True),  # the delivery_id of a DELIVERY not seen yet
    Column("withdrawal_id", String(64), nullable=False),
    Column("result_id", String(64), nullable=False),
    Column("withdrawn_at", DateTime(timezone=True), nullable=False),
)

extracts = Table(
    "extract_extracts",
    metadata,
    Column("extract_id", String(36), primary_key=True),
    Column("portal", String(80), nullable=False),
    Column("language", String(5), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("code_digest", String(64), nullable=False),  # sha256 hex of extract id and code
    Column("pdf", LargeBinary, nullable=False),
    Column("person_kind", String(20), nullable=False),
    Column("person_number_masked", String(20), nullable=False),
)

items = Table(
    "extract_items",
    metadata,
    Column("extract_id", String(36), primary_key=True),
    Column("result_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),  # the registration the extract shows
    Column("delivery_id", String(64), nullable=False),
    Column("institution", String(20), nullable=False),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_extract_items_delivery", "delivery_id"),
    Index(
        "ix_extract_items_unpublished",
        "extract_id",
        sqlite_where=text("published = false"),
        postgresql_where=text("published = false"),
    ),
)

portals = Table(
    "extract_portals",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
token_marks = mark_tables(metadata, SERVICE)  # who revoked a portal's token, when and why; last uses

offsets = Table(
    "extract_offsets",
    metadata,
    Column("topic", String(120), primary_key=True),  # base name, without ROD_TOPIC_PREFIX
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("last_digest", LargeBinary),  # of the record at next_offset - 1
)

# the outbox's own position on rod.extracts.v1: the last offset each partition holds of ours,
# written in the transaction that marks the items sent (what follows it may be unmarked sends)
outbox_offsets = Table(
    "extract_outbox_offsets",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("last_offset", BigInteger, nullable=False),
)

# one outbox publisher at a time: a lease renewed while it publishes, taken over once it lapses
outbox_lease = Table(
    "extract_outbox_lease",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("owner", String(120), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
)

# the same columns as every service's dead letters (services/kernel/deadletters.py)
deadletters = deadletter_table(metadata, "extract_deadletters")

# written out, not bound: only then may SQLite (and a generic PostgreSQL plan) use the partial index
UNPUBLISHED = items.c.published == literal_column("false")

_DELIVERY_REQUIRED = (
    "delivery_id", "event_id", "result_id", "delivered_at", "person_kind", "person_number",
    "institution", "sector", "programme_code", "programme_name", "diploma_number", "diploma_date",
)
_WITHDRAWAL_REQUIRED = ("delivery_id", "event_id", "result_id", "delivered_at", "withdraws")
_RESULT_FIELDS = (
    "delivery_id", "event_id", "result_id", "person_kind", "person_number", "institution", "branch",
    "provider", "sector", "programme_code", "programme_name", "diploma_number", "diploma_date",
)


class MessageProblem(ValueError):
    """A feed message the store cannot keep; `code` is a kernel dead-letter code (no content)."""

    def __init__(self, code: str, field: str) -> None:
        super().__init__(f"{code}: field {field}")
        self.code = code
        self.field = field


@dataclass(frozen=True)
class Applied:
    """What one batch changed: new results, new withdrawals, withdrawals still waiting for their
    DELIVERY, and messages that changed nothing (repeats)."""

    delivered: int
    withdrawn: int
    repeated: int
    pending: int = 0


@dataclass(frozen=True)
class StandingResult:
    """A result of a person that stands now, as a lookup and an extract show it."""

    result_id: str
    event_id: str
    delivery_id: str
    institution: str
    sector: str
    programme_code: str
    programme_name: str
    diploma_number: str
    diploma_date: date


@dataclass(frozen=True)
class IssuedDraft:
    """Everything the document shows, handed to the renderer before anything is written."""

    extract_id: str
    code: str
    issued_at: datetime
    person_kind: str
    person_number_masked: str
    language: str
    results: list[StandingResult]


@dataclass(frozen=True)
class Issued:
    extract_id: str
    verification_code: str
    issued_at: datetime
    results: list[StandingResult]


@dataclass(frozen=True)
class VerifiedResult:
    programme_name: str
    institution: str
    diploma_date: date
    status: str  # standing | withdrawn
    withdrawn_at: datetime | None


@dataclass(frozen=True)
class Verification:
    """What anyone holding an extract id and its code may learn: no person number."""

    status: str  # valid | withdrawn
    issued_at: datetime
    withdrawn_at: datetime | None  # the earliest withdrawal among its results
    results: list[VerifiedResult]


@dataclass(frozen=True)
class OutboxItem:
    """One ExtractIssued still to be published on rod.extracts.v1."""

    extract_id: str
    result_id: str
    event_id: str
    institution: str
    issued_at: datetime


@dataclass(frozen=True)
class Counts:
    standing: int
    withdrawn: int
    extracts: int
    unpublished: int
    deadletters_open: int
    deadletters: int


def _stored(moment: datetime | None) -> datetime | None:
    """As UTC before it is stored: SQLite keeps a datetime's wall clock and drops its zone."""
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def new_code() -> str:
    """A verification code: 16 Crockford base32 characters (80 bits), as XXXX-XXXX-XXXX-XXXX."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(chars[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalise_code(code: str) -> str:
    """The code as typed, read the way Crockford's base32 reads it: any case, dashes and spaces
    left out, I and L as 1, O as 0."""
    return code.strip().upper().translate(_CODE_READING)


def code_digest(extract_id: str, code: str) -> str:
    """SHA-256 hex of the extract id and the normalised code (a digest fits one extract only)."""
    return hashlib.sha256(f"{extract_id}:{normalise_code(code)}".encode()).hexdigest()


def check_message(message: Mapping[str, Any]) -> None:
    """Raise MessageProblem when a decoded ExtractFeedMessage cannot be stored (a dead letter)."""
    kind = message.get("kind")
    if kind not in (DELIVERY, WITHDRAWAL):
        raise MessageProblem("EVENT_TYPE_UNKNOWN", "kind")
    for field in _DELIVERY_REQUIRED if kind == DELIVERY else _WITHDRAWAL_REQUIRED:
        if message.get(field) in (None, ""):
            raise MessageProblem("EVENT_INCOMPLETE", field)
    if kind == DELIVERY:
        for field in _RESULT_FIELDS:
            value = message.get(field)
            limit = getattr(results.c[field].type, "length", None)
            if isinstance(value, str) and limit and len(value) > limit:
                raise MessageProblem("PROCESSING_FAILED", field)
    elif len(message["withdraws"]) > 64 or len(message["delivery_id"]) > 64:
        raise MessageProblem("PROCESSING_FAILED", "withdraws")


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


_STANDING_COLUMNS = [results.c[name] for name in StandingResult.__dataclass_fields__]


def _portal_revoked(conn: Any, name: str) -> None:
    conn.execute(portals.update().where(portals.c.name == name).values(revoked_at=now()))


class ExtractStore:
    """The extract service's tables and every statement it runs on them; thread-safe."""

    def __init__(self, url: str, token_ttl: float = 60.0) -> None:
        self.url = url
        self.engine = make_engine(url)
        create_tables(metadata, self.engine)
        self.dialect = self.engine.dialect.name
        self.deadletters = DeadLetterBook(self.engine, deadletters, SERVICE)
        self.tokens = TokenMarks(self.engine, "portal", portals, "name", token_marks, _portal_revoked)
        self.recent = RecentTokens(token_ttl, self.tokens)

    def dispose(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Table) -> Any:
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

    # the feed

    def apply(
        self,
        messages: Sequence[Mapping[str, Any]],
        ends: Mapping[tuple[str, int], Position],
        letters: Sequence[DeadLetter] = (),
    ) -> Applied:
        """Store a batch of decoded feed messages, its dead letters and the offsets it ends at, in
        one transaction. Repeats change nothing; the order of arrival does not matter."""
        for message in messages:
            check_message(message)
        deliveries: dict[str, Mapping[str, Any]] = {}
        withdrawals: dict[str, Mapping[str, Any]] = {}
        for m in messages:
            chosen = deliveries if m["kind"] == DELIVERY else withdrawals
            chosen.setdefault(m["delivery_id"] if m["kind"] == DELIVERY else m["withdraws"], m)
        repeated = len(messages) - len(deliveries) - len(withdrawals)
        with writing(self.engine) as conn:
            if self.dialect == "postgresql":
                # batches one after another, as SQLite's write lock has them: a DELIVERY and its early
                # WITHDRAWAL in two concurrent batches (a rebalance) would otherwise miss each other
                conn.execute(select(func.pg_advisory_xact_lock(FEED_LOCK)))
            delivered = self._deliver(conn, deliveries)
            withdrawn, pending = self._withdraw(conn, withdrawals)
            self.deadletters.record(conn, letters)
            self._move_offsets(conn, ends)
        repeated += len(deliveries) - delivered + len(withdrawals) - withdrawn - pending
        return Applied(delivered, withdrawn, repeated, pending)

    def _deliver(self, conn: Connection, deliveries: Mapping[str, Mapping[str, Any]]) -> int:
        """Insert the DELIVERYs not stored yet (those withdrawn in advance as withdrawn); how many."""
        if not deliveries:
            return 0
        ids = sorted(deliveries)  # one order for every writer: no deadlocks on PostgreSQL
        waiting: dict[str, Any] = {}
        for part in _chunks(ids):
            query = select(withdrawals_pending).where(withdrawals_pending.c.withdraws.in_(part))
            waiting.update({row.withdraws: row for row in conn.execute(query)})
        rows = []
        for delivery_id in ids:
            m = deliveries[delivery_id]
            early = waiting.get(delivery_id)
            rows.append({
                **{field: m.get(field) for field in _RESULT_FIELDS},
                "registered_at": _stored(m.get("registered_at")),
                "delivered_at": _stored(m["delivered_at"]),
                "withdrawn_at": _stored(early.withdrawn_at) if early else None,
                "withdrawal_id": early.withdrawal_id if early else None,
            })
        statement = self._insert(results).on_conflict_do_nothing().returning(results.c.delivery_id)
        inserted = list(conn.execute(statement, rows).scalars())
        for part in _chunks(sorted(set(inserted) & set(waiting))):
            conn.execute(withdrawals_pending.delete().where(withdrawals_pending.c.withdraws.in_(part)))
        return len(inserted)

    def _withdraw(self, conn: Connection, withdrawals: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
        """Stamp the rows these WITHDRAWALs take back; keep the others waiting. (withdrawn, waiting)."""
        withdrawn = waiting = 0
        for withdraws in sorted(withdrawals):
            m = withdrawals[withdraws]
            moment = _stored(m["delivered_at"])
            stamped = conn.execute(
                update(results)
                .where(results.c.delivery_id == withdraws, results.c.withdrawn_at.is_(None))
                .values(withdrawn_at=moment, withdrawal_id=m["delivery_id"])
            ).rowcount
            if stamped:
                withdrawn += 1
                continue
            known = conn.execute(select(results.c.delivery_id).where(results.c.delivery_id == withdraws))
            if known.first() is not None:
                continue  # withdrawn before: a repeat
            kept = conn.execute(
                self._insert(withdrawals_pending)
                .values(withdraws=withdraws, withdrawal_id=m["delivery_id"], result_id=m["result_id"],
                        withdrawn_at=moment)
                .on_conflict_do_nothing()
                .returning(withdrawals_pending.c.withdraws)
            ).first()
            waiting += kept is not None
        return withdrawn, waiting

    def _move_offsets(self, conn: Connection, ends: Mapping[tuple[str, int], Position]) -> None:
        for (topic, partition), (next_offset, digest) in sorted(ends.items()):
            statement = self._insert(offsets).values(
                topic=topic, partition=partition, next_offset=next_offset, last_digest=digest
            )
            conn.execute(statement.on_conflict_do_update(
                index_elements=["topic", "partition"],
                set_={"next_offset": next_offset, "last_digest": digest},
            ))

    def stored_offsets(self) -> dict[tuple[str, int], Position]:
        """Per (topic, partition): the next offset to read and the digest of the record before it."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(offsets)).all()
        return {(r.topic, r.partition): (int(r.next_offset), _bytes(r.last_digest)) for r in rows}

    # lookup and issue

    def standing(self, person_kind: str, person_number: str) -> list[StandingResult]:
        """The person's results that stand now, by diploma date then result id."""
        with self.engine.connect() as conn:
            return self._standing(conn, person_kind, person_number)

    def _standing(
        self, conn: Connection, person_kind: str, person_number: str, lock: bool = False
    ) -> list[StandingResult]:
        query = select(*_STANDING_COLUMNS, results.c.delivered_at).where(
            results.c.person_kind == person_kind,
            results.c.person_number == person_number,
            results.c.withdrawn_at.is_(None),
        )
        if lock and self.dialect == "postgresql":
            # a withdrawal of these rows waits until the extract is written (rows locked in one order)
            query = query.order_by(results.c.delivery_id).with_for_update(read=True)
        # one result stands once; should two deliveries of it stand (a feed replayed out of order),
        # the newest shows
        newest: dict[str, tuple[datetime, StandingResult]] = {}
        for row in conn.execute(query):
            moment = _stored(row.delivered_at) or now()
            current = newest.get(row.result_id)
            if current is None or moment > current[0]:
                newest[row.result_id] = (moment, StandingResult(*row[: len(_STANDING_COLUMNS)]))
        return sorted((r for _, r in newest.values()), key=lambda r: (r.diploma_date, r.result_id))

    def issue(
        self,
        portal: str,
        person_kind: str,
        person_number: str,
        result_ids: Sequence[str] | None,
        language: str,
        render: Callable[[IssuedDraft], bytes],
    ) -> Issued | None:
        """Issue an extract of the person's standing results (all when `result_ids` is None).

        None, with nothing written, when a requested id is not a standing result of this person
        (also when it was withdrawn while the document was rendered) or nothing is selected.
        """
        chosen = self._choose(self.standing(person_kind, person_number), result_ids)
        if not chosen:
            return None
        extract_id, code, issued_at = str(uuid.uuid4()), new_code(), now()
        draft = IssuedDraft(extract_id, code, issued_at, person_kind, mask_person_number(person_number),
                            language, chosen)
        pdf = render(draft)  # outside any transaction: signing takes time and must not hold locks
        with writing(self.engine) as conn:
            still = {r.delivery_id for r in self._standing(conn, person_kind, person_number, lock=True)}
            if any(r.delivery_id not in still for r in chosen):
                return None
            conn.execute(extracts.insert().values(
                extract_id=extract_id, portal=portal, language=language, issued_at=issued_at,
                code_digest=code_digest(extract_id, code), pdf=pdf, person_kind=person_kind,
                person_number_masked=draft.person_number_masked,
            ))
            conn.execute(items.insert(), [
                {"extract_id": extract_id, "result_id": r.result_id, "event_id": r.event_id,
                 "delivery_id": r.delivery_id, "institution": r.institution, "published": False}
                for r in chosen
            ])
        return Issued(extract_id, code, issued_at, chosen)

    @staticmethod
    def _choose(standing: list[StandingResult], result_ids: Sequence[str] | None) -> list[StandingResult]:
        if result_ids is None:
            return standing
        wanted = set(result_ids)
        if not wanted <= {r.result_id for r in standing}:
            return []
        return [r for r in standing if r.result_id in wanted]

    def pdf(self, extract_id: str, portal: str) -> bytes | None:
        """The signed document, to the portal that issued it only."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(extracts.c.pdf).where(extracts.c.extract_id == extract_id, extracts.c.portal == portal)
            ).scalar_one_or_none()
        return _bytes(found)

    def verification(self, extract_id: str, code: str) -> Verification | None:
        """What the extract shows now; None for an unknown id and a wrong code alike."""
        offered = code_digest(extract_id, code)
        with self.engine.connect() as conn:
            query = select(extracts.c.code_digest, extracts.c.issued_at)
            row = conn.execute(query.where(extracts.c.extract_id == extract_id)).first()
            stored = row.code_digest if row is not None else _NO_DIGEST
            if not hmac.compare_digest(stored, offered) or row is None:
                return None
            shown = conn.execute(
                select(results.c.programme_name, results.c.institution, results.c.diploma_date,
                       results.c.withdrawn_at)
                .join(items, items.c.delivery_id == results.c.delivery_id)
                .where(items.c.extract_id == extract_id)
                .order_by(results.c.diploma_date, results.c.result_id)
            ).all()
        verified = [
            VerifiedResult(r.programme_name, r.institution, r.diploma_date,
                           WITHDRAWN if r.withdrawn_at else STANDING, utc(r.withdrawn_at))
            for r in shown
        ]
        stamps = [r.withdrawn_at for r in verified if r.withdrawn_at is not None]
        earliest = min(stamps) if stamps else None
        return Verification(WITHDRAWN if stamps else VALID, utc(row.issued_at), earliest, verified)  # type: ignore[arg-type]

    # the outbox of ExtractIssued

    def unpublished(self, limit: int = 1000) -> list[OutboxItem]:
        """Items whose ExtractIssued is not on rod.extracts.v1 yet, oldest extract first."""
        query = (
            select(items.c.extract_id, items.c.result_id, items.c.event_id, items.c.institution,
                   extracts.c.issued_at)
            .join(extracts, extracts.c.extract_id == items.c.extract_id)
            .where(UNPUBLISHED)
            .order_by(extracts.c.issued_at, items.c.extract_id, items.c.result_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [OutboxItem(r.extract_id, r.result_id, r.event_id, r.institution, utc(r.issued_at))
                    for r in conn.execute(query)]  # type: ignore[arg-type]

    def mark_published(self, keys: Sequence[tuple[str, str]], last_offsets: Mapping[int, int] | None = None
                       ) -> None:
        """These (extract_id, result_id) items are on rod.extracts.v1, up to these offsets per partition."""
        with writing(self.engine) as conn:
            if keys:
                conn.execute(
                    update(items)
                    .where(and_(items.c.extract_id == bindparam("e"), items.c.result_id == bindparam("r")))
                    .values(published=True),
                    [{"e": e, "r": r} for e, r in sorted(set(keys))],
                )
            for partition, offset in sorted((last_offsets or {}).items()):
                insert = self._insert(outbox_offsets).values(partition=partition, last_offset=offset)
                conn.execute(insert.on_conflict_do_update(
                    index_elements=["partition"],
                    set_={"last_offset": (func.max if self.dialect == "sqlite" else func.greatest)(
                        outbox_offsets.c.last_offset, offset)},
                ))

    def outbox_offsets(self) -> dict[int, int]:
        """The last offset of ours each partition of rod.extracts.v1 holds, as marked."""
        with self.engine.connect() as conn:
            return {r.partition: r.last_offset for r in conn.execute(select(outbox_offsets))}

    def unpublish_all(self) -> None:
        """The topic lost what was sent (a broker that started empty): send every item again."""
        with writing(self.engine) as conn:
            conn.execute(update(items).values(published=False))
            conn.execute(outbox_offsets.delete())

    def hold_outbox(self, owner: str, seconds: float) -> bool:
        """Take or renew the outbox lease for `seconds`; False while another owner holds it."""
        moment = now()
        with writing(self.engine) as conn:
            row = conn.execute(select(outbox_lease).where(outbox_lease.c.id == 1)).first()
            if row is not None and row.owner != owner and utc(row.until) > moment:
                return False
            until = _stored(datetime.fromtimestamp(moment.timestamp() + seconds, UTC))
            if row is None:
                taken = conn.execute(self._insert(outbox_lease).values(id=1, owner=owner, until=until)
                                     .on_conflict_do_nothing())
            else:  # the condition again: of two takers after a lapse, one finds it taken
                taken = conn.execute(
                    update(outbox_lease)
                    .where(outbox_lease.c.id == 1,
                           or_(outbox_lease.c.owner == owner, outbox_lease.c.until <= _stored(moment)))
                    .values(owner=owner, until=until))
            return taken.rowcount == 1

    # portals

    def add_portal(self, name: str) -> str:
        """A new portal and its token (only the token's hash is stored)."""
        token = PORTAL_TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with writing(self.engine) as conn:
                if conn.execute(select(portals.c.name).where(portals.c.name == name)).first() is not None:
                    raise ValueError(f"a portal named {name!r} exists already")
                conn.execute(
                    portals.insert().values(name=name, token_hash=hash_token(token), created_at=now())
                )
        except IntegrityError:  # another process added it at the same moment
            raise ValueError(f"a portal named {name!r} exists already") from None
        return token

    def cached_portal(self, token: str) -> str | None:
        """The portal a recently looked-up token belongs to, without the database."""
        return self.recent.get(token)

    def portal_for(self, token: str) -> str | None:
        """The portal this token acts for, or None (unknown or revoked)."""
        return self.recent.resolve(token, self._portal_row, lambda row: row.name)

    def _portal_row(self, digest: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(portals.c.token_hash, portals.c.name)
                .where(portals.c.token_hash == digest, portals.c.revoked_at.is_(None))
            ).first()

    # metrics

    def counts(self) -> Counts:
        """Standing and withdrawn results, extracts, unpublished outbox items, dead letters."""
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(results)).scalar_one()
            gone = conn.execute(
                select(func.count()).select_from(results).where(results.c.withdrawn_at.is_not(None))
            ).scalar_one()
            issued = conn.execute(select(func.count()).select_from(extracts)).scalar_one()
            waiting = conn.execute(select(func.count()).select_from(items).where(UNPUBLISHED)).scalar_one()
        opened, letters = self.deadletters.counts()
        return Counts(int(total) - int(gone), int(gone), int(issued), int(waiting), opened, letters)
