"""OAuth2 token endpoint calls (RFC 6749, PKCE RFC 7636, device flow RFC 8628) over httpx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from relay.errors import GrantRevoked, OAuthError, TokenEndpointUnavailable
from relay.model import OAuthClient, Secret

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("relay.oauth")  # the name shows in log lines: kept from 0.1

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
# RFC 8628 §3.5: on slow_down the interval grows by 5 s for this and every later poll.
SLOW_DOWN_STEP = 5.0
DEFAULT_DEVICE_INTERVAL = 5.0
TOKEN_ATTEMPTS = 3  # 5xx and network failures are tried this often before giving up
TOKEN_RETRY_PAUSE = 1.0  # seconds before the second try; doubled for each later one


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a successful token request returned."""

    access_token: Secret = field(repr=False)
    expires_at: float  # time.time() seconds
    lifetime: float  # seconds the server said the access token lives
    refresh_token: Secret | None = field(repr=False)  # None: keep the one we have
    scopes: tuple[str, ...]
    # OpenID Connect: who signed in, when openid was asked for (relay.web compares it).
    id_token: Secret | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """RFC 8628 §3.2: what the user must do, and what relay polls with meanwhile."""

    device_code: Secret = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: float


@dataclass(frozen=True, slots=True)
class Pkce:
    """A PKCE verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""

    verifier: Secret = field(repr=False)
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        """A fresh pair; 32 random bytes give the 43-character verifier RFC 7636 recommends."""
        verifier = secrets.token_urlsafe(32)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        return cls(Secret(verifier), challenge)


def authorization_url(
    client: OAuthClient, redirect_uri: str, state: str, pkce: Pkce, login_hint: str | None
) -> str:
    """The address the user opens to sign in and grant relay access (RFC 6749 §4.1.1)."""
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(client.scopes),
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        **dict(client.authorize_params),
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if "?" in client.authorize_url else "?"
    return client.authorize_url + separator + urlencode(params)


def token_http_client(tls: ssl.SSLContext, connect: float, read: float) -> httpx.AsyncClient:
    """The HTTP client for token requests: verified TLS, bounded waits, no redirects."""
    # RFC 6749 §3.2 has the token endpoint answer directly; a redirect would carry our
    # refresh token and client secret somewhere else.
    import httpx  # here: `relay serve` without OAuth2 users need not carry it

    return httpx.AsyncClient(
        verify=tls,
        timeout=httpx.Timeout(read, connect=connect),
        follow_redirects=False,
        trust_env=False,
        headers={"Accept": "application/json"},
    )


class TokenEndpoint:
    """Token and device-authorization requests with timeouts and retries on 5xx."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        attempts: int = TOKEN_ATTEMPTS,
        retry_pause: float = TOKEN_RETRY_PAUSE,
    ) -> None:
        self._http = http
        self._attempts = attempts
        self._retry_pause = retry_pause

    async def close(self) -> None:
        """Close the HTTP client's connections."""
        await self._http.aclose()

    async def exchange_code(
        self, client: OAuthClient, code: str, redirect_uri: str, pkce: Pkce
    ) -> TokenGrant:
        """Trade an authorization code for tokens (RFC 6749 §4.1.3)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pkce.verifier.reveal(),
        }
        return await self._grant(client, form)

    async def refresh(self, client: OAuthClient, refresh_token: Secret) -> TokenGrant:
        """A new access token for a refresh token (RFC 6749 §6); GrantRevoked if it is dead."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
        return await self._grant(client, form)

    async def client_credentials(
        self, client: OAuthClient, assertion: Secret | None = None
    ) -> TokenGrant:
        """An access token for the app itself (RFC 6749 §4.4), for client.scopes.

        With assertion the client proves itself with it (RFC 7523 §2.2) instead of a secret.
        """
        form = {"grant_type": "client_credentials", "scope": " ".join(client.scopes)}
        if assertion is not None:
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = assertion.reveal()
        return await self._grant(client, form)

    async def jwt_bearer(self, client: OAuthClient, assertion: Secret) -> TokenGrant:
        """An access token for a signed assertion (RFC 7523 §2.1): it authenticates itself."""
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion.reveal()}
        return await self._grant(client, form, authenticate=False)

    async def start_device(self, client: OAuthClient) -> DeviceAuthorization:
        """Ask for a user code to type in on another device (RFC 8628 §3.1)."""
        if client.device_url is None:
            raise OAuthError("unsupported", "this provider has no device flow for mail")
        body = await self._post(client, client.device_url, {"scope": " ".join(client.scopes)})
        try:
            interval = float(str(body.get("interval", DEFAULT_DEVICE_INTERVAL)))
            return DeviceAuthorization(
                device_code=Secret(_text(body, "device_code")),
                user_code=_text(body, "user_code"),
                # Microsoft's v2 endpoint says verification_uri; its v1 said verification_url.
                verification_uri=_text(body, "verification_uri", "verification_url"),
                verification_uri_complete=_optional_text(body, "verification_uri_complete"),
                expires_at=time.time() + float(str(body["expires_in"])),
                interval=max(interval, 0.0),
            )
        except (KeyError, ValueError) as error:
            raise _malformed(client.device_url, error) from None

    async def poll_device(self, client: OAuthClient, device: DeviceAuthorization) -> TokenGrant:
        """Poll until the user approves, refuses or the code expires (RFC 8628 §3.4, §3.5)."""
        interval = device.interval
        while True:
            await asyncio.sleep(interval)
            if time.time() >= device.expires_at:
                raise OAuthError("expired_token", "the code expired before it was used")
            try:
                return await self.device_token(client, device)
            except OAuthError as error:
                if error.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                elif error.error != "authorization_pending":
                    raise

    async def device_token(self, client: OAuthClient, device: DeviceAuthorization) -> TokenGrant:
        """One token request for a device code (RFC 8628 §3.4); OAuthError while it is pending."""
        form = {"grant_type": DEVICE_GRANT, "device_code": device.device_code.reveal()}
        return await self._grant(client, form)

    async def _grant(
        self, client: OAuthClient, form: dict[str, str], authenticate: bool = True
    ) -> TokenGrant:
        body = await self._post(client, client.token_url, form, authenticate)
        try:
            if str(body.get("token_type", "")).lower() != "bearer":
                raise ValueError(f"token_type {body.get('token_type')!r}, expected Bearer")
            lifetime = float(str(body.get("expires_in", 3600)))
            refresh = _optional_text(body, "refresh_token")
            scope = _optional_text(body, "scope")
            id_token = _optional_text(body, "id_token")
            return TokenGrant(
                access_token=Secret(_text(body, "access_token")),
                expires_at=time.time() + lifetime,
                lifetime=lifetime,
                refresh_token=None if refresh is None else Secret(refresh),
                # RFC 6749 §5.1: scope may be left out when it is what was asked for.
                scopes=tuple(scope.split()) if scope is not None else client.scopes,
                id_token=None if id_token is None else Secret(id_token),
            )
        except (KeyError, ValueError) as error:
            raise _malformed(client.token_url, error) from None

    async def _post(
        self, client: OAuthClient, url: str, form: dict[str, str], authenticate: bool = True
    ) -> Mapping[str, object]:
        """POST a form with the client's credentials; the JSON answer, or an OAuthError."""
        import httpx

        if authenticate:
            form = {**form, "client_id": client.client_id}
            if client.client_secret is not None:
                form["client_secret"] = client.client_secret.reveal()
        pause = self._retry_pause
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._http.post(url, data=form)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 500:
                    return _answer(url, response)
                problem = f"HTTP {response.status_code} {_short(response.text)}"
            if attempt < self._attempts:
                logger.info("oauth.retry url=%s attempt=%d problem=%s", url, attempt, problem)
                await asyncio.sleep(pause)
                pause *= 2
        raise TokenEndpointUnavailable(url, problem)


def _answer(url: str, response: httpx.Response) -> Mapping[str, object]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = f"HTTP {response.status_code}, not JSON: {_short(response.text)}"
        raise OAuthError("invalid_response", f"{url} answered {text}")
    if response.status_code != 200 or "error" in body:
        error = str(body.get("error", f"http_{response.status_code}"))
        description = _short(str(body.get("error_description", "")))
        if error == "invalid_grant":
            raise GrantRevoked(error, description)
        raise OAuthError(error, description)
    return body


def _text(body: Mapping[str, object], *names: str) -> str:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    raise KeyError(names[0])


def _optional_text(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) and value else None


def _malformed(url: str, error: Exception) -> OAuthError:
    what = f"missing {error}" if isinstance(error, KeyError) else str(error)
    return OAuthError("invalid_response", f"{url} answered without what RFC 6749 asks: {what}")


def _short(text: str, limit: int = 300) -> str:
    """One printable line of a server's words; an error description never holds our secrets."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
