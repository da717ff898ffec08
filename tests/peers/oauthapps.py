"""The test OAuth2 server's organisation grants: client credentials and RFC 7523 JWT bearer.

An app (Microsoft's app-only registration) gets tokens of its own with client_credentials for
RESOURCE/.default; they carry its consented roles and name no mailbox but its tenant's domain,
as app@DOMAIN, which is what Dovecot's second oauth2 passdb compares (username_format = %d):
the app may log in as any mailbox of its domain, as Exchange lets a service principal with
FullAccess do. A service account signs a JWT naming the user in sub; its token is that user's,
checked by the strict passdb like any user's token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.peers.oauthtokens import Basic, Form, OAuthError, requested_scopes, required

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
APP_ROLES = ("SMTP.SendAsApp", "IMAP.AccessAsApp", "Mail.Send")
DEFAULT_RESOURCE_SCOPE = "https://outlook.office365.com/.default"
CLOCK_SKEW = 60  # seconds an assertion's iat may lie in the future
MAX_ASSERTION_LIFETIME = 3600  # Google's limit on exp - iat


@dataclass
class App:
    """An app registration with a client secret, consented roles, and its tenant's domain."""

    client_id: str
    secret: str = field(repr=False)
    domain: str
    roles: tuple[str, ...]
    # x5t#S256 -> the uploaded certificate (Certificates & secrets > Certificates)
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)


@dataclass
class ServiceAccount:
    """A service account whose client id the Workspace admin authorized for some scopes."""

    client_email: str
    client_id: str
    domain: str
    public_key: rsa.RSAPublicKey
    delegated: tuple[str, ...]


@dataclass
class AppAccess:
    """An app token: whose, for which roles, until when."""

    app: App
    expires_at: float


