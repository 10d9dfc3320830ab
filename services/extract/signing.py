"""The key and certificate chain that sign extracts: loaded from PEM files, or made once.

Production names its own key and certificate (``ROD_EXTRACT_KEY`` / ``ROD_EXTRACT_CERT``);
without them the embedded default makes a small CA and a signing certificate under
``<data dir>/extract/`` the first time and reuses them after that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from asn1crypto import tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pyhanko.keys import load_certs_from_pemder_data, load_private_key_from_pemder_data
from pyhanko.sign import signers
from pyhanko.sign.attributes import CMSAttributeProvider, SignedAttributeProviderSpec
from pyhanko.sign.general import as_signing_certificate_v2
from pyhanko_certvalidator.registry import SimpleCertificateStore

CA_NAME = "rodchain extract CA (embedded default)"
SIGNER_NAME = "rodchain extract signing"
KEY_FILE = "signing-key.pem"
CERT_FILE = "signing-chain.pem"
VALIDITY = timedelta(days=5 * 365)
# RFC 9336 id-kp-documentSigning; emailProtection is what NSS (pdfsig) looks for on signers.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")


@dataclass(frozen=True)
class SigningIdentity:
    """A private key with its certificate and chain (signing certificate first, then its CAs)."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes

    @cached_property
    def signer(self) -> signers.SimpleSigner:
        """The pyHanko signer, built once per identity (keys are parsed only here)."""
        signing_cert, *others = load_certs_from_pemder_data(self.chain_pem)
        key_info = load_private_key_from_pemder_data(self.key_pem, passphrase=None)
        private_key = serialization.load_pem_private_key(self.key_pem, password=None)
        signer = _ParsedKeySigner(
            signing_cert=signing_cert,
            signing_key=key_info,
            cert_registry=SimpleCertificateStore.from_certs(others),
            private_key=private_key,
        )
        signer.signed_attr_prov_spec = _PadesSignedAttributes(signing_cert)
        return signer

    @cached_property
    def signature_room(self) -> int:
        """Bytes to reserve for the CMS blob: the embedded chain plus room for the signature."""
        # The rest of the CMS is ~600 bytes plus the signature (64 for P-256, 1024 for RSA-8192);
        # reserving exactly saves pyHanko a trial signature per document.
        size = sum(len(c.dump()) for c in load_certs_from_pemder_data(self.chain_pem)) + 2560
        return size + size % 2  # pyHanko wants an even count


class _CachedSigningCertificate(CMSAttributeProvider):
    # The signing-certificate-v2 value never changes for one signer, and asn1crypto takes
    # ~25 ms to rebuild it from the parsed certificate; reloading its DER takes microseconds.
    attribute_type = "signing_certificate_v2"

    def __init__(self, signing_cert: asn1_x509.Certificate) -> None:
        self._der = as_signing_certificate_v2(signing_cert).dump()

    async def build_attr_value(self, dry_run: bool = False) -> tsp.SigningCertificateV2:
        return tsp.SigningCertificateV2.load(self._der)


class _PadesSignedAttributes(SignedAttributeProviderSpec):
    """PAdES baseline-B signed attributes (content type and message digest come from pyHanko)."""

    def __init__(self, signing_cert: asn1_x509.Certificate) -> None:
        self._signing_certificate = _CachedSigningCertificate(signing_cert)

    def signed_attr_providers(
        self, data_digest: bytes, digest_algorithm: str
    ) -> Iterator[CMSAttributeProvider]:
        # PAdES forbids the CMS signing-time attribute; the time goes in the signature's /M.
        yield self._signing_certificate


class _ParsedKeySigner(signers.SimpleSigner):
    # pyHanko's SimpleSigner parses the DER key on every signature; for RSA that costs more
    # than the whole document, so this one signs with the key parsed once.
    def __init__(self, *, private_key: object, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._private_key = private_key

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        key = self._private_key
        try:
            mechanism = self.get_signature_mechanism_for_digest(digest_algorithm).signature_algo
        except ValueError:  # a mechanism asn1crypto cannot name: pyHanko's own path knows it
            return super().sign_raw(data, digest_algorithm)
        digest = getattr(hashes, digest_algorithm.upper().replace("-", "_"), None)
        if mechanism == "ecdsa" and isinstance(key, ec.EllipticCurvePrivateKey) and digest:
            return key.sign(data, ec.ECDSA(digest()))
        if mechanism == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPrivateKey) and digest:
            return key.sign(data, padding.PKCS1v15(), digest())
        if mechanism in ("ed25519", "ed448") and isinstance(
            key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
        ):
            return key.sign(data)
        return super().sign_raw(data, digest_algorithm)


def load_or_create(
    data_dir: Path, key_file: str | None = None, cert_file: str | None = None
) -> tuple[SigningIdentity, bool]:
    """The signing identity from the given PEM files, else the embedded default (made if absent).

    The boolean is True when the embedded default was created by this call.
    """
    if bool(key_file) != bool(cert_file):
        raise ValueError("give both the extract key and its certificate, or neither")
    if key_file and cert_file:
        return _from_files(Path(key_file), Path(cert_file)), False
    home = data_dir / "extract"
    if (home / KEY_FILE).exists() and (home / CERT_FILE).exists():
        return _from_files(home / KEY_FILE, home / CERT_FILE), False
    return _create(home), True


def _from_files(key_path: Path, cert_path: Path) -> SigningIdentity:
    key_pem = key_path.read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    own = [c for c in certs if _spki(c) == public]
    if not own:
        raise ValueError(f"no certificate in {cert_path.name} matches the key in {key_path.name}")
    rest = [c for c in certs if c is not own[0]]
    return _identity(key, own[0], rest)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _identity(key: object, cert: x509.Certificate, cas: list[x509.Certificate]) -> SigningIdentity:
    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    chain_pem = cert_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas)
    return SigningIdentity(key_pem=key_pem, cert_pem=cert_pem, chain_pem=chain_pem)


def _create(home: Path) -> SigningIdentity:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _signing_certificate(key, ca_key, ca_cert, now)
    identity = _identity(key, cert, [ca_cert])
    # The CA key is dropped here: it has issued its one certificate, and a key never stored
    # cannot leak. The chain goes first so a present key file means a complete identity.
    _write_private(home / CERT_FILE, identity.chain_pem)
    _write_private(home / KEY_FILE, identity.key_pem)
    return identity


def _write_private(path: Path, content: bytes) -> None:
    # Written to a temporary name and renamed, so a crash never leaves half a key behind.
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rodchain"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(ca_key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    public = ca_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _signing_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(SIGNER_NAME))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=not cert_sign,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
