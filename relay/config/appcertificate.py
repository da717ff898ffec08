"""An app registration's certificate credential: the certificate and its private key, as PEM.

Microsoft Entra takes a client assertion signed with the key of a certificate uploaded to the
app registration in place of a client secret (Microsoft identity platform, "certificate
credentials"); the header names the certificate by its SHA-256 thumbprint (x5t#S256).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from relay.model import Secret

CERTIFICATE_KEY = "client_certificate_file"
KEY_KEY = "client_key_file"


class CertificateProblem(ValueError):
    """Why a certificate credential cannot be used, and which oauth2 key names the file."""

    def __init__(self, key: str, why: str) -> None:
        self.key = key
        super().__init__(why)


@dataclass(frozen=True, slots=True)
class AppCertificate:
    """What relay signs client assertions with; the key is PEM, never shown."""

    thumbprint_sha256: str  # base64url of SHA-256 over the certificate's DER: x5t#S256
    not_before: float
    not_after: float
    subject: str
    private_key: Secret = field(repr=False)

    def __repr__(self) -> str:
        return f"AppCertificate(subject={self.subject!r}, private_key=***)"

    def expired(self, now: float) -> bool:
        """True once the certificate is past its notAfter (Entra refuses it from then on)."""
        return now >= self.not_after

    def days_left(self, now: float) -> int:
        """Whole days until it expires (negative once it has)."""
        return int((self.not_after - now) // 86400)


def iso(moment: float) -> str:
    """A UTC time as the admin reads it in Entra's Certificates & secrets list."""
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def read_app_certificate(certificate_file: Path, key_file: Path) -> AppCertificate:
    """The credential in the two files; CertificateProblem naming the file (never its key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    try:
        certificate = x509.load_pem_x509_certificate(_read(CERTIFICATE_KEY, certificate_file))
    except ValueError:
        why = f"{certificate_file}: not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        raise CertificateProblem(CERTIFICATE_KEY, why) from None
    pem = _read(KEY_KEY, key_file)
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        why = f"{key_file}: the key is encrypted; store it without a passphrase, mode 0600"
        raise CertificateProblem(KEY_KEY, why) from None
    except ValueError:
        raise CertificateProblem(KEY_KEY, f"{key_file}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateProblem(KEY_KEY, f"{key_file}: not an RSA key (Entra signs with RSA)")
    public = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
        why = f"{key_file}: this key does not belong to the certificate in {certificate_file}"
        raise CertificateProblem(KEY_KEY, why)
    thumbprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    return AppCertificate(
        thumbprint_sha256=base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode("ascii"),
        not_before=certificate.not_valid_before_utc.timestamp(),
        not_after=certificate.not_valid_after_utc.timestamp(),
        subject=certificate.subject.rfc4514_string(),
        private_key=Secret(pem.decode("ascii", "replace")),
    )


def expiry_problem(certificate: AppCertificate, certificate_file: Path, now: float) -> str | None:
    """Why an expired certificate no longer does; None while it is valid."""
    if not certificate.expired(now):
        return None
    return (
        f"{certificate_file}: the certificate expired on {iso(certificate.not_after)}; upload a "
        "new one to the app registration (Certificates & secrets) and replace both files"
    )


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateProblem(key, f"cannot read {path}: {error.strerror}") from None
