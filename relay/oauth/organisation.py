"""Tokens from an organisation credential: Microsoft client credentials, Google service accounts.

No user signs in. Microsoft's app token is the app's own and good for every mailbox the app was
given (so one is cached per provider); a Google service account's token is for the one user its
assertion names in sub (so one is cached per mailbox). Both are renewed ahead of expiry like
users' tokens, and a credential that stops working is logged once, with the admin's fix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.config.model import OAuthSettings
from relay.config.serviceaccount import ServiceAccountKey, read_service_account
from relay.errors import OAuthError, TemporaryFailure
from relay.model import OAuthClient, Secret
from relay.oauth.client import TokenEndpoint, TokenGrant
from relay.oauth.orgfixes import organisation_fix

logger = logging.getLogger(__name__)

ASSERTION_LIFETIME = 3600  # seconds; Google takes at most one hour (RFC 7523 §3 leaves it open)
RENEW_AHEAD = 300.0
RENEW_AHEAD_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class _Cached:
    token: Secret = field(repr=False)
    renew_at: float


def _b64(data: bytes) -> str:
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
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    private = load_pem_private_key(key.private_key.reveal().encode("ascii"), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):  # read_service_account checked this
        raise OAuthError("service_account_file", "the private key is not an RSA key")
    signature = private.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return Secret(f"{signing_input}.{_b64(signature)}")


class OrganisationTokens:
    """Access tokens from providers' organisation credentials, cached and renewed ahead."""

    def __init__(
        self,
        endpoint: Callable[[], TokenEndpoint],
        *,
        on_secret: Callable[[Secret], None] = lambda _secret: None,
        on_failed: Callable[[str], None] = lambda _provider: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoint = endpoint
        self._on_secret = on_secret
        self._on_failed = on_failed
        self._clock = clock
        self._cache: dict[tuple[str, ...], _Cached] = {}
        self._pending: dict[tuple[str, ...], asyncio.Task[Secret]] = {}
        # provider -> the fix logged for its failing credential: logged once, shown in status.
        self.failing: dict[str, str] = {}
        self.requests = 0

    async def bearer(self, provider: str, settings: OAuthSettings, mailbox: str) -> Secret:
        """A token to log in as mailbox; TemporaryFailure (mail waits) if the credential fails."""
        subject = mailbox if settings.service_account_file is not None else ""
        key = (provider, settings.client_id, settings.token_url, subject)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.renew_at:
            return cached.token
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, provider, settings, mailbox))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        return await asyncio.shield(task)

    def forget(self, token: Secret) -> None:
        """The provider refused token: the next bearer() asks for a new one."""
        for key, cached in list(self._cache.items()):
            if cached.token == token:
                del self._cache[key]

    def _done(self, key: tuple[str, ...], task: asyncio.Task[Secret]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up

    async def _fetch(
        self, key: tuple[str, ...], provider: str, settings: OAuthSettings, mailbox: str
    ) -> Secret:
        self.requests += 1
        try:
            grant = await self._request(settings, mailbox)
        except OAuthError as error:
            self._on_failed(provider)
            raise self._failure(provider, settings, mailbox, error) from None
        self._on_secret(grant.access_token)
        lifetime = grant.lifetime
        renew = grant.expires_at - min(RENEW_AHEAD, lifetime * RENEW_AHEAD_SHARE)
        self._cache[key] = _Cached(grant.access_token, renew)
        if self.failing.pop(provider, None) is not None:
            logger.warning("oauth.organisation_restored provider=%s", provider)
        logger.info(
            "oauth.organisation_token provider=%s mailbox=%s expires_in=%.0fs",
            provider,
            mailbox if key[-1] else "(the app's)",
            lifetime,
        )
        return grant.access_token

    async def _request(self, settings: OAuthSettings, mailbox: str) -> TokenGrant:
        endpoint = self._endpoint()
        if settings.service_account_file is None:
            client = settings.client()
            if client.client_secret is not None:
                self._on_secret(client.client_secret)
            return await endpoint.client_credentials(client)
        try:
            account = read_service_account(settings.service_account_file)
        except ValueError as error:
            raise OAuthError("service_account_file", str(error)) from None
        self._on_secret(account.private_key)
        assertion = jwt_assertion(account, mailbox, settings.scopes, self._clock())
        self._on_secret(assertion)
        client = OAuthClient(
            client_id=settings.client_id,
            client_secret=None,
            authorize_url=settings.authorize_url,
            token_url=settings.token_url,
            device_url=None,
            scopes=settings.scopes,
        )
        return await endpoint.jwt_bearer(client, assertion)

    def _failure(
        self, provider: str, settings: OAuthSettings, mailbox: str, error: OAuthError
    ) -> TemporaryFailure:
        fix = organisation_fix(provider, settings, mailbox, error)
        text = f"the organisation credential of provider {provider!r} got no token: {error}"
        if self.failing.get(provider) != fix:
            # Once per change of state, not per mail: the queue holds the mail meanwhile.
            logger.error(
                "oauth.organisation_failed provider=%s error=%r fix=%r", provider, str(error), fix
            )
            self.failing[provider] = fix
        else:
            logger.debug("oauth.organisation_still_failing provider=%s", provider)
        return TemporaryFailure(451, "4.7.0", text, fix)