class OrganisationGrants:
    """Mixed into TokenEndpoints: the app and service-account registrations and their grants."""

    access_token_lifetime: int

    @property
    def token_url(self) -> str:
        """The token endpoint: a service account's assertions name it as their aud."""
        raise NotImplementedError

    _lock: Any

    def _reset_organisation(self) -> None:
        self._apps: dict[str, App] = {}
        self._service_accounts: dict[str, ServiceAccount] = {}
        self._app_access: dict[str, AppAccess] = {}
        self._app_introspections: list[Form] = []
        self.assertions: list[dict[str, Any]] = []  # the claims of every JWT bearer grant
        self.client_assertions: list[dict[str, Any]] = []  # (header | claims) of each one
        self._used_jti: set[str] = set()

    def register_app(self, domain: str, roles: tuple[str, ...] = APP_ROLES) -> tuple[str, str]:
        """(client_id, client_secret) of a new app registration for the tenant of domain."""
        app = App(f"app-{secrets.token_hex(4)}", secrets.token_urlsafe(24), domain, roles)
        with self._lock:
            self._apps[app.client_id] = app
        return app.client_id, app.secret

    def new_app_secret(self, client_id: str) -> str:
        """Revoke the app's secret and give it a new one; its tokens stop working too."""
        with self._lock:
            app = self._apps[client_id]
            app.secret = secrets.token_urlsafe(24)
            self._app_access = {t: a for t, a in self._app_access.items() if a.app is not app}
            return app.secret

    def upload_certificate(self, client_id: str, certificate: x509.Certificate) -> None:
        """The admin uploads a certificate to the app registration (its public key only)."""
        with self._lock:
            self._apps[client_id].certificates[thumbprint(certificate)] = certificate

    def remove_certificates(self, client_id: str) -> None:
        """The admin deletes the app's certificates; its tokens stop working too."""
        with self._lock:
            app = self._apps[client_id]
            app.certificates.clear()
            self._app_access = {t: a for t, a in self._app_access.items() if a.app is not app}

    def app_token_roles(self, token: str, mailbox: str) -> tuple[str, ...] | None:
        """The roles of an active app token good for mailbox (its domain); None if not."""
        with self._lock:
            access = self._app_access.get(token)
            if access is None or access.expires_at <= time.time():
                return None
            if mailbox.rpartition("@")[2].lower() != access.app.domain:
                return ()
            return access.app.roles

    def register_service_account(self, domain: str, delegated: tuple[str, ...]) -> dict[str, str]:
        """A new service account of the Workspace domain; its JSON key, as the console gives it."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        client_id = str(secrets.randbelow(10**20))
        email = f"relay-{secrets.token_hex(3)}@project.iam.gserviceaccount.com"
        account = ServiceAccount(email, client_id, domain, key.public_key(), delegated)
        with self._lock:
            self._service_accounts[email] = account
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": "relay-tests",
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": client_id,
            "token_uri": self.token_url,
        }

    @property
    def app_introspection_requests(self) -> list[Form]:
        """Every form posted to the app tokens' introspection endpoint."""
        with self._lock:
            return [dict(form) for form in self._app_introspections]

    def _client_credentials_grant(self, form: Form, basic: Basic) -> dict[str, Any]:
        """RFC 6749 §4.4, as Microsoft's: one RESOURCE/.default scope, the app's roles back."""
        client_id, secret = basic if basic is not None else (form.get("client_id"), None)
        secret = secret if basic is not None else form.get("client_secret")
        app = self._apps.get(client_id or "")
        if app is None:
            raise OAuthError("unauthorized_client", "AADSTS700016: application not found")
        if form.get("client_assertion_type") == CLIENT_ASSERTION_TYPE:
            self._check_client_assertion(app, form.get("client_assertion") or "")
        elif not secrets.compare_digest(secret or "", app.secret):
            raise OAuthError(
                "invalid_client", "AADSTS7000215: Invalid client secret provided.", 401
            )
        scope = required(form, "scope")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            raise OAuthError("invalid_scope", "AADSTS1002012: the scope must be RESOURCE/.default")
        token = secrets.token_urlsafe(32)
        lifetime = self.access_token_lifetime
        self._app_access[token] = AppAccess(app, time.time() + lifetime)
        return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}

    def _check_client_assertion(self, app: App, assertion: str) -> None:
        """Microsoft's certificate credential: PS256 (or RS256) by a certificate of the app."""
        header, claims, signing_input, signature = _parts(assertion)
        self.client_assertions.append(header | claims)
        certificate = app.certificates.get(str(header.get("x5t#S256", "")))
        if certificate is None:
            raise OAuthError(
                "invalid_client", "AADSTS700027: Client assertion failed signature validation.", 401
            )
        public = certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        schemes = {"PS256": pss, "RS256": padding.PKCS1v15()}
        scheme = schemes.get(str(header.get("alg")))
        try:
            if scheme is None:
                raise InvalidSignature
            public.verify(signature, signing_input, scheme, hashes.SHA256())
        except InvalidSignature:
            raise OAuthError(
                "invalid_client", "AADSTS700027: Client assertion failed signature validation.", 401
            ) from None
        now = time.time()
        if now >= certificate.not_valid_after_utc.timestamp():
            raise OAuthError(
                "invalid_client",
                "AADSTS700027: The certificate with identifier used to sign the client assertion "
                "is expired on application.",
                401,
            )
        claimed = (claims.get("aud"), claims.get("iss"), claims.get("sub"))
        if claimed != (self.token_url, app.client_id, app.client_id):
            raise OAuthError("invalid_client", "AADSTS700023: aud, iss or sub is wrong", 401)
        nbf, exp, jti = claims.get("nbf", 0), claims.get("exp", 0), str(claims.get("jti", ""))
        if not float(nbf) - CLOCK_SKEW <= now < float(exp):
            raise OAuthError(
                "invalid_client", "AADSTS700024: Client assertion is not within its valid time", 401
            )
        if not jti or jti in self._used_jti:
            raise OAuthError("invalid_client", "AADSTS700025: the assertion was used before", 401)
        self._used_jti.add(jti)

    def _jwt_bearer_grant(self, form: Form) -> tuple[str, str, tuple[str, ...]]:
        """RFC 7523 §2.1, §3: (sub, client_id, scopes) of a valid assertion, else OAuthError."""
        header, claims, signing_input, signature = _parts(required(form, "assertion"))
        account = self._service_accounts.get(str(claims.get("iss", "")))
        if header.get("alg") != "RS256" or account is None:
            raise OAuthError("invalid_grant", "Invalid JWT: unknown issuer or algorithm")
        try:
            account.public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from None
        self.assertions.append(dict(claims))
        now = time.time()
        issued, expires = float(claims.get("iat", 0)), float(claims.get("exp", 0))
        if claims.get("aud") != self.token_url:
            raise OAuthError("invalid_grant", "Invalid JWT: aud is not the token endpoint")
        if not issued - CLOCK_SKEW <= now < expires or expires - issued > MAX_ASSERTION_LIFETIME:
            raise OAuthError("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        subject = str(claims.get("sub", ""))
        if subject.rpartition("@")[2].lower() != account.domain:
            raise OAuthError("invalid_grant", "Invalid email or User ID")
        scopes = requested_scopes(str(claims.get("scope", "")) or None)
        if not set(scopes) <= set(account.delegated):
            raise OAuthError(
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client "
                "not authorized for any of the scopes requested.",
            )
        return subject, account.client_id, scopes

    def _introspect_app_token(self, token: str) -> dict[str, Any]:
        """RFC 7662 §2.2 for an app token: active, named app@DOMAIN, its roles as scope."""
        access = self._app_access.get(token)
        if access is None or access.expires_at <= time.time():
            return {"active": False}
        return {
            "active": True,
            "username": f"app@{access.app.domain}",
            "scope": " ".join(access.app.roles),
            "client_id": access.app.client_id,
            "token_type": "Bearer",
            "exp": int(access.expires_at),
        }


def _parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """A compact JWS's header, claims, signing input and signature (RFC 7515 §7.1)."""
    pieces = assertion.split(".")
    if len(pieces) != 3:
        raise OAuthError("invalid_grant", "Invalid JWT: not three dot-separated parts")
    try:
        header, claims = (json.loads(_unb64(piece)) for piece in pieces[:2])
        signature = _unb64(pieces[2])
    except ValueError:
        raise OAuthError("invalid_grant", "Invalid JWT: not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise OAuthError("invalid_grant", "Invalid JWT: header and claims must be objects")
    return header, claims, f"{pieces[0]}.{pieces[1]}".encode(), signature


def thumbprint(certificate: x509.Certificate) -> str:
    """x5t#S256: base64url SHA-256 over the certificate's DER (RFC 7515 §4.1.8)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def self_signed_certificate(
    days: float, *, start_days_ago: float = 1.0, name: str = "relay app"
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A certificate and key as an admin makes them for an app registration (openssl req -x509)."""
    import datetime

    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=start_days_ago))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def pem_files(
    root: Path, certificate: x509.Certificate, key: rsa.RSAPrivateKey, stem: str = "app"
) -> tuple[str, str]:
    """The certificate and its key written as PEM files (the key 0600), as relay reads them."""
    root.mkdir(parents=True, exist_ok=True)
    certificate_path, key_path = root / f"{stem}.crt", root / f"{stem}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(certificate_path), str(key_path)
