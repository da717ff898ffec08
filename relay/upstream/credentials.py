"""What a user logs in upstream with: their sealed password, or an OAuth2 access token."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from relay.config.model import ProviderConfig, RelayConfig
from relay.errors import PolicyRejection
from relay.model import Secret, UpstreamAuth, User
from relay.oauth.client import TokenEndpoint, token_http_client
from relay.oauth.orgstatus import publisher
from relay.oauth.tokens import AccessTokens, usable_grant
from relay.state.keys import MasterKey
from relay.state.sealing import UPSTREAM_CREDENTIAL, open_secret
from relay.state.store import Store
from relay.state.writer import StoreWriter
from relay.tls import TlsContexts


@dataclass(frozen=True, slots=True)
class UpstreamSecret:
    """An opened upstream secret and how to present it."""

    secret: Secret = field(repr=False)
    bearer: bool  # an OAuth2 access token, for XOAUTH2 or OAUTHBEARER; else a password
    # Names the credential without revealing it: a pooled session is reused only for the same.
    identity: str


class Credentials:
    """Opens users' upstream secrets for delivery, Sent copies and `relay check`."""

    def __init__(
        self,
        master_key: MasterKey,
        tokens: AccessTokens,
        on_secret: Callable[[Secret], None] = lambda _secret: None,
    ) -> None:
        self._key = master_key
        self.tokens = tokens
        self._on_secret = on_secret

    async def open(self, user: User, provider: ProviderConfig) -> UpstreamSecret:
        """The secret to log in as user; PolicyRejection or AuthorizationNeeded if there is none."""
        if user.auth is UpstreamAuth.OAUTH2:
            return await self._access_token(user, provider)
        if user.sealed_secret is None:
            raise PolicyRejection(
                451,
                "4.7.0",
                f"no upstream password stored for {user.login}; run 'relay user set-password'",
            )
        # Bound to the provider it goes to: a row pointed elsewhere does not open.
        secret = open_secret(
            self._key,
            user.sealed_secret,
            login=user.login,
            field=UPSTREAM_CREDENTIAL,
            provider=provider.name,
            upstream_user=user.upstream_user,
        )
        self._on_secret(secret)
        return UpstreamSecret(secret, bearer=False, identity=_fingerprint(user.sealed_secret))

    def refused(self, user: User, opened: UpstreamSecret) -> bool:
        """The provider refused opened: True when a fresh access token may do better."""
        if not opened.bearer:
            return False
        self.tokens.forget(user.login, opened.secret)
        self.tokens.organisation.forget(opened.secret)
        return True

    async def _access_token(self, user: User, provider: ProviderConfig) -> UpstreamSecret:
        if provider.oauth2 is None:
            raise PolicyRejection(
                451,
                "4.7.0",
                f"{user.login} logs in with OAuth2 but provider {provider.name!r} has no oauth2 "
                "section in the config",
            )
        if provider.oauth2.organisation:
            # No grant of the user's: the organisation's app or service account stands in.
            organisation = self.tokens.organisation
            token = await organisation.bearer(provider.name, provider.oauth2, user.upstream_user)
            identity = _fingerprint(f"organisation {provider.oauth2.client_id}".encode())
            return UpstreamSecret(token, bearer=True, identity=identity)
        token = await self.tokens.bearer(user.login, provider.name, provider.oauth2)
        grant = usable_grant(self.tokens.store, user.login)
        identity = _fingerprint(f"oauth2 {grant.authorized_at}".encode())
        return UpstreamSecret(token, bearer=True, identity=identity)


def _fingerprint(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


def open_credentials(
    config: RelayConfig,
    store: Store,
    master_key: MasterKey,
    tls: TlsContexts,
    on_secret: Callable[[Secret], None] = lambda _secret: None,
    on_refresh_failed: Callable[[str], None] = lambda _provider: None,
    writer: StoreWriter | None = None,
    publish_to: Path | None = None,
) -> Credentials:
    """Credentials for the daemon or the CLI, with the token endpoint made on first use."""

    def endpoint() -> TokenEndpoint:
        upstream = config.upstream
        http = token_http_client(tls.for_ca_file(None), upstream.connect_timeout, upstream.timeout)
        return TokenEndpoint(http)

    tokens = AccessTokens(
        store,
        master_key,
        endpoint,
        on_secret=on_secret,
        on_refresh_failed=on_refresh_failed,
        writer=writer,
    )
    if publish_to is not None:
        # The daemon's: relay status shows which organisation credentials get no token.
        tokens.organisation.on_change = publisher(publish_to)
    return Credentials(master_key, tokens, on_secret)
