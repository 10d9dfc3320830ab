"""The extract as a document: an A4 PDF with a QR code, its PAdES signature, and reading it back.

Pure functions over bytes: no database, no network. The person number arrives already masked;
a full one is refused, so it cannot end up on paper or in a log.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from io import BytesIO
from typing import Literal, TypeVar
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import segno
from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.flowables import Flowable

from services.extract.signing import SigningIdentity
from services.kernel.identifiers import MASKED_PERSON_NUMBER

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
FIELD_NAME = "RodExtractSignature"
REFERENCE = re.compile(r"RodExtractId=(\S+) RodVerificationCode=(\S+)")
INK = colors.HexColor("#154273")  # the dark blue of Dutch government documents
PAPER = colors.HexColor("#e7eef6")

Language = Literal["nl", "en"]
PersonKind = Literal["BSN", "ONDERWIJSNUMMER"]


@dataclass(frozen=True)
class ExtractResult:
    """One diploma as it stands in the register when the extract is issued."""

    result_id: str
    institution: str
    sector: str
    programme_code: str
    programme_name: str
    diploma_number: str
    diploma_date: date


@dataclass(frozen=True)
class ExtractDocument:
    """Everything printed on one extract; the person number only in masked form."""

    extract_id: str
    verification_code: str
    issued_at: datetime
    person_kind: PersonKind
    person_number_masked: str
    language: Language
    results: list[ExtractResult]
    verify_url: str

    def __post_init__(self) -> None:
        # The message never repeats the value: it could be a full person number.
        if not MASKED_PERSON_NUMBER.fullmatch(self.person_number_masked):
            raise ValueError("person_number_masked must be masked to its last three digits")
        if self.language not in WORDS:
            raise ValueError(f"language must be one of {sorted(WORDS)}")
        if self.person_kind not in ("BSN", "ONDERWIJSNUMMER"):
            raise ValueError("person_kind must be BSN or ONDERWIJSNUMMER")
        if self.issued_at.tzinfo is None:
            raise ValueError("issued_at must carry a time zone")


@dataclass
class SignatureCheck:
    """What a signature check found; a damaged or unsigned file is a finding, not an error.

    ``problem`` is None when all is well, else one stable code: ``NO_SIGNATURE``,
    ``UNREADABLE`` (not a PDF one can read), ``TAMPERED`` (the signed bytes changed),
    ``UNTRUSTED`` (intact, but not by the given chain), ``PARTIAL_COVERAGE`` (intact and
    trusted, but something was added to the file after signing).
    """

    intact: bool
    trusted: bool
    covers_whole_document: bool
    signed_at: datetime | None
    problem: str | None


WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Uittreksel Register Onderwijsdeelnemers",
        "register": "Register Onderwijsdeelnemers (ROD)",
        "intro": "Dit uittreksel vermeldt de diploma's die op het moment van afgifte in het Register "
        "Onderwijsdeelnemers zijn geregistreerd voor de persoon met het hieronder genoemde nummer.",
        "BSN": "Burgerservicenummer (BSN)",
        "ONDERWIJSNUMMER": "Onderwijsnummer",
        "issued": "Afgegeven op",
        "local_time": "Nederlandse tijd",
        "results": "Diploma's",
        "institution": "Onderwijsinstelling",
        "programme": "Opleiding",
        "diploma_number": "Diplomanummer",
        "diploma_date": "Diplomadatum",
        "none": "Er staan geen diploma's op dit uittreksel.",
        "verify": "Echtheid controleren",
        "verify_how": "Wie dit uittreksel ontvangt, kan controleren of het echt is en of de diploma's nog "
        "geregistreerd staan. Scan de QR-code of ga naar het adres hieronder en vul het "
        "uittrekselnummer en de controlecode in.",
        "address": "Controleadres",
        "extract_id": "Uittrekselnummer",
        "code": "Controlecode",
        "signed": "Dit document is digitaal ondertekend. Elke wijziging maakt de handtekening ongeldig.",
        "page": "pagina",
    },
    "en": {
        "title": "Extract from the Register of Education Participants",
        "register": "Register of Education Participants (ROD), the Netherlands",
        "intro": "This extract lists the diplomas registered in the Register of Education "
        "Participants, at the moment of issue, for the person with the number shown below.",
        "BSN": "Citizen service number (BSN)",
        "ONDERWIJSNUMMER": "Education number (onderwijsnummer)",
        "issued": "Issued on",
        "local_time": "Dutch time",
        "results": "Diplomas",
        "institution": "Institution",
        "programme": "Programme",
        "diploma_number": "Diploma number",
        "diploma_date": "Diploma date",
        "none": "There are no diplomas on this extract.",
        "verify": "Checking authenticity",
        "verify_how": "Anyone who receives this extract can check that it is genuine and that the "
        "diplomas are still registered. Scan the QR code, or go to the address below and enter "
        "the extract number and the verification code.",
        "address": "Verification address",
        "extract_id": "Extract number",
        "code": "Verification code",
        "signed": "This document is digitally signed. Any change invalidates the signature.",
        "page": "page",
    },
}

MONTHS = {
    "nl": "januari februari maart april mei juni juli augustus september oktober november december",
    "en": "January February March April May June July August September October November December",
}


def _styles() -> dict[str, ParagraphStyle]:
    body = ParagraphStyle("body", fontName="Helvetica", fontSize=9.5, leading=13)
    return {
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=8, leading=10),
        "cell": ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5),
        "head": ParagraphStyle(
            "head", parent=body, fontName="Helvetica-Bold", fontSize=8.5, leading=10.5, textColor=colors.white
        ),
        "register": ParagraphStyle("register", parent=body, fontName="Helvetica-Bold", textColor=INK),
        "title": ParagraphStyle(
            "title",
            parent=body,
            fontName="Helvetica-Bold",
            fontSize=17,
            leading=21,
            textColor=INK,
            spaceBefore=2,
            spaceAfter=8,
        ),
        "h2": ParagraphStyle(
            "h2",
            parent=body,
            fontName="Helvetica-Bold",
            fontSize=11.5,
            leading=15,
            textColor=INK,
            spaceBefore=10,
            spaceAfter=4,
        ),
    }


STYLES = _styles()


def long_date(day: date, language: str) -> str:
    """A date written out, e.g. '3 juli 2024' or '3 July 2024'."""
    return f"{day.day} {MONTHS[language].split()[day.month - 1]} {day.year}"


def _issued(doc: ExtractDocument) -> str:
    local = doc.issued_at.astimezone(AMSTERDAM)
    return f"{long_date(local.date(), doc.language)}, {local:%H:%M} ({WORDS[doc.language]['local_time']})"


def _p(text: str, style: str) -> Paragraph:
    return Paragraph(escape(text), STYLES[style])


class QrCode(Flowable):
    """A QR code drawn as vector squares, so it stays sharp at any zoom or print resolution."""

    def __init__(self, content: str, size: float) -> None:
        super().__init__()
        self.matrix = segno.make_qr(content, error="m").matrix
        self.width = self.height = size

    def draw(self) -> None:
        quiet = 4
        count = len(self.matrix) + 2 * quiet
        canvas = self.canv
        canvas.saveState()
        canvas.setFillColor(colors.white)
        canvas.rect(0, 0, self.width, self.height, stroke=0, fill=1)
        # Drawn in module units (row 0 at the top), so every coordinate is a small integer.
        canvas.translate(0, self.height)
        canvas.scale(self.width / count, -self.width / count)
        path = canvas.beginPath()
        for row_number, row in enumerate(self.matrix):
            for start, length in _dark_runs(row):
                path.rect(start + quiet, row_number + quiet, length, 1)
        canvas.setFillColor(colors.black)
        canvas.drawPath(path, stroke=0, fill=1)
        canvas.restoreState()


def _dark_runs(row: bytearray) -> list[tuple[int, int]]:
    # One rectangle per horizontal run of dark modules keeps the page stream small.
    runs, start = [], None
    for column, dark in enumerate([*row, 0]):
        if dark and start is None:
            start = column
        elif not dark and start is not None:
            runs.append((start, column - start))
            start = None
    return runs


def _lines(text: str, width: float, font: str = "Helvetica", size: float = 8.5) -> str:
    # Table cells as pre-wrapped plain text: the same look as paragraphs at a fraction of the cost.
    return "\n".join(simpleSplit(text, font, size, width - 6)) or " "


def _cell_style(background: list[tuple[object, ...]]) -> TableStyle:
    return TableStyle(
        [
            *background,
            ("FONT", (0, 0), (-1, -1), "Helvetica", 8.5, 10.5),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 3),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
        ]
    )


def _person_table(doc: ExtractDocument) -> Table:
    words = WORDS[doc.language]
    rows = [
        [words[doc.person_kind], doc.person_number_masked],
        [words["issued"], _issued(doc)],
        [words["extract_id"], doc.extract_id],
    ]
    table = Table(rows, colWidths=[60 * mm, 110 * mm], hAlign="LEFT")
    table.setStyle(_cell_style([("BACKGROUND", (0, 0), (-1, -1), PAPER)]))
    table.setStyle(
        [("FONT", (0, 0), (-1, -1), "Helvetica", 9.5, 12), ("FONT", (1, 0), (1, -1), "Helvetica-Bold")]
    )
    return table


RESULT_COLUMNS = (50 * mm, 62 * mm, 30 * mm, 28 * mm)


def _results_table(doc: ExtractDocument) -> Table | Paragraph:
    words = WORDS[doc.language]
    if not doc.results:
        return _p(words["none"], "body")
    head = [
        _lines(words[key], width, "Helvetica-Bold")
        for key, width in zip(
            ("institution", "programme", "diploma_number", "diploma_date"), RESULT_COLUMNS, strict=True
        )
    ]
    rows = [head] + [
        [
            _lines(text, width)
            for text, width in zip(
                (
                    result.institution,
                    f"{result.programme_code} \u00b7 {result.programme_name}",
                    result.diploma_number,
                    long_date(result.diploma_date, doc.language),
                ),
                RESULT_COLUMNS,
                strict=True,
            )
        ]
        for result in doc.results
    ]
    table = Table(rows, colWidths=list(RESULT_COLUMNS), repeatRows=1, hAlign="LEFT")
    table.setStyle(
        _cell_style(
            [
                ("BACKGROUND", (0, 0), (-1, 0), INK),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, PAPER]),
                ("LINEBELOW", (0, -1), (-1, -1), 0.6, INK),
            ]
        )
    )
    table.setStyle([("FONT", (0, 0), (-1, 0), "Helvetica-Bold")])
    return table


def _verification(doc: ExtractDocument) -> KeepTogether:
    words = WORDS[doc.language]
    address = doc.verify_url.split("?", 1)[0]
    text = [
        _p(words["verify_how"], "body"),
        Spacer(1, 4),
        _p(f"{words['address']}: {address}", "body"),
        _p(f"{words['extract_id']}: {doc.extract_id}", "body"),
        _p(f"{words['code']}: {doc.verification_code}", "body"),
        Spacer(1, 4),
        _p(doc.verify_url, "small"),
    ]
    table = Table([[text, QrCode(doc.verify_url, 36 * mm)]], colWidths=[130 * mm, 40 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return KeepTogether([_p(words["verify"], "h2"), table])


def _page_frame(doc: ExtractDocument) -> Callable[[Canvas, BaseDocTemplate], None]:
    words = WORDS[doc.language]

    def draw(canvas: Canvas, template: BaseDocTemplate) -> None:
        width, height = A4
        canvas.saveState()
        canvas.setFillColor(INK)
        canvas.rect(20 * mm, height - 16 * mm, 6 * mm, 10 * mm, stroke=0, fill=1)
        canvas.setStrokeColor(INK)
        canvas.setLineWidth(0.5)
        canvas.line(20 * mm, 16 * mm, width - 20 * mm, 16 * mm)
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.black)
        canvas.drawString(20 * mm, 11 * mm, words["signed"])
        page = f"{words['extract_id']} {doc.extract_id} - {words['page']} {template.page}"
        canvas.drawRightString(width - 20 * mm, 11 * mm, page)
        canvas.restoreState()

    return draw


def render(doc: ExtractDocument) -> bytes:
    """The extract as an unsigned A4 PDF (one page, more only for long lists of results)."""
    words = WORDS[doc.language]
    out = BytesIO()
    template = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=20 * mm,
        bottomMargin=22 * mm,
        title=f"{words['title']} {doc.extract_id}",
        author=words["register"],
        subject=f"{words['extract_id']} {doc.extract_id}, {words['code'].lower()} {doc.verification_code}",
        keywords=f"RodExtractId={doc.extract_id} RodVerificationCode={doc.verification_code}",
        creator="rodchain",
        lang=doc.language,
    )
    story = [
        Paragraph(escape(words["register"]), STYLES["register"]),
        _p(words["title"], "title"),
        _p(words["intro"], "body"),
        Spacer(1, 6),
        _person_table(doc),
        _p(words["results"], "h2"),
        _results_table(doc),
        _verification(doc),
    ]
    frame = _page_frame(doc)
    template.build(story, onFirstPage=frame, onLaterPages=frame)
    return out.getvalue()


T = TypeVar("T")


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Runs pyHanko's asynchronous API to completion, also when called from an async handler."""
    box: list[T] = []

    async def boxed() -> None:
        # The task returns None on purpose: Python 3.11's asyncio.run may repr() its main task,
        # and the repr of a pyHanko result DER-encodes whole certificates (tens of ms).
        box.append(await make())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(boxed())
    else:  # a loop runs in this thread already and cannot be nested: use a short-lived thread
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-pdf") as pool:
            pool.submit(asyncio.run, boxed()).result()
    return box[0]


