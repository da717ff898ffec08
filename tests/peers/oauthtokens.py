"""The test OAuth2 server's token side: clients, grants and the back-channel endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAIL_SCOPE = "mail"  # what Dovecot requires a token to carry (its oauth2 passdb `scope`)
DEFAULT_SCOPES = (MAIL_SCOPE, "offline_access")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5
POLL_SLACK = 0.05  # seconds a poll may come early, for clock granularity
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: base-20, no vowels
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3
CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))  # RFC 6749 §5.1
ISSUER = "https://oauth.peers.test"  # OpenID Connect iss of the ID tokens

Form = dict[str, str]
Basic = tuple[str, str] | None  # (client_id, secret) from an HTTP Basic header


@dataclass(frozen=True)
class OAuthClient:
    """A registered client; a public one has no secret."""

    client_id: str
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Grant:
    """One user's consent to one client for some scopes; tokens refer to it."""

    username: str
    client_id: str
    scopes: tuple[str, ...]


@dataclass
class _Access:
    """An access token's grant, scopes and expiry (epoch seconds)."""

    grant: Grant
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class Code:
    """An authorization code and what it was issued for."""

    grant: Grant
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False


@dataclass
class _Device:
    """A pending device authorization (RFC 8628)."""

    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    interval: int
    last_poll: float  # time.monotonic() of issue or last poll
    username: str | None = None
    denied: bool = False


@dataclass(frozen=True)
class Reply:
    """An HTTP response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class OAuthError(Exception):
    """An error response per RFC 6749 §5.2 (and RFC 8628 §3.5)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def reply(self) -> Reply:
        """The JSON error response."""
        # RFC 6749 §5.2: a 401 carries WWW-Authenticate for the scheme the client can use.
        extra = (("WWW-Authenticate", 'Basic realm="oauth"'),) if self.status == 401 else ()
        body = {"error": self.error, "error_description": self.description}
        return _json(self.status, body, NO_STORE + extra)


