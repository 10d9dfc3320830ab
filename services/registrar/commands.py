"""The registrar's command handlers: register, delete, import a bulk file.

Every entrypoint (CLI, HTTP, the Loket) calls these. Rules run first, outside the write lock;
then one serialised transaction reads the current state, decides, appends the events and
changes the state together. A bulk file is handled in chunks, each chunk one transaction, so
the lock and the commit cost little per record.

Each single command leaves one log line once decided (`result_registered`,
`registration_repeated`, `registration_refused`, `result_deleted`, `deletion_refused`) with
its ids and outcome codes, never a person number; a bulk file leaves `batch_started` and
`batch_finished` (its counts; each record's outcome is in the batch's feedback) or
`batch_refused` (the code and line).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from services.kernel.clock import now_millis
from services.kernel.codes import Problem, problem
from services.kernel.logging import get_logger
from services.kernel.tokens import hash_token, new_token
from services.registrar import bulk, store
from services.registrar.catalogue import Catalogue
from services.registrar.rules import (
    Institution,
    Registration,
    check_deletion,
    check_person_number,
    check_registration,
    today_in_amsterdam,
)
from services.registrar.store import (
    Appender,
    EventStore,
    ResultState,
    event_id_for,
    new_result_id,
)

log = get_logger("registrar")

CHUNK = 5000  # records per write transaction in a bulk import


@dataclass
class Outcome:
    """What became of one command: accepted (new event), duplicate (nothing new) or rejected."""

    outcome: str
    result_id: str | None = None
    event_id: str | None = None
    position: int | None = None
    version: int | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.errors + self.warnings]


@dataclass
class RecordFeedback:
    """Feedback on one record of a bulk file (interfaces.md: record, line, outcome, ...)."""

    record: int
    line: int
    outcome: str
    result_id: str | None
    codes: list[str]


@dataclass
class BatchSummary:
    batch_id: str
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    warnings: int = 0

    def count(self, feedback: RecordFeedback, warned: bool) -> None:
        setattr(self, feedback.outcome, getattr(self, feedback.outcome) + 1)
        self.warnings += warned


class FileRefused(Exception):
    """A bulk file refused as a whole: nothing of it was written."""

    def __init__(self, problem: Problem, line: int | None = None) -> None:
        super().__init__(problem.code if line is None else f"{problem.code} (line {line})")
        self.problem = problem
        self.line = line


@dataclass
class _Pending:
    """A command that passed the rules, waiting for its turn in the write transaction."""

    index: int
    action: str  # register | delete
    identity_key: str | None = None
    registration: Registration | None = None
    reason: str | None = None
    explanation: str | None = None
    result_id: str | None = None
    warnings: list[Problem] = field(default_factory=list)


def _data_digest(reg: Registration) -> str:
    """What must be equal for a repeat to be idempotent rather than a conflict."""
    data = "|".join(
        (
            reg.person_kind,
            reg.branch,
            reg.provider or "",
            reg.sector,
            reg.programme_code.upper(),
            reg.diploma_date.isoformat(),
        )
    )
    return hashlib.sha256(data.encode()).hexdigest()


class Registrar:
    """The registrar's service layer over one event store and one catalogue."""

    def __init__(
        self,
        event_store: EventStore,
        catalogue: Catalogue,
        today: Callable[[], date] = today_in_amsterdam,
    ) -> None:
        self.store = event_store
        self.catalogue = catalogue
        self.today = today
        self._identity_secret = event_store.secret("identity_key", lambda: secrets.token_bytes(32))
        self._institutions: dict[str, Institution] = {}

    # institutions and tokens

    def add_institution(self, code: str, name: str, sectors: Iterable[str], funded: bool = True) -> str:
        """Store an institution and return a new bearer token for it (only its hash is kept)."""
        token = new_token()
        now = now_millis()
        with self.store.engine.begin() as conn:
            conn.execute(
                insert(store.institutions).values(
                    code=code,
                    name=name,
                    sectors=",".join(sorted(set(sectors))),
                    funded=funded,
                    created_at=now,
                )
            )
            conn.execute(
                insert(store.tokens).values(token_hash=hash_token(token), institution=code, created_at=now)
            )
        log.info("institution_added", institution=code)
        return token

    def institution(self, code: str) -> Institution | None:
        """The institution with this code, or None (cached; a miss asks the database)."""
        if code not in self._institutions:
            with self.store.reading() as conn:
                query = select(store.institutions).where(store.institutions.c.code == code)
                row = conn.execute(query).first()
            if row is None:
                return None
            self._institutions[code] = Institution(
                row.code, row.name, frozenset(filter(None, row.sectors.split(","))), row.funded
            )
        return self._institutions[code]

    # single commands

    def register(
        self, raw: Mapping[str, object], acting_institution: str, batch_id: str | None = None
    ) -> Outcome:
        """Register one result (idempotent for an identical repeat)."""
        return self.register_many([(raw, acting_institution)], batch_id)[0]

    def register_many(
        self, commands: list[tuple[Mapping[str, object], str]], batch_id: str | None = None
    ) -> list[Outcome]:
        """Register several results, each (raw, acting institution), in one transaction and in
        order: a repeat or conflict among them is decided as if they came one by one."""
        outcomes: list[Outcome | None] = [None] * len(commands)
        pendings = []
        for index, (raw, acting) in enumerate(commands):
            pending, outcomes[index] = self._check_registration(index, raw, acting)
            if pending:
                pendings.append(pending)
        if pendings:
            with self.store.appending() as tx:
                for pending, outcome in zip(pendings, self._apply(tx, pendings, batch_id), strict=True):
                    outcomes[pending.index] = outcome
        for outcome, (_raw, acting) in zip(outcomes, commands, strict=True):
            _log_registration(outcome, acting, batch_id)  # type: ignore[arg-type]
        return outcomes  # type: ignore[return-value]  # every index got its outcome

    def delete(
        self,
        result_id: str,
        reason: object,
        explanation: object,
        acting_institution: str | None = None,
        batch_id: str | None = None,
    ) -> Outcome:
        """Delete a result by id; `acting_institution` None means an operator acting for all."""
        outcome = self._delete(result_id, reason, explanation, acting_institution, batch_id)
        if outcome.outcome == "accepted":
            log.info("result_deleted", result_id=result_id, event_id=outcome.event_id,
                     position=outcome.position, version=outcome.version, institution=acting_institution,
                     reason=str(reason))
        else:
            log.info("deletion_refused", result_id=result_id, institution=acting_institution,
                     codes=outcome.codes)
        return outcome

    def _delete(
        self, result_id: str, reason: object, explanation: object, acting_institution: str | None,
        batch_id: str | None,
    ) -> Outcome:
        errors = check_deletion(reason, explanation)
        if errors:
            return Outcome("rejected", result_id=result_id, errors=errors)
        pending = _Pending(
            0, "delete", result_id=result_id, reason=str(reason), explanation=_text(explanation)
        )
        with self.store.appending() as tx:
            state = tx.state_by_id(result_id)
            if state and acting_institution and state.institution != acting_institution:
                forbidden = problem("INSTITUTION_FORBIDDEN", "result_id")
                return Outcome("rejected", result_id=result_id, errors=[forbidden])
            return self._apply(tx, [pending], batch_id)[0]

    # bulk

    def import_file(
        self,
        path: Path,
        acting_institution: str,
        content_type: str | None = None,
        on_record: Callable[[RecordFeedback], None] | None = None,
    ) -> BatchSummary:
        """Import a bulk file record by record; raises FileRefused when it is refused whole."""
        try:
            return self._import_file(path, acting_institution, content_type, on_record)
        except FileRefused as refused:
            log.info("batch_refused", institution=acting_institution, code=refused.problem.code,
                     field=refused.problem.field, line=refused.line)
            raise

    def _import_file(
        self, path: Path, acting_institution: str, content_type: str | None,
        on_record: Callable[[RecordFeedback], None] | None,
    ) -> BatchSummary:
        institution = self.institution(acting_institution)
        if institution is None:
            raise FileRefused(problem("INSTITUTION_UNKNOWN", "institution"))
        fmt = bulk.sniff_format(path, content_type)
        if fmt == "csv" and "MBO" in institution.sectors:
            raise FileRefused(problem("FILE_FORMAT_NOT_ALLOWED", "file"))
        try:
            declared = bulk.check_file(path, fmt)
        except bulk.FileRefused as refused:
            raise FileRefused(refused.problem, refused.line) from None
        if declared is not None and declared != acting_institution:
            raise FileRefused(problem("INSTITUTION_FORBIDDEN", "instellingscode"))

        summary = BatchSummary(batch_id=str(uuid.uuid4()))
        log.info("batch_started", batch_id=summary.batch_id, institution=acting_institution, format=fmt)
        for chunk in _chunks(bulk.read_records(path, fmt), CHUNK):
            for feedback, warned in self._import_chunk(chunk, acting_institution, summary.batch_id):
                summary.count(feedback, warned)
                if on_record:
                    on_record(feedback)
        log.info(
            "batch_finished",
            batch_id=summary.batch_id,
            institution=acting_institution,
            accepted=summary.accepted,
            duplicate=summary.duplicate,
            rejected=summary.rejected,
            warnings=summary.warnings,
        )
        return summary

    def _import_chunk(
        self, chunk: list[bulk.BulkRecord], acting: str, batch_id: str
    ) -> Iterator[tuple[RecordFeedback, bool]]:
        outcomes: list[Outcome | None] = [None] * len(chunk)
        pendings: list[_Pending] = []
        for i, rec in enumerate(chunk):
            if rec.problems:
                outcomes[i] = Outcome("rejected", errors=list(rec.problems))
            elif rec.action == "register":
                pending, outcomes[i] = self._check_registration(i, rec.fields, acting)
                if pending:
                    pendings.append(pending)
            else:
                pending, outcomes[i] = self._check_bulk_deletion(i, rec.fields, acting)
                if pending:
                    pendings.append(pending)
        if pendings:
            with self.store.appending() as tx:
                for pending, outcome in zip(pendings, self._apply(tx, pendings, batch_id), strict=True):
                    outcomes[pending.index] = outcome
        for rec, outcome in zip(chunk, outcomes, strict=True):
            assert outcome is not None
            yield (
                RecordFeedback(rec.record, rec.line, outcome.outcome, outcome.result_id, outcome.codes),
                bool(outcome.warnings),
            )

    # shared steps

    def _identity_key(self, institution: str, person_number: str, diploma_number: str) -> str:
        message = f"{institution}|{person_number}|{diploma_number}".encode()
        return hmac.digest(self._identity_secret, message, "sha256").hex()

    def _check_registration(
        self, index: int, raw: Mapping[str, object], acting: str
    ) -> tuple[_Pending | None, Outcome | None]:
        checked = check_registration(
            raw,
            acting_institution=acting,
            institutions=self.institution,
            catalogue=self.catalogue,
            today=self.today(),
        )
        reg = checked.registration
        if reg is None:
            return None, Outcome("rejected", errors=checked.errors, warnings=checked.warnings)
        key = self._identity_key(reg.institution, reg.person_number, reg.diploma_number)
        return _Pending(index, "register", key, reg, warnings=checked.warnings), None

    def _check_bulk_deletion(
        self, index: int, fields: Mapping[str, str | None], acting: str
    ) -> tuple[_Pending | None, Outcome | None]:
        person, errors = check_person_number(fields.get("bsn"), fields.get("onderwijsnummer"))
        errors += check_deletion(fields.get("reason"), fields.get("explanation"))
        institution = fields.get("institution") or acting
        if institution != acting:
            errors.append(problem("INSTITUTION_FORBIDDEN", "institution"))
        diploma_number = fields.get("diploma_number")
        if not diploma_number:
            errors.append(problem("FIELD_REQUIRED", "diploma_number"))
        if errors or person is None or not diploma_number:
            return None, Outcome("rejected", errors=errors)
        key = self._identity_key(acting, person[1], diploma_number)
        return _Pending(
            index, "delete", key, reason=fields.get("reason"), explanation=_text(fields.get("explanation"))
        ), None

    def _apply(self, tx: Appender, pendings: list[_Pending], batch_id: str | None) -> list[Outcome]:
        """Decide each command against the current state and append its event (in order)."""
        states = tx.states_by_identity(p.identity_key for p in pendings if p.identity_key)
        outcomes = []
        for p in pendings:
            if p.action == "register":
                outcome = self._apply_registration(tx, p, states.get(p.identity_key or ""), batch_id)
            else:
                state = states.get(p.identity_key) if p.identity_key else tx.state_by_id(p.result_id or "")
                outcome = self._apply_deletion(tx, p, state, batch_id)
            if outcome.outcome == "accepted" and outcome.result_id:
                changed = tx.touched[outcome.result_id]
                states[changed.identity_key] = changed
            outcomes.append(outcome)
        return outcomes

    def _apply_registration(
        self, tx: Appender, p: _Pending, state: ResultState | None, batch_id: str | None
    ) -> Outcome:
        reg = p.registration
        assert reg is not None and p.identity_key is not None
        digest = _data_digest(reg)
        if state is not None and state.status == "registered":
            if state.data_digest != digest:
                return Outcome("rejected", result_id=state.result_id, errors=[problem("RESULT_CONFLICT")])
            return Outcome(
                "duplicate",
                state.result_id,
                state.registered_event_id,
                state.position,
                state.version,
                warnings=p.warnings,
            )
        result_id = state.result_id if state else new_result_id()
        version = state.version + 1 if state else 1
        event_id = event_id_for(result_id, version)
        record = {
            "event_id": event_id,
            "result_id": result_id,
            "version": version,
            "recorded_at": now_millis(),
            "institution": reg.institution,
            "batch_id": batch_id,
            "person_kind": reg.person_kind,
            "person_number": reg.person_number,
            "branch": reg.branch,
            "provider": reg.provider,
            "sector": reg.sector,
            "programme_code": reg.programme_code,
            "programme_name": reg.programme_name,
            "big_profession": reg.big_profession,
            "diploma_number": reg.diploma_number,
            "diploma_date": reg.diploma_date,
            "warnings": [w.code for w in p.warnings],
        }
        new_state = ResultState(
            result_id, p.identity_key, reg.institution, version, "registered", event_id, digest, 0
        )
        stored = tx.append("ResultRegistered", record, new_state)
        return Outcome("accepted", result_id, event_id, stored.position, version, warnings=p.warnings)

    def _apply_deletion(
        self, tx: Appender, p: _Pending, state: ResultState | None, batch_id: str | None
    ) -> Outcome:
        if state is None:
            return Outcome("rejected", result_id=p.result_id, errors=[problem("RESULT_NOT_FOUND")])
        if state.status == "deleted":
            return Outcome("rejected", result_id=state.result_id, errors=[problem("RESULT_ALREADY_DELETED")])
        version = state.version + 1
        event_id = event_id_for(state.result_id, version)
        record = {
            "event_id": event_id,
            "result_id": state.result_id,
            "version": version,
            "recorded_at": now_millis(),
            "institution": state.institution,
            "batch_id": batch_id,
            "registered_event_id": state.registered_event_id,
            "reason": p.reason,
            "explanation": p.explanation,
        }
        new_state = ResultState(
            state.result_id,
            state.identity_key,
            state.institution,
            version,
            "deleted",
            state.registered_event_id,
            state.data_digest,
            0,
        )
        stored = tx.append("ResultDeleted", record, new_state)
        return Outcome("accepted", state.result_id, event_id, stored.position, version)


def _log_registration(outcome: Outcome, acting: str, batch_id: str | None) -> None:
    if outcome.outcome == "accepted":
        log.info("result_registered", result_id=outcome.result_id, event_id=outcome.event_id,
                 position=outcome.position, version=outcome.version, institution=acting, batch_id=batch_id,
                 warnings=outcome.codes)
    elif outcome.outcome == "duplicate":
        log.info("registration_repeated", result_id=outcome.result_id, institution=acting)
    else:
        log.info("registration_refused", result_id=outcome.result_id, institution=acting, codes=outcome.codes)


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