def sign(pdf: bytes, identity: SigningIdentity, *, reason: str, location: str = "Groningen") -> bytes:
    """The document with a PAdES baseline-B signature over all of it, added incrementally."""
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason=reason,
        location=location,
    )
    pdf_signer = signers.PdfSigner(meta, signer=identity.signer)

    async def work() -> bytes:
        writer = IncrementalPdfFileWriter(BytesIO(pdf))
        out = await pdf_signer.async_sign_pdf(writer, bytes_reserved=identity.signature_room)
        return out.getvalue()

    return _run(work)


def read_reference(pdf: bytes) -> tuple[str, str] | None:
    """The extract id and verification code recorded in the document's metadata, if any."""
    try:
        info = PdfFileReader(BytesIO(pdf), strict=False).trailer["/Info"]
        keywords = str(info.get("/Keywords", ""))
    except Exception:  # any unreadable file simply has no reference
        return None
    found = REFERENCE.search(keywords)
    return (found.group(1), found.group(2)) if found else None


def check_signature(pdf: bytes, trusted_chain_pem: bytes) -> SignatureCheck:
    """Checks the extract's signature against the given chain; never raises on a bad file."""
    try:
        signatures = PdfFileReader(BytesIO(pdf), strict=False).embedded_signatures
    except Exception:  # a file too damaged to read is a finding, not an error
        return SignatureCheck(False, False, False, None, "UNREADABLE")
    if not signatures:
        return SignatureCheck(False, False, False, None, "NO_SIGNATURE")
    ours = [s for s in signatures if s.field_name == FIELD_NAME]
    embedded = (ours or signatures)[0]
    context = _context(trusted_chain_pem)  # a bad chain is the caller's mistake: that one raises
    try:
        status = _run(lambda: async_validate_pdf_signature(embedded, signer_validation_context=context))
    except Exception:  # pyHanko raises on some malformed signature containers
        return SignatureCheck(False, False, False, None, "TAMPERED")
    intact = bool(status.intact and status.valid)
    trusted = intact and bool(status.trusted)
    # Anything appended after signing (even a signature of someone else's) is not ours.
    whole = intact and status.coverage == SignatureCoverageLevel.ENTIRE_FILE and len(signatures) == 1
    problem = None
    if not intact:
        problem = "TAMPERED"
    elif not trusted:
        problem = "UNTRUSTED"
    elif not whole:
        problem = "PARTIAL_COVERAGE"
    return SignatureCheck(intact, trusted, whole, status.signer_reported_dt, problem)


def _context(trusted_chain_pem: bytes) -> ValidationContext:
    certs = list(load_certs_from_pemder_data(trusted_chain_pem))
    roots = [c for c in certs if c.self_issued] or certs[-1:]
    others = [c for c in certs if c not in roots]
    return ValidationContext(trust_roots=roots, other_certs=others)
