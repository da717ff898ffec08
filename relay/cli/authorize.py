"""`relay user authorize LOGIN`: sign a user in with OAuth2 and keep the grant, sealed."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from relay.cli.common import UsageError, cli_config, open_store, timestamp
from relay.config.model import RelayConfig
from relay.errors import OAuthError
from relay.model import OAuthClient, OAuthGrant, UpstreamAuth, User
from relay.oauth.client import DeviceAuthorization, TokenEndpoint, TokenGrant, token_http_client
from relay.oauth.tokens import refresh_token_context
from relay.queue.admin import open_queue_admin
from relay.tls import TlsContexts

DEFAULT_WAIT = 300.0  # seconds for the person to sign in


def add_authorize_command(users: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay user authorize`."""
    authorize = users.add_parser(
        "authorize", help="sign in at the provider with OAuth2; relay keeps the grant, sealed"
    )
    authorize.add_argument("login")
    authorize.add_argument(
        "--device",
        action="store_true",
        help="show a code to enter on any device instead of a redirect (Microsoft; for servers)",
    )
    authorize.add_argument(
        "--port",
        type=int,
        default=0,
        help="port of the one-shot listener at http://127.0.0.1:PORT/ (default: any free port)",
    )
    authorize.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the sign-in (default {DEFAULT_WAIT:g})",
    )
    authorize.set_defaults(run=cmd_user_authorize)


def cmd_user_authorize(args: argparse.Namespace) -> int:
    """Run the sign-in, store the refresh token sealed, and make the user's queued mail due."""
    if not 0 <= args.port <= 65535:
        raise UsageError("--port: expected 0..65535")
    config = cli_config(args)
    with open_store(config) as (store, key):
        user = store.get_user(args.login)
        client = _client(config, user)
        if args.device and client.device_url is None:
            raise UsageError(
                f"--device: provider {user.provider!r} has no device flow for mail; "
                "run without --device and open the address in a browser"
            )
        try:
            grant = asyncio.run(_sign_in(config, client, user, args))
        except OAuthError as error:
            raise UsageError(f"authorization of {user.login} failed: {error}") from None
        if grant.refresh_token is None:
            raise UsageError(
                "the provider gave no refresh token, so relay could not renew access: at Google, "
                "remove relay at myaccount.google.com/permissions and authorize again; elsewhere, "
                "make sure the scopes include offline_access"
            )
        sealed = key.seal(grant.refresh_token, refresh_token_context(user))
        store.grants.authorized(user.login, sealed, grant.scopes, grant.expires_at)
        # The password is of no more use; keeping it would keep a secret for nothing.
        store.switch_to_oauth2(user.login)
    due = _make_queued_mail_due(config, user.login)
    print(f"user {user.login}: authorized; scopes granted: {' '.join(grant.scopes) or '-'}")
    if due:
        print(f"user {user.login}: {due} queued message(s) due now")
    # The provider checked who signed in, not that it is the mailbox relay logs in as.
    print(f"Check that {user.upstream_user} can log in and send with it: relay check {user.login}")
    return 0


def _client(config: RelayConfig, user: User) -> OAuthClient:
    provider = config.providers.get(user.provider)
    if provider is None:
        raise UsageError(f"provider {user.provider!r} of {user.login} is not configured")
    if provider.oauth2 is None:
        raise UsageError(
            f"provider {provider.name!r} has no oauth2 section in {config.source}: add one with "
            "relay's client_id (see the README, OAuth2)"
        )
    try:
        return provider.oauth2.client()
    except OAuthError as error:
        raise UsageError(f"providers.{provider.name}.oauth2: {error.description}") from None


async def _sign_in(
    config: RelayConfig, client: OAuthClient, user: User, args: argparse.Namespace
) -> TokenGrant:
    # Imported here: only this command runs the loopback listener.
    from relay.oauth.flows import sign_in_with_browser, sign_in_with_device

    upstream = config.upstream
    tls = TlsContexts().for_ca_file(None)
    endpoint = TokenEndpoint(token_http_client(tls, upstream.connect_timeout, upstream.timeout))
    try:
        if args.device:
            return await sign_in_with_device(endpoint, client, _show_device_code(user))
        return await sign_in_with_browser(
            endpoint,
            client,
            _show_address(user, device_flow=client.device_url is not None),
            login_hint=user.upstream_user,
            port=args.port,
            timeout=args.wait,
        )
    finally:
        await endpoint.close()


def _show_address(user: User, *, device_flow: bool) -> Callable[[str, str], None]:
    def show(url: str, redirect_uri: str) -> None:
        port = redirect_uri.rstrip("/").rsplit(":", 1)[1]
        print(f"Open this address in a browser and sign in as {user.upstream_user}:\n\n{url}\n")
        print(
            f"relay waits for the browser to come back to {redirect_uri}. If the browser runs on "
            f"another machine, run there first: ssh -L {port}:127.0.0.1:{port} THIS-SERVER",
            flush=not device_flow,
        )
        if device_flow:
            print(
                f"No browser at hand? Stop this and run 'relay user authorize {user.login} "
                "--device' to sign in with a code on any device.",
                flush=True,
            )

    return show


def _show_device_code(user: User) -> Callable[[DeviceAuthorization], None]:
    def show(device: DeviceAuthorization) -> None:
        minutes = max(0.0, device.expires_at - time.time()) / 60
        print(
            f"On any device, open {device.verification_uri} and enter the code "
            f"{device.user_code}, then sign in as {user.upstream_user}.",
        )
        if device.verification_uri_complete:
            print(f"(or open {device.verification_uri_complete})")
        print(f"The code is good for {minutes:.0f} minutes; relay waits.", flush=True)

    return show


def _make_queued_mail_due(config: RelayConfig, login: str) -> int:
    """The daemon retries what waited for the authorization within a second (see queue retry)."""
    if not config.spool_path.exists():
        return 0
    with open_queue_admin(config.spool_path) as queue:
        return queue.retry_user(login, time.time())


def describe_login(user: User, grant: OAuthGrant | None) -> str:
    """How the user logs in upstream, for `relay user show`; never a secret."""
    if user.auth is UpstreamAuth.PASSWORD:
        return "password (stored, sealed)" if user.sealed_secret else "password (none stored)"
    if grant is None or grant.sealed_refresh is None:
        return f"OAuth2, not authorized yet: run 'relay user authorize {user.login}'"
    parts = [f"OAuth2, authorized {timestamp(grant.authorized_at or 0)}"]
    if grant.needs_authorization:
        parts.append(
            f"NEEDS AUTHORIZATION ({grant.needs_authorization}): "
            f"run 'relay user authorize {user.login}'"
        )
    parts.append(f"scopes {' '.join(grant.scopes) or '-'}")
    if grant.refreshed_at:
        parts.append(f"last refresh {timestamp(grant.refreshed_at)}")
    if grant.access_expires_at:
        parts.append(f"access token expires {timestamp(grant.access_expires_at)}")
    return "; ".join(parts)
