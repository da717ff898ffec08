"""Tokens from an organisation credential: Microsoft client credentials, Google service accounts.

No user signs in. Microsoft's app token is the app's own and good for every mailbox the app was
given (so one is cached per provider); a Google service account's token is for the one user its
assertion names in sub (so one is cached per mailbox). Both are renewed ahead of expiry like
users' tokens, and a credential that stops working is logged once, with the admin's fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from relay.config.appcertificate import CertificateProblem, expiry_problem, read_app_certificate
from relay.config.model import OAuthSettings
from relay.config.serviceaccount import read_service_account
from relay.errors import OAuthError, TemporaryFailure
from relay.model import OAuthClient, Secret
from relay.oauth.assertion import client_assertion, jwt_assertion
from relay.oauth.client import TokenEndpoint, TokenGrant
from relay.oauth.orgfixes import organisation_fix
from relay.oauth.orgstatus import HeldFailures

logger = logging.getLogger(__name__)

RENEW_AHEAD = 300.0
RENEW_AHEAD_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class _Cached:
    token: Secret = field(repr=False)
    renew_at: float


class OrganisationTokens:
    """Access tokens from providers' organisation credentials, cached and renewed ahead."""

    def __init__(
        self,
        endpoint: Callable[[], TokenEndpoint],
        *,
        on_secret: Callable[[Secret], None] = lambda _secret: None,
        on_failed: Callable[[str], None] = lambda _provider: None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[dict[str, str]], None] = lambda _failing: None,
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
        self._held = HeldFailures(clock)
        # Told of each change of failing (the daemon publishes it for relay status).
        self.on_change = on_change

    async def bearer(self, provider: str, settings: OAuthSettings, mailbox: str) -> Secret:
        """A token to log in as mailbox; TemporaryFailure (mail waits) if the credential fails."""
        subject = mailbox if settings.service_account_file is not None else ""
        key = (provider, settings.client_id, settings.token_url, subject)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.renew_at:
            return cached.token
        held = self._held.held(key, settings)
        if held is not None:
            raise held  # refused a moment ago, and no file of the credential changed since
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
            failure = self._failure(provider, settings, mailbox, error)
            self._held.hold(key, settings, failure)
            raise failure from None
        self._held.release(key)
        self._on_secret(grant.access_token)
        lifetime = grant.lifetime
        renew = grant.expires_at - min(RENEW_AHEAD, lifetime * RENEW_AHEAD_SHARE)
        self._cache[key] = _Cached(grant.access_token, renew)
        if self.failing.pop(provider, None) is not None:
            logger.warning("oauth.organisation_restored provider=%s", provider)
            self.on_change(dict(self.failing))
        logger.info(
            "oauth.organisation_token provider=%s mailbox=%s expires_in=%.0fs",
            provider,
            mailbox if key[-1] else "(the app's)",
            lifetime,
        )
        return grant.access_token

    async def _request(self, settings: OAuthSettings, mailbox: str) -> TokenGrant:
        endpoint = self._endpoint()
        certificate_file, key_file = settings.client_certificate_file, settings.client_key_file
        if certificate_file is not None and key_file is not None:
            return await self._certificate_grant(endpoint, settings, certificate_file, key_file)
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

    async def _certificate_grant(
        self,
        endpoint: TokenEndpoint,
        settings: OAuthSettings,
        certificate_file: Path,
        key_file: Path,
    ) -> TokenGrant:
        """Client credentials with a client assertion signed by the app's certificate key."""
        try:
            # Read at each token request: replaced files take effect without a restart.
            certificate = read_app_certificate(certificate_file, key_file)
        except CertificateProblem as problem:
            raise OAuthError(problem.key, str(problem)) from None
        self._on_secret(certificate.private_key)
        now = self._clock()
        expired = expiry_problem(certificate, certificate_file, now)
        if expired is not None:
            raise OAuthError("client_certificate_file", expired)
        client = settings.client()
        assertion = client_assertion(certificate, client.client_id, client.token_url, now)
        self._on_secret(assertion)
        return await endpoint.client_credentials(client, assertion)

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
            self.on_change(dict(self.failing))
        else:
            logger.debug("oauth.organisation_still_failing provider=%s", provider)
        return TemporaryFailure(451, "4.7.0", text, fix)
