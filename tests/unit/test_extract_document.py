"""The extract as a document: rendered, signed, and checked with real tools (poppler, zbar, pyHanko).

A Debian tool that is missing skips the tests that need it, saying which package brings it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime
from io import BytesIO
from pathlib import Path

import pytest
from asn1crypto import cms
from pyhanko.pdf_utils.generic import pdf_string
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import signers

from services.extract.document import (
    ExtractDocument,
    ExtractResult,
    check_signature,
    read_reference,
    render,
    sign,
)
from services.extract.signing import SigningIdentity, load_or_create

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FULL_NUMBER = "123456782"  # the test knows it; the document is only ever given the masked form
MASKED_NUMBER = "******782"
EXTRACT_ID = "EX-7F3A9C21"
CODE = "K7P2-M9QX-4TDW"
VERIFY_URL = f"http://127.0.0.1:8080/verify?id={EXTRACT_ID}&code={CODE}"

needs_pdfsig = pytest.mark.skipif(
    shutil.which("pdfsig") is None, reason="pdfsig (Debian poppler-utils) is not installed"
)
needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (Debian poppler-utils) is not installed"
)
needs_pdftoppm = pytest.mark.skipif(
    shutil.which("pdftoppm") is None, reason="pdftoppm (Debian poppler-utils) is not installed"
)
needs_zbarimg = pytest.mark.skipif(
    shutil.which("zbarimg") is None, reason="zbarimg (Debian zbar-tools) is not installed"
)


def results(count: int) -> list[ExtractResult]:
    return [
        ExtractResult(
            result_id=f"R-{n:04d}",
            institution="Hanzehogeschool Groningen" if n % 2 else "Stichting Noorderpoort, Groningen",
            sector="HO" if n % 2 else "MBO",
            programme_code=f"{34479 + n}",
            programme_name="B Technische Informatica" if n == 0 else f"Verpleegkunde niveau 4 ({n})",
            diploma_number=f"DN-2021-{n:06d}",
            diploma_date=date(2021, 7, 3),
        )
        for n in range(count)
    ]


def document(language: str = "nl", count: int = 2) -> ExtractDocument:
    return ExtractDocument(
        extract_id=EXTRACT_ID,
        verification_code=CODE,
        issued_at=datetime(2025, 3, 12, 13, 4, tzinfo=UTC),
        person_kind="BSN",
        person_number_masked=MASKED_NUMBER,
        language=language,  # type: ignore[arg-type]
        results=results(count),
        verify_url=VERIFY_URL,
    )


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> SigningIdentity:
    made, created = load_or_create(tmp_path_factory.mktemp("data"))
    assert created
    return made


@pytest.fixture(scope="module")
def signed(identity: SigningIdentity) -> bytes:
    return sign(render(document()), identity, reason="Uittreksel Register Onderwijsdeelnemers")


def write(directory: Path, name: str, pdf: bytes) -> Path:
    path = directory / name
    path.write_bytes(pdf)
    return path


def tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def tampered(pdf: bytes) -> bytes:
    """One byte changed inside the first page content stream (well inside the signed range)."""
    reader = PdfFileReader(BytesIO(pdf))
    content = reader.root["/Pages"]["/Kids"][0]["/Contents"]
    raw = content.get_object().encoded_data
    position = pdf.index(raw) + len(raw) // 2
    assert position < pdf.index(b"/Contents <")
    return pdf[:position] + bytes([pdf[position] ^ 0x01]) + pdf[position + 1 :]


def signature_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip()]


@needs_pdfsig
def test_pdfsig_finds_one_valid_signature(signed: bytes, tmp_path: Path) -> None:
    proc = tool("pdfsig", write(tmp_path, "extract.pdf", signed))
    lines = signature_lines(proc.stdout + proc.stderr)
    assert sum(line.startswith("Signature #") for line in lines) == 1, proc.stdout
    assert "- Signature Validation: Signature is Valid." in lines, proc.stdout
    assert "- Total document signed" in lines, proc.stdout
    # The embedded CA is in no system trust store: poppler may call it untrusted, nothing worse.
    certificate = [line for line in lines if line.startswith("- Certificate Validation:")]
    assert len(certificate) == 1
    assert certificate[0] in {
        "- Certificate Validation: Certificate is Trusted.",
        "- Certificate Validation: Certificate issuer isn't Trusted.",
        "- Certificate Validation: Certificate issuer is unknown.",
    }, certificate


def test_signature_checks_out_against_the_embedded_ca(signed: bytes, identity: SigningIdentity) -> None:
    check = check_signature(signed, identity.chain_pem)
    assert (check.intact, check.trusted, check.covers_whole_document, check.problem) == (
        True,
        True,
        True,
        None,
    )
    assert check.signed_at is not None
    assert abs((datetime.now(UTC) - check.signed_at).total_seconds()) < 600


def test_signature_is_pades_with_the_signing_certificate_attribute(signed: bytes) -> None:
    embedded = PdfFileReader(BytesIO(signed)).embedded_signatures
    assert len(embedded) == 1
    assert embedded[0].sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
    assert embedded[0].sig_object["/M"]  # the signing time, where PAdES wants it
    signer_info = embedded[0].signer_info
    attributes = {a["type"].native for a in signer_info["signed_attrs"]}
    assert attributes == {"content_type", "message_digest", "signing_certificate_v2"}
    assert isinstance(embedded[0].signed_data, cms.SignedData)


def test_the_cached_signed_attributes_are_exactly_pyhankos(identity: SigningIdentity) -> None:
    fast = identity.signer
    plain = signers.SimpleSigner(
        signing_cert=fast.signing_cert, signing_key=fast.signing_key, cert_registry=fast.cert_registry
    )

    async def attributes(signer: signers.Signer) -> bytes:
        made = await signer.signed_attrs(bytes(range(32)), "sha256", use_pades=True)
        return made.dump()

    assert asyncio.run(attributes(fast)) == asyncio.run(attributes(plain))


def test_a_changed_byte_breaks_the_signature(
    signed: bytes, identity: SigningIdentity, tmp_path: Path
) -> None:
    damaged = tampered(signed)
    check = check_signature(damaged, identity.chain_pem)
    assert not check.intact
    assert check.problem is not None
    if shutil.which("pdfsig"):
        proc = tool("pdfsig", write(tmp_path, "damaged.pdf", damaged))
        assert "Signature is Valid." not in proc.stdout + proc.stderr


def test_another_ca_is_not_trusted(signed: bytes, tmp_path: Path) -> None:
    stranger, _ = load_or_create(tmp_path)
    check = check_signature(signed, stranger.chain_pem)
    assert check.intact and not check.trusted
    assert check.problem == "UNTRUSTED"


def test_an_update_after_signing_is_not_covered(signed: bytes, identity: SigningIdentity) -> None:
    writer = IncrementalPdfFileWriter(BytesIO(signed))
    writer.root["/Lang"] = pdf_string("en")
    writer.update_root()
    out = BytesIO()
    writer.write(out)
    assert len(out.getvalue()) > len(signed)
    check = check_signature(out.getvalue(), identity.chain_pem)
    assert check.intact and not check.covers_whole_document
    assert check.problem == "PARTIAL_COVERAGE"


def test_unsigned_and_broken_files_are_findings_not_errors(identity: SigningIdentity) -> None:
    unsigned = check_signature(render(document()), identity.chain_pem)
    assert (unsigned.intact, unsigned.problem) == (False, "NO_SIGNATURE")
    garbage = check_signature(b"%PDF-1.7\nnot really\n", identity.chain_pem)
    assert not garbage.intact and garbage.problem


@needs_pdftotext
def test_text_holds_the_results_and_the_reference_but_never_the_full_number(
    signed: bytes, tmp_path: Path
) -> None:
    text = tool("pdftotext", "-layout", write(tmp_path, "extract.pdf", signed), "-").stdout
    for expected in (
        "B Technische Informatica",
        "DN-2021-000000",
        "DN-2021-000001",
        EXTRACT_ID,
        CODE,
        "Hanzehogeschool Groningen",
        "3 juli 2021",
        "Uittreksel Register Onderwijsdeelnemers",
        "http://127.0.0.1:8080/verify",
    ):
        assert expected in text, expected
    assert MASKED_NUMBER in text
    assert FULL_NUMBER not in text
    assert FULL_NUMBER.encode() not in signed


def test_a_full_person_number_is_refused() -> None:
    for unmasked in (FULL_NUMBER, "12345678", "*12345678", "***"):
        with pytest.raises(ValueError) as refused:
            replace(document(), person_number_masked=unmasked)
        assert FULL_NUMBER not in str(refused.value)


@needs_pdftoppm
@needs_zbarimg
def test_page_one_renders_and_its_qr_code_is_the_verify_address(signed: bytes, tmp_path: Path) -> None:
    pdf = write(tmp_path, "extract.pdf", signed)
    ARTIFACTS.mkdir(exist_ok=True)
    artifact = ARTIFACTS / "extract-page1"
    proc = tool("pdftoppm", "-r", "80", "-png", "-f", "1", "-l", "1", "-singlefile", pdf, artifact)
    assert proc.returncode == 0, proc.stderr
    png = artifact.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sharp = tmp_path / "page"
    assert (
        tool("pdftoppm", "-r", "150", "-png", "-f", "1", "-l", "1", "-singlefile", pdf, sharp).returncode == 0
    )
    scan = tool("zbarimg", "--quiet", "--raw", sharp.with_suffix(".png"))
    assert scan.stdout.splitlines() == [VERIFY_URL], scan.stdout + scan.stderr


def test_the_reference_reads_back(signed: bytes) -> None:
    assert read_reference(signed) == (EXTRACT_ID, CODE)
    assert read_reference(b"not a pdf") is None


@needs_pdftotext
@pytest.mark.parametrize(
    ("language", "title", "other"),
    [
        ("nl", "Uittreksel Register Onderwijsdeelnemers", "Extract from the Register"),
        ("en", "Extract from the Register of Education Participants", "Uittreksel Register"),
    ],
)
def test_the_language_decides_every_word(language: str, title: str, other: str, tmp_path: Path) -> None:
    text = tool("pdftotext", write(tmp_path, "x.pdf", render(document(language))), "-").stdout
    assert title in text and other not in text
    assert ("3 July 2021" in text) == (language == "en")
    assert ("Verification code" in text) == (language == "en")


@needs_pdftotext
def test_forty_results_flow_onto_a_second_page(identity: SigningIdentity, tmp_path: Path) -> None:
    pdf = sign(render(document(count=40)), identity, reason="test")
    assert len(PdfFileReader(BytesIO(pdf)).root["/Pages"]["/Kids"]) == 2
    assert check_signature(pdf, identity.chain_pem).intact
    text = tool("pdftotext", write(tmp_path, "long.pdf", pdf), "-").stdout
    assert all(f"DN-2021-{n:06d}" in text for n in range(40))
    assert "pagina 2" in text


def test_signing_works_inside_an_event_loop(identity: SigningIdentity) -> None:
    async def in_a_handler() -> bytes:
        return sign(render(document()), identity, reason="test")

    assert check_signature(asyncio.run(in_a_handler()), identity.chain_pem).intact


def test_the_embedded_default_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first, created = load_or_create(tmp_path)
    again, created_again = load_or_create(tmp_path)
    assert created and not created_again
    assert again == first
    home = tmp_path / "extract"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = sorted(home.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert first.chain_pem.startswith(first.cert_pem) and first.chain_pem.count(b"BEGIN CERTIFICATE") == 2


def test_named_key_and_certificate_files_are_used(tmp_path: Path) -> None:
    made, _ = load_or_create(tmp_path / "a")
    key, chain = tmp_path / "key.pem", tmp_path / "chain.pem"
    key.write_bytes(made.key_pem)
    # A chain file in any order: the certificate that matches the key is the signing one.
    certificates = made.chain_pem.split(b"-----END CERTIFICATE-----\n")
    chain.write_bytes(certificates[1] + b"-----END CERTIFICATE-----\n" + made.cert_pem)
    loaded, created = load_or_create(tmp_path / "b", key_file=str(key), cert_file=str(chain))
    assert not created and loaded == made
    assert not (tmp_path / "b").exists()  # nothing is written when the files are named
    other, _ = load_or_create(tmp_path / "c")
    key.write_bytes(other.key_pem)
    with pytest.raises(ValueError):
        load_or_create(tmp_path / "b", key_file=str(key), cert_file=str(chain))


def test_keys_never_leave_the_data_directory(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    load_or_create(tmp_path)
    assert set(os.listdir(tmp_path)) - before == {"extract"}