class TokenEndpoints(ABC):
    """The token, device authorization and introspection endpoints, over in-memory grants."""

    def __init__(
        self,
        *,
        signed_in_as: str | None = None,
        device_interval: int = 1,
        access_token_lifetime: int = 3600,
        device_code_lifetime: int = 600,
    ) -> None:
        self.client_id = "relay-confidential"
        self.client_secret = secrets.token_urlsafe(24)
        self.public_client_id = "relay-public"
        # The protected resource (Dovecot) authenticates to the introspection endpoint.
        self.resource_client_id = "dovecot"
        self.resource_client_secret = secrets.token_urlsafe(24)
        self._clients = {
            self.client_id: OAuthClient(self.client_id, self.client_secret),
            self.public_client_id: OAuthClient(self.public_client_id),
        }
        self._defaults = (
            signed_in_as,
            device_interval,
            access_token_lifetime,
            device_code_lifetime,
        )
        self._lock = threading.Lock()
        self.reset()

    @property
    @abstractmethod
    def verification_url(self) -> str:
        """Where the user enters a device flow's user code (RFC 8628 §3.2)."""

    def reset(self) -> None:
        """Forget every code, token and request, and set each knob back to its default."""
        with self._lock:
            # Knobs: tests assign these; the handlers read them under the lock.
            self.signed_in_as: str | None = self._defaults[0]
            self.device_interval: int = self._defaults[1]
            self.access_token_lifetime: int = self._defaults[2]
            self.device_code_lifetime: int = self._defaults[3]
            self.deny_next_authorization = False
            self.rotate_refresh_tokens = False
            self._codes: dict[str, Code] = {}
            self._access: dict[str, _Access] = {}
            self._refresh: dict[str, Grant] = {}
            self._devices: dict[str, _Device] = {}
            self._refreshes: Counter[str] = Counter()
            self._failures: list[int] = []
            self._token_requests: list[Form] = []
            self._introspections: list[Form] = []

    def _token(self, form: Form, basic: Basic) -> Reply:
        """RFC 6749 §3.2: the token endpoint."""
        self._token_requests.append(dict(form))
        if self._failures:
            status = self._failures.pop(0)
            return Reply(status, b"<html><body>Service unavailable</body></html>", "text/html")
        client = self._authenticate(form, basic)
        grant_type = required(form, "grant_type")
        grants = {
            "authorization_code": self._code_grant,
            "refresh_token": self._refresh_grant,
            DEVICE_GRANT: self._device_grant,
        }
        if grant_type not in grants:
            raise OAuthError("unsupported_grant_type", f"{grant_type} is not supported")
        return _json(200, grants[grant_type](client, form), NO_STORE)

    def _code_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 6749 §4.1.3 with RFC 7636 §4.6: exchange a code once, with its PKCE verifier."""
        code, redirect_uri = required(form, "code"), required(form, "redirect_uri")
        verifier = required(form, "code_verifier")
        record = self._codes.get(code)
        if record is None or record.expires_at < time.time():
            raise OAuthError("invalid_grant", "authorization code unknown or expired")
        if record.used:
            # §4.1.2: a code used twice is denied, and the tokens issued for it are revoked.
            self._revoke(lambda grant: grant is record.grant)
            raise OAuthError("invalid_grant", "authorization code already used")
        record.used = True
        if record.grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "authorization code was issued to another client")
        if redirect_uri != record.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not CODE_VERIFIER.fullmatch(verifier) or not secrets.compare_digest(
            expected, record.challenge
        ):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return self._issue(record.grant, record.grant.scopes, refresh=True)

    def _refresh_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 6749 §6: a new access token, and a new refresh token when rotating."""
        refresh = required(form, "refresh_token")
        grant = self._refresh.get(refresh)
        if grant is None:
            raise OAuthError("invalid_grant", "refresh token is invalid, expired or revoked")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "refresh token was issued to another client")
        scopes = requested_scopes(form["scope"]) if "scope" in form else grant.scopes
        if not set(scopes) <= set(grant.scopes):
            raise OAuthError("invalid_scope", "scope exceeds what the user granted")
        if self.rotate_refresh_tokens:
            del self._refresh[refresh]
        self._refreshes[grant.username] += 1
        return self._issue(grant, scopes, refresh=self.rotate_refresh_tokens)

    def _device_grant(self, client: OAuthClient, form: Form) -> dict[str, Any]:
        """RFC 8628 §3.4, §3.5: poll for the user's decision."""
        device_code = required(form, "device_code")
        device = self._devices.get(device_code)
        if device is None or device.client_id != client.client_id:
            raise OAuthError("invalid_grant", "device_code unknown or issued to another client")
        if time.time() > device.expires_at:
            raise OAuthError("expired_token", "device_code expired; start again")
        now = time.monotonic()
        too_soon = now - device.last_poll < device.interval - POLL_SLACK
        device.last_poll = now
        if too_soon:
            device.interval += SLOW_DOWN_STEP
            raise OAuthError("slow_down", f"poll at most every {device.interval:g} s")
        if device.denied:
            raise OAuthError("access_denied", "the user declined")
        if device.username is None:
            raise OAuthError("authorization_pending", "the user has not answered yet")
        del self._devices[device_code]
        grant = Grant(device.username, client.client_id, device.scopes)
        return self._issue(grant, grant.scopes, refresh=True)

    def _device_authorization(self, form: Form, basic: Basic) -> Reply:
        """RFC 8628 §3.1, §3.2: a device code and a user code to enter at verification_url."""
        client = self._authenticate(form, basic)
        scopes = requested_scopes(form.get("scope"))
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        expires_at = time.time() + self.device_code_lifetime
        self._devices[device_code] = _Device(
            user_code, client.client_id, scopes, expires_at, self.device_interval, time.monotonic()
        )
        body = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_url,
            "verification_uri_complete": f"{self.verification_url}?user_code={user_code}",
            "expires_in": self.device_code_lifetime,
            "interval": self.device_interval,
        }
        return _json(200, body, NO_STORE)

    def _introspect(self, form: Form, basic: Basic) -> Reply:
        """RFC 7662 §2.2: whether an access token is active, and for whom."""
        client_id, secret = _credentials(form, basic)
        if client_id != self.resource_client_id or not secrets.compare_digest(
            secret or "", self.resource_client_secret
        ):
            raise OAuthError(
                "invalid_client", "introspection needs the resource's credentials", 401
            )
        self._introspections.append(dict(form))
        access = self._access.get(required(form, "token"))
        # Only access tokens are introspected active: a refresh token is no bearer credential.
        if access is None or access.expires_at <= time.time():
            return _json(200, {"active": False}, NO_STORE)
        body = {
            "active": True,
            "username": access.grant.username,
            "sub": access.grant.username,
            "scope": " ".join(access.scopes),
            "client_id": access.grant.client_id,
            "token_type": "Bearer",
            "exp": int(access.expires_at),
        }
        return _json(200, body, NO_STORE)

    def _authenticate(self, form: Form, basic: Basic) -> OAuthClient:
        """RFC 6749 §2.3: the client, by Basic auth or client_secret in the body, or public."""
        if basic is not None and "client_secret" in form:
            raise OAuthError("invalid_request", "more than one client authentication method")
        if basic is not None and form.get("client_id", basic[0]) != basic[0]:
            raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        client_id, secret = _credentials(form, basic)
        client = self._clients.get(client_id or "")
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if client.secret is None and secret is not None:
            raise OAuthError("invalid_client", "a public client must not send a secret", 401)
        if client.secret is not None and not secrets.compare_digest(secret or "", client.secret):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client

    def _issue(self, grant: Grant, scopes: tuple[str, ...], refresh: bool) -> dict[str, Any]:
        """Store and describe a new access token, and a refresh token if asked (§5.1)."""
        access = secrets.token_urlsafe(32)
        lifetime = self.access_token_lifetime
        self._access[access] = _Access(grant, scopes, time.time() + lifetime)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }
        if refresh:
            body["refresh_token"] = secrets.token_urlsafe(32)
            self._refresh[body["refresh_token"]] = grant
        if "openid" in scopes:
            body["id_token"] = id_token(grant, lifetime)
        return body

    def _revoke(self, matches: Callable[[Grant], bool]) -> None:
        """Drop the access and refresh tokens of every grant that matches."""
        self._access = {t: a for t, a in self._access.items() if not matches(a.grant)}
        self._refresh = {t: g for t, g in self._refresh.items() if not matches(g)}

    def _device_by_user_code(self, user_code: str) -> _Device:
        """The pending device for a user code, ignoring case and dashes (RFC 8628 §6.1)."""
        wanted = user_code.replace("-", "").upper()
        for device in self._devices.values():
            if device.user_code.replace("-", "") == wanted:
                return device
        raise KeyError(f"no pending device authorization with user code {user_code!r}")


def id_token(grant: Grant, lifetime: int) -> str:
    """An OpenID Connect ID token naming who signed in; unsigned, as it goes by back channel."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": grant.username, "aud": grant.client_id, "iat": now}
    claims |= {"exp": now + lifetime, "email": grant.username, "email_verified": True}

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _credentials(form: Form, basic: Basic) -> tuple[str | None, str | None]:
    """(client_id, secret) from Basic credentials if given, else from the form."""
    if basic is not None:
        return basic
    return form.get("client_id"), form.get("client_secret")


def required(form: Form, name: str) -> str:
    """A parameter that must be present."""
    if name not in form:
        raise OAuthError("invalid_request", f"{name} is required")
    return form[name]


def requested_scopes(scope: str | None) -> tuple[str, ...]:
    """Requested scopes (RFC 6749 §3.3), or the default set when none are given."""
    if scope is None:
        return DEFAULT_SCOPES
    scopes = tuple(dict.fromkeys(scope.split(" ")))
    if not all(SCOPE_TOKEN.fullmatch(token) for token in scopes):
        raise OAuthError("invalid_scope", "malformed scope")
    return scopes


def _json(status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON reply."""
    return Reply(status, json.dumps(body).encode(), "application/json", headers)
