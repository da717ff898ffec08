"""JWT assertions relay signs: Google's JWT bearer grant and Microsoft's client assertion.

RFC 7523 §2.1 (the assertion is the grant: a service account names the user in sub) and §2.2
(the assertion authenticates the client: an app registration's certificate credential).
"""

from __future__ import annotations

import base64
import json
import uuid

from relay.config.appcertificate import AppCertificate
from relay.config.serviceaccount import ServiceAccountKey
from relay.errors import OAuthError
from relay.model import Secret

ASSERTION_LIFETIME = 3600  # seconds; Google takes at most one hour (RFC 7523 §3 leaves it open)
# Microsoft: "a short time - 5-10 minutes after nbf at most" (certificate credentials).
CLIENT_ASSERTION_LIFETIME = 600


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_assertion(
    key: ServiceAccountKey, subject: str, scopes: tuple[str, ...], now: float
) -> Secret:
    """An RS256-signed JWT bearer assertion (RFC 7523 §3) for subject, as Google asks for it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if key.private_key_id:
        header["kid"] = key.private_key_id
    issued = int(now)
    claims = {
        "iss": key.client_email,
        "sub": subject,  # domain-wide delegation: the user whose mailbox the token opens
        "scope": " ".join(scopes),
        "aud": key.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    private = load_pem_private_key(key.private_key.reveal().encode("ascii"), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):  # read_service_account checked this
        raise OAuthError("service_account_file", "the private key is not an RSA key")
    signature = private.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return Secret(f"{signing_input}.{b64url(signature)}")


def client_assertion(
    certificate: AppCertificate, client_id: str, token_url: str, now: float
) -> Secret:
    """A PS256 client assertion for Microsoft Entra, naming the certificate by x5t#S256.

    learn.microsoft.com/entra/identity-platform/certificate-credentials: header alg PS256, typ
    JWT, x5t#S256; claims aud (the token endpoint), iss = sub = the client id, a fresh jti,
    nbf, iat and exp; the signature uses PSS padding.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    header = {"alg": "PS256", "typ": "JWT", "x5t#S256": certificate.thumbprint_sha256}
    issued = int(now)
    claims = {
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": str(uuid.uuid4()),  # RFC 7519 §4.1.7: Entra refuses an assertion used twice
        "nbf": issued,
        "iat": issued,
        "exp": issued + CLIENT_ASSERTION_LIFETIME,
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    private = load_pem_private_key(certificate.private_key.reveal().encode("ascii"), None)
    if not isinstance(private, rsa.RSAPrivateKey):  # read_app_certificate checked this
        raise OAuthError("client_key_file", "the private key is not an RSA key")
    # RFC 7518 §3.5: PS256 is RSASSA-PSS with SHA-256, MGF1 with SHA-256, a 32-octet salt.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    signature = private.sign(signing_input.encode("ascii"), pss, hashes.SHA256())
    return Secret(f"{signing_input}.{b64url(signature)}")
