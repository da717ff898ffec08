"""What relay check says about an app registration's certificate credential: expiry ahead."""

from __future__ import annotations

from relay.check.certificate import EXPIRY_WARNING_DAYS, iso_time
from relay.config.appcertificate import CertificateProblem, read_app_certificate
from relay.config.model import OAuthSettings


def certificate_facts(
    settings: OAuthSettings, now: float
) -> tuple[dict[str, object], tuple[str, ...]]:
    """The certificate's facts, and a warning when it expires within EXPIRY_WARNING_DAYS."""
    certificate_file, key_file = settings.client_certificate_file, settings.client_key_file
    if certificate_file is None or key_file is None:
        return {}, ()
    try:
        certificate = read_app_certificate(certificate_file, key_file)
    except CertificateProblem as problem:
        return {}, (f"oauth2.{problem.key}: {problem}",)
    facts: dict[str, object] = {
        "certificate": certificate.subject,
        "certificate_thumbprint_sha256": certificate.thumbprint_sha256,
        "certificate_not_after": iso_time(certificate.not_after),
    }
    days = certificate.days_left(now)
    if days >= EXPIRY_WARNING_DAYS:
        return facts, ()
    return facts, (
        f"the app's certificate in {certificate_file} expires in {days} days "
        f"({iso_time(certificate.not_after)}): mail stops then; upload a new one to the app "
        f"registration (Certificates & secrets > Certificates) and replace {certificate_file} "
        f"and {key_file}",
    )
