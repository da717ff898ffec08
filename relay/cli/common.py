"""What the `relay` subcommands share: the config, the store and key, checked input, times."""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from relay.config.load import config_path_from, load_config
from relay.config.model import RelayConfig
from relay.errors import RelayError
from relay.model import OAuthGrant, UpstreamAuth, User
from relay.state.keys import MasterKey, key_path, load_key
from relay.state.store import Store

LOGIN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
# Deliberately strict: an address that goes into an SMTP envelope must not carry controls or spaces.
EMAIL_PATTERN = re.compile(
    r"[^\s\x00-\x1f\x7f@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)


class UsageError(RelayError):
    """The command line asks for something that cannot be done as asked."""


def cli_config(args: argparse.Namespace) -> RelayConfig:
    """The config named by --config, $RELAY_CONFIG or the default path."""
    return load_config(config_path_from(args.config, os.environ))


@contextmanager
def open_store(config: RelayConfig) -> Iterator[tuple[Store, MasterKey]]:
    """The master key and the open store; the store is closed afterwards."""
    key = load_key(key_path(config.key_file, os.environ))
    store = Store.open(config.database_path, key)
    try:
        yield store, key
    finally:
        store.close()


def checked_email(address: str, flag: str) -> str:
    """A plain address like name@example.org, or UsageError naming the flag."""
    if not EMAIL_PATTERN.fullmatch(address):
        raise UsageError(f"{flag}: {address!r} is not a plain address like name@example.org")
    return address


def timestamp(seconds: float) -> str:
    """A local date and time with its zone, for people."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


USER_STATES = ("enabled", "disabled", "awaiting-check", "needs-authorize")


def organisation_user(config: RelayConfig, user: User) -> bool:
    """True when the user's provider gets their tokens from the organisation's credential."""
    provider = config.providers.get(user.provider)
    oauth2 = None if provider is None else provider.oauth2
    return user.auth is UpstreamAuth.OAUTH2 and oauth2 is not None and oauth2.organisation


def needs_authorization(user: User, grant: OAuthGrant | None, organisation: bool = False) -> bool:
    """True when an OAuth2 user cannot send until someone runs `relay user authorize`."""
    if user.auth is not UpstreamAuth.OAUTH2 or organisation:
        return False
    return grant is None or grant.sealed_refresh is None or grant.needs_authorization is not None


def user_state(user: User, grant: OAuthGrant | None, organisation: bool = False) -> str:
    """enabled, disabled, awaiting-check, or needs-authorize (an OAuth2 user without a grant)."""
    if needs_authorization(user, grant, organisation):
        return "needs-authorize"
    if user.enabled:
        return "enabled"
    return "awaiting-check" if user.awaiting_check else "disabled"
