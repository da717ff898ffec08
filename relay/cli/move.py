"""`relay user set --provider/--upstream-user`: moving a user, their secrets sealed anew."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace

from relay.cli.common import UsageError
from relay.config.model import ProviderConfig
from relay.model import UpstreamAuth, User
from relay.providers.presets import email_fits
from relay.state.grants import REFRESH_TOKEN_FIELD
from relay.state.keys import MasterKey
from relay.state.sealing import UPSTREAM_CREDENTIAL, reseal
from relay.state.store import Store


def moved_user(
    providers: Mapping[str, ProviderConfig], user: User, name: str | None, upstream: str | None
) -> User:
    """user with the provider and (checked) upstream user asked for, as `user add` checks them."""
    provider = providers.get(name or user.provider)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none configured"
        raise UsageError(f"unknown provider {name!r} (known: {known})")
    problem = email_fits(user.email, provider.domains)
    if problem is not None:
        raise UsageError(f"--provider: {problem}")
    if user.auth is UpstreamAuth.OAUTH2 and provider.oauth2 is None:
        raise UsageError(f"--provider: {provider.name!r} has no oauth2 section for {user.login}")
    upstream_user = upstream or user.upstream_user
    if (provider.name, upstream_user) == (user.provider, user.upstream_user):
        return user
    # Another mailbox: what discovery found in the old one says nothing about it.
    return replace(
        user, provider=provider.name, upstream_user=upstream_user, sent_folder_found=None
    )


def rebind_user(store: Store, key: MasterKey, before: User, after: User) -> None:
    """Write after, its secrets re-sealed: they are bound to the provider and upstream user."""
    sealed = before.sealed_secret
    if sealed is not None:
        sealed = reseal(key, sealed, UPSTREAM_CREDENTIAL, before, after)
    grant = store.grants.get(before.login)
    refresh, forget = None, False
    if grant is not None and grant.sealed_refresh is not None:
        # A refresh token is good only at the authorization server that issued it: at another
        # provider it would only be disclosed, so the user signs in there anew.
        forget = after.provider != before.provider
        if not forget:
            fresh = reseal(key, grant.sealed_refresh, REFRESH_TOKEN_FIELD, before, after)
            refresh = (grant.sealed_refresh, fresh)
    store.rebind_user(replace(after, sealed_secret=sealed), refresh=refresh, forget_grant=forget)
    if forget:
        print(
            f"user {after.login}: the OAuth2 grant was for {before.provider}; "
            f"run 'relay user authorize {after.login}'",
            file=sys.stderr,
        )
