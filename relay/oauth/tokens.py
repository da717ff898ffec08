"""OAuth2 access tokens per user: cached, renewed ahead of expiry, one refresh at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.config.model import OAuthSettings
from relay.errors import AuthorizationNeeded, GrantRevoked, OAuthError, RelayError, TemporaryFailure
from relay.model import OAuthGrant, Secret, User
from relay.oauth.client import TokenEndpoint, TokenGrant
from relay.oauth.organisation import OrganisationTokens
from relay.state.grants import REFRESH_TOKEN_FIELD
from relay.state.keys import MasterKey
from relay.state.sealing import account_context, open_secret, user_context
from relay.state.store import Store
from relay.state.writer import StoreWriter, write_to

logger = logging.getLogger("relay.tokens")  # the name shows in log lines: kept from 0.1

RENEW_AHEAD = 300.0  # seconds before expiry at which a token is renewed
RENEW_AHEAD_SHARE = 0.25  # ...or this share of its lifetime, for short-lived tokens
# A refresh token unused for long dies (Microsoft: 90 days, Google: 6 months), so a user who
# sends nothing for weeks still has theirs used this often.
IDLE_RENEWAL = 14 * 86400.0
IDLE_CHECK_INTERVAL = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class _Cached:
    token: Secret = field(repr=False)
    renew_at: float
    authorized_at: float | None  # the grant it came from: a new authorization starts afresh


def renew_at(grant: TokenGrant) -> float:
    """When to stop using an access token and get a new one."""
    return grant.expires_at - min(RENEW_AHEAD, grant.lifetime * RENEW_AHEAD_SHARE)


def refresh_token_context(user: User) -> bytes:
    """Associated data that binds a sealed refresh token to its user, provider, upstream user."""
    return user_context(user, REFRESH_TOKEN_FIELD)


class AccessTokens:
    """Hands out a valid access token per user, refreshing with the sealed refresh token."""

    def __init__(
        self,
        store: Store,
        master_key: MasterKey,
        endpoint: Callable[[], TokenEndpoint],
        *,
        on_secret: Callable[[Secret], None] = lambda _secret: None,
        on_refresh_failed: Callable[[str], None] = lambda _provider: None,
        writer: StoreWriter | None = None,
    ) -> None:
        self.store = store
        self._writer = writer
        self._key = master_key
        self._new_endpoint = endpoint
        self._endpoint: TokenEndpoint | None = None  # made at the first refresh
        self._on_secret = on_secret
        self._on_refresh_failed = on_refresh_failed
        self._cache: dict[str, _Cached] = {}
        self._refreshing: dict[str, asyncio.Task[Secret]] = {}
        self.refreshes = 0
        # Providers whose organisation credential gets every token: no grant, no sign-in.
        self.organisation = OrganisationTokens(
            self.endpoint, on_secret=on_secret, on_failed=on_refresh_failed
        )

    def endpoint(self) -> TokenEndpoint:
        """The token endpoint client, made at its first use and shared with organisation."""
        if self._endpoint is None:
            self._endpoint = self._new_endpoint()
        return self._endpoint

    async def bearer(self, login: str, provider: str, settings: OAuthSettings) -> Secret:
        """A token good for a while yet; AuthorizationNeeded if a person must sign in again."""
        grant = usable_grant(self.store, login)
        cached = self._cache.get(login)
        if (
            cached is not None
            and cached.authorized_at == grant.authorized_at
            and time.time() < cached.renew_at
        ):
            return cached.token
        task = self._refreshing.get(login)
        if task is None:
            task = asyncio.ensure_future(self._refresh(grant, provider, settings))
            self._refreshing[login] = task
            task.add_done_callback(lambda done: self._finished(login, done))
        # Shielded: one caller giving up must not cancel the refresh the others wait for.
        return await asyncio.shield(task)

    async def renew(self, login: str, provider: str, settings: OAuthSettings) -> Secret:
        """Get a new access token now, whatever the cached one's expiry."""
        self._cache.pop(login, None)
        return await self.bearer(login, provider, settings)

    async def close(self) -> None:
        """Close the token endpoint's connections."""
        if self._endpoint is not None:
            await self._endpoint.close()

    def _finished(self, login: str, task: asyncio.Task[Secret]) -> None:
        self._refreshing.pop(login, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up already

    def forget(self, login: str, token: Secret) -> None:
        """The provider refused this token: the next bearer() call gets a new one."""
        cached = self._cache.get(login)
        if cached is not None and cached.token == token:
            del self._cache[login]

    async def _refresh(self, grant: OAuthGrant, provider: str, settings: OAuthSettings) -> Secret:
        login = grant.login
        sealed = grant.sealed_refresh or b""  # usable_grant made sure there is one
        # Bound to the provider whose token endpoint it goes to: a moved row does not open.
        upstream_user = self.store.get_user(login).upstream_user
        context = account_context(login, REFRESH_TOKEN_FIELD, provider, upstream_user)
        refresh_token = open_secret(
            self._key,
            sealed,
            login=login,
            field=REFRESH_TOKEN_FIELD,
            provider=provider,
            upstream_user=upstream_user,
        )
        self._on_secret(refresh_token)
        try:
            fresh = await self.endpoint().refresh(settings.client(), refresh_token)
        except GrantRevoked as error:
            self._on_refresh_failed(provider)
            reason = f"the provider answered invalid_grant: {error.description or 'no detail'}"
            await write_to(
                self.store,
                self._writer,
                lambda store: store.grants.needs_authorization(login, reason, used=sealed),
            )
            logger.error(
                "oauth.authorization_needed user=%s provider=%s reason=%r fix=%r",
                login,
                provider,
                reason,
                f"run 'relay user authorize {login}'; queued mail waits for it",
            )
            raise AuthorizationNeeded(login, reason) from None
        except OAuthError as error:
            self._on_refresh_failed(provider)
            logger.warning(
                "oauth.refresh_failed user=%s provider=%s error=%r", login, provider, str(error)
            )
            raise refresh_failure(login, provider, error) from None
        await self._remember(grant, fresh, sealed, context)
        return fresh.access_token

    async def _remember(
        self, grant: OAuthGrant, fresh: TokenGrant, used: bytes, context: bytes
    ) -> None:
        login = grant.login
        self._on_secret(fresh.access_token)
        sealed = None
        if fresh.refresh_token is not None:
            # Rotated: the old refresh token may stop working any moment, so store this one now.
            self._on_secret(fresh.refresh_token)
            sealed = self._key.seal(fresh.refresh_token, context)
        await write_to(
            self.store,
            self._writer,
            lambda store: store.grants.refreshed(
                login, sealed, fresh.scopes, fresh.expires_at, used=used
            ),
        )
        self._cache[login] = _Cached(fresh.access_token, renew_at(fresh), grant.authorized_at)
        self.refreshes += 1
        logger.info(
            "oauth.refreshed user=%s expires_in=%.0fs rotated=%s",
            login,
            fresh.lifetime,
            "yes" if sealed else "no",
        )


def usable_grant(store: Store, login: str) -> OAuthGrant:
    """The user's grant if relay may use it; AuthorizationNeeded otherwise."""
    grant = store.grants.get(login)
    if grant is None or grant.sealed_refresh is None:
        raise AuthorizationNeeded(login, "relay was never authorized for this account")
    if grant.needs_authorization is not None:
        raise AuthorizationNeeded(login, grant.needs_authorization)
    return grant


def refresh_failure(login: str, provider: str, error: OAuthError) -> TemporaryFailure:
    """The error for a refresh that failed for another reason than a dead grant."""
    text = f"cannot renew the OAuth2 access token of {login}: {error}"
    if error.error in ("invalid_client", "unauthorized_client", "client_secret_file"):
        hint = f"check providers.{provider}.oauth2 (client_id, client_secret_file) in the config"
    elif error.error == "temporarily_unavailable":
        hint = "the provider's token endpoint is down or unreachable; relay keeps trying"
    else:
        hint = f"run 'relay check {login}' to see the authorization server's reply"
    return TemporaryFailure(451, "4.7.0", text, hint)


async def keep_grants_alive(
    tokens: AccessTokens,
    oauth_users: Callable[[], list[tuple[str, str, OAuthSettings]]],
    on_failure: Callable[[str, RelayError], Awaitable[None]] | None = None,
    *,
    idle: float = IDLE_RENEWAL,
    interval: float = IDLE_CHECK_INTERVAL,
) -> None:
    """Forever: renew the grants of OAuth2 users (login, provider, settings) unused for idle s."""
    while True:
        for login, provider, settings in oauth_users():
            grant = tokens.store.grants.get(login)
            if grant is None or grant.needs_authorization or grant.sealed_refresh is None:
                continue
            if time.time() - (grant.refreshed_at or 0.0) < idle:
                continue
            try:
                await tokens.renew(login, provider, settings)
            except RelayError as error:
                # Logged by the refresh itself when it is the grant; here only the rest.
                logger.info("oauth.keepalive_failed user=%s error=%r", login, str(error))
                if on_failure is not None:
                    await on_failure(login, error)  # a dead grant: the user may be told
        await asyncio.sleep(interval)
