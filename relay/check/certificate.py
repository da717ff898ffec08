"""A server certificate's facts, as relay check reports them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True, slots=True)
class Certificate:
    """The facts about a server certificate that a person needs to judge it."""

    subject: str
    issuer: str
    names: tuple[str, ...]  # subjectAltName DNS names and IP addresses
    not_after: float

    def days_left(self, now: float) -> int:
        """Whole days until it expires (negative once it has)."""
        return int((self.not_after - now) // 86400)

    def warnings(self, now: float) -> tuple[str, ...]:
        """A warning when it expires within EXPIRY_WARNING_DAYS."""
        days = self.days_left(now)
        if days >= EXPIRY_WARNING_DAYS:
            return ()
        when = iso_time(self.not_after)
        if days < 0:
            return (f"the certificate expired on {when}",)
        return (
            f"the certificate expires in {days} days ({when}): mail stops once it has, "
            "unless the provider renews it",
        )

    def as_json(self, now: float) -> dict[str, object]:
        """The certificate's facts for the JSON report."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_after": iso_time(self.not_after),
            "days_left": self.days_left(now),
        }

    def describe(self, now: float) -> str:
        """One line: for which names, from whom, until when."""
        names = ", ".join(self.names) or self.subject
        return (
            f"certificate for {names} from {self.issuer}, valid until "
            f"{iso_time(self.not_after)[:10]} ({self.days_left(now)} days)"
        )


def read_certificate(der: bytes) -> Certificate:
    """The facts in a DER certificate as the TLS handshake delivered it."""
    cert = x509.load_der_x509_certificate(der)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*alt.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return Certificate(
        subject=_name(cert.subject),
        issuer=_name(cert.issuer),
        names=tuple(names),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def _name(name: x509.Name) -> str:
    # The common name when there is one, as a person would call it; else the whole name.
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        return str(common[0].value)
    return name.rfc4514_string() or "(no name)"


def iso_time(seconds: float) -> str:
    """A timestamp as ISO 8601 in UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
