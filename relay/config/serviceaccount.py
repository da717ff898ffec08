"""A Google service account's JSON key file: read, checked, its private key kept as a Secret."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from relay.model import Secret

KEY_TYPE = "service_account"  # the "type" of the JSON key the Cloud console downloads


@dataclass(frozen=True, slots=True)
class ServiceAccountKey:
    """What relay signs its JWT bearer assertions with (RFC 7523 §2.1)."""

    client_email: str  # the assertion's iss
    client_id: str | None  # what the Workspace admin authorizes for domain-wide delegation
    token_uri: str  # the assertion's aud, and where it is posted
    private_key_id: str | None  # the JWT header's kid
    private_key: Secret = field(repr=False)  # PEM, PKCS #8

    def __repr__(self) -> str:
        return f"ServiceAccountKey(client_email={self.client_email!r}, private_key=***)"


def read_service_account(path: Path) -> ServiceAccountKey:
    """The key in path; ValueError saying why it is not a service-account key (no key text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"cannot read {path}: {why}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        # Only the position: the text may be a private key of another kind.
        raise ValueError(f"not a service-account key: not JSON (line {error.lineno})") from None
    if not isinstance(document, dict):
        raise ValueError("not a service-account key: expected a JSON object")
    kind = document.get("type")
    if kind != KEY_TYPE:
        shown = repr(kind) if isinstance(kind, str) and len(kind) < 40 else "missing"
        raise ValueError(
            f"not a service-account key: type is {shown}, expected {KEY_TYPE!r} "
            "(IAM & Admin > Service accounts > Keys > Add key > JSON)"
        )
    email = _text(document, "client_email")
    token_uri = _text(document, "token_uri")
    pem = _text(document, "private_key")
    _check_private_key(pem)
    return ServiceAccountKey(
        client_email=email,
        client_id=_optional(document, "client_id"),
        token_uri=token_uri,
        private_key_id=_optional(document, "private_key_id"),
        private_key=Secret(pem),
    )


def _text(document: dict[str, object], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"not a service-account key: no {name}")
    return value


def _optional(document: dict[str, object], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) and value else None


def _check_private_key(pem: str) -> None:
    """The key must be an RSA private key: Google signs and verifies with RS256."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("ascii", "replace"), password=None)
    except (ValueError, TypeError):
        raise ValueError("not a service-account key: private_key is not a PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not a service-account key: private_key is not an RSA key")
