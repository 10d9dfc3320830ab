"""The JSON the registrar's HTTP API takes and gives, as pydantic models.

Request bodies are `JsonBody`s: they forbid unknown fields (`extra="forbid"`), so the OpenAPI
document says what the server does: an unknown field is a 422 FIELD_UNKNOWN, and text that is
not Unicode a 422 TEXT_NOT_UNICODE.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.kernel.text import JsonBody


class Person(JsonBody):
    bsn: str | None = Field(None, description="Burgerservicenummer, 9 digits (8 are padded).")
    onderwijsnummer: str | None = Field(None, description="DUO's onderwijsnummer; give one of the two.")


class RegistrationIn(JsonBody):
    person: Person
    institution: str = Field(description="instellingscode, e.g. 25BE")
    branch: str = Field(description="vestigingscode, e.g. 25BE01")
    provider: str | None = Field(None, description="onderwijsaanbieder (RIO), required for PRO and VSO")
    sector: str = Field(description="VO, PRO, VSO, MBO or HO")
    programme_code: str
    diploma_number: str = Field(description="diplomavolgnummer: 1-20 letters, digits or dashes")
    diploma_date: str = Field(description="YYYY-MM-DD")

    def raw(self) -> dict[str, str | None]:
        """The flat mapping the registrar's rules read."""
        return {**self.model_dump(exclude={"person"}), **self.person.model_dump()}


class DeletionIn(JsonBody):
    reason: str = Field(description="FRAUD, ADMINISTRATIVE_ERROR, EXTRA_COURSES_OR_GRADE_IMPROVEMENT, "
                                    "WRONG_PERSON_OR_DATA or OTHER")
    explanation: str | None = Field(None, description="Required for FRAUD and OTHER.")


class ProblemOut(BaseModel):
    field: str | None
    code: str
    message: str


class ErrorOut(ProblemOut):
    line: int | None = Field(None, description="Bulk files refused as a whole: where.")


class ErrorsOut(BaseModel):
    errors: list[ErrorOut]
    correlation_id: str | None = Field(None, description="500 only: quote it when asking for help.")


class RegisteredOut(BaseModel):
    result_id: str
    event_id: str
    position: int
    warnings: list[ProblemOut]


class DeliveryOut(BaseModel):
    subscription: str
    delivered_at: str = Field(description="When it was put on the consumer's feed (ISO 8601 UTC).")
    acknowledged_at: str | None = Field(description="When the consumer confirmed it processed it, if it did.")


class ExtractOut(BaseModel):
    extract_id: str = Field(description="The extract (uittreksel) that showed this version.")
    issued_at: str = Field(description="When it was issued (ISO 8601 UTC); it stays a valid copy.")


class ImpactOut(BaseModel):
    consumers: list[str] = Field(description="Subscriptions that already received this version.")
    acknowledged: list[str] = Field(description="Of those, the ones that confirmed they processed it.")
    deliveries: list[DeliveryOut]
    extract_issued: bool
    extracts: list[ExtractOut] = Field(description="The extracts issued with this version, oldest first.")
    has_impact: bool
    message: str


class RegistrationView(BaseModel):
    person: dict[str, str]
    institution: str
    branch: str
    provider: str | None
    sector: str
    programme_code: str
    programme_name: str
    big_profession: str | None
    diploma_number: str
    diploma_date: str
    warnings: list[str]


class DeletionView(BaseModel):
    reason: str
    explanation: str | None
    registered_event_id: str


class EventOut(BaseModel):
    event_id: str
    type: Literal["ResultRegistered", "ResultDeleted"]
    version: int
    position: int
    recorded_at: str
    batch_id: str | None
    registration: RegistrationView | None = None
    deletion: DeletionView | None = None
    prev_hash: str
    hash: str


class DeletedOut(BaseModel):
    result_id: str
    event_id: str
    position: int
    version: int
    event: EventOut
    impact: ImpactOut


class DryRunOut(BaseModel):
    dry_run: bool
    result_id: str
    impact: ImpactOut


class ResultOut(BaseModel):
    result_id: str
    institution: str
    status: Literal["registered", "deleted"]
    version: int
    registration: RegistrationView = Field(description="The latest registered data.")
    events: list[EventOut]


class SummaryOut(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    warnings: int


class BatchOut(BaseModel):
    batch_id: str
    summary: SummaryOut
    feedback: str = Field(description="Where the per-record feedback can be fetched again.")


class RecordOut(BaseModel):
    record: int
    line: int
    outcome: Literal["accepted", "duplicate", "rejected"]
    result_id: str | None
    codes: list[str]


class FeedbackOut(BaseModel):
    batch_id: str
    summary: SummaryOut
    records: list[RecordOut]
