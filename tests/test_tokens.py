"""Access tokens: renewed once for many callers, rotated refresh tokens kept, dead grants noted.

Against the local authorization server of tests/peers/oauthserver.py (RFC 6749, 7636, 8628),
over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config.model import OAuthSettings
from relay.errors import AuthorizationNeeded, OAuthError, RelayError, TemporaryFailure
from relay.model import Secret, UpstreamAuth, User
from relay.oauth.client import DeviceAuthorization, TokenEndpoint, token_http_client
from relay.oauth.flows import sign_in_with_browser, sign_in_with_device
from relay.oauth.tokens import AccessTokens, keep_grants_alive, refresh_token_context
from relay.state.keys import MasterKey
from relay.state.store import Store
from tests.peers.oauthserver import DEFAULT_SCOPES, AuthorizationServer

ALICE = "alice@example.org"


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(signed_in_as=ALICE, device_interval=0) as running:
        yield running


@dataclass
class Keeper:
    """AccessTokens for alice, whose grant is sealed in a fresh store."""

    tokens: AccessTokens
    store: Store
    key: MasterKey
    settings: OAuthSettings
    user: User

    async def bearer(self) -> Secret:
        return await self.tokens.bearer("alice", "lab", self.settings)

    def stored_refresh_token(self) -> str:
        grant = self.store.grants.get("alice")
        assert grant is not None and grant.sealed_refresh is not None
        return self.key.open(grant.sealed_refresh, refresh_token_context(self.user)).reveal()


def settings_for(server: AuthorizationServer, tmp_path: Path) -> OAuthSettings:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(server.client_secret + "\n")
    return OAuthSettings(
        client_id=server.client_id,
        client_secret_file=secret_file,
        tenant=None,
        authorize_url=server.authorize_url,
        token_url=server.token_url,
        device_url=server.device_url,
        scopes=DEFAULT_SCOPES,
    )


def endpoint() -> TokenEndpoint:
    import ssl

    http = token_http_client(ssl.create_default_context(), 5.0, 5.0)
    return TokenEndpoint(http, retry_pause=0.01)


@pytest.fixture
async def keeper(server: AuthorizationServer, tmp_path: Path) -> AsyncIterator[Keeper]:
    store = Store.create(tmp_path / "relay.db")
    key = MasterKey(os.urandom(32))
    alice = User("alice", "lab", ALICE, ALICE, "hash", None, auth=UpstreamAuth.OAUTH2)
    store.add_user(alice)
    _, refresh = server.issue_tokens(ALICE)
    sealed = key.seal(Secret(refresh), refresh_token_context(alice))
    store.grants.authorized("alice", sealed, DEFAULT_SCOPES, 0.0)
    tokens = AccessTokens(store, key, endpoint)
    yield Keeper(tokens, store, key, settings_for(server, tmp_path), alice)
    await tokens.close()
    store.close()


async def test_twenty_callers_needing_a_token_at_once_cause_one_refresh(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    tokens = await asyncio.gather(*(keeper.bearer() for _ in range(20)))
    assert len({token.reveal() for token in tokens}) == 1
    assert server.refresh_count(ALICE) == 1
    await asyncio.gather(*(keeper.bearer() for _ in range(20)))
    assert server.refresh_count(ALICE) == 1  # the token is good for an hour: no new refresh


async def test_a_token_near_its_expiry_is_renewed_before_it_runs_out(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.access_token_lifetime = 2  # renewed a quarter of its lifetime ahead: after 1.5 s
    first = await keeper.bearer()
    await asyncio.sleep(1.6)
    renewed = await asyncio.gather(*(keeper.bearer() for _ in range(20)))
    assert {token.reveal() for token in renewed} != {first.reveal()}
    assert len({token.reveal() for token in renewed}) == 1
    assert server.refresh_count(ALICE) == 2


async def test_a_rotated_refresh_token_is_sealed_in_the_store_at_once(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.rotate_refresh_tokens = True
    original = keeper.stored_refresh_token()
    await keeper.bearer()
    rotated = keeper.stored_refresh_token()
    assert rotated != original
    # The old one is dead at the server now; the next renewal must (and does) use the new one.
    await keeper.tokens.renew("alice", "lab", keeper.settings)
    assert server.token_requests[-1]["refresh_token"] == rotated
    assert server.refresh_count(ALICE) == 2


async def test_a_revoked_grant_marks_the_user_and_stops_asking_the_server(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.revoke(ALICE)
    with pytest.raises(AuthorizationNeeded) as needed:
        await keeper.bearer()
    assert "invalid_grant" in needed.value.reason
    assert needed.value.code == 451  # mail stays queued
    assert needed.value.hint == "run 'relay user authorize alice'"
    grant = keeper.store.grants.get("alice")
    assert grant is not None and grant.needs_authorization is not None
    asked = len(server.token_requests)
    with pytest.raises(AuthorizationNeeded):
        await keeper.bearer()
    assert len(server.token_requests) == asked


async def test_a_token_endpoint_answering_503_is_tried_again(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.fail_next(2)
    assert (await keeper.bearer()).reveal()
    assert server.refresh_count(ALICE) == 1


async def test_a_token_endpoint_that_stays_down_is_a_temporary_failure(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.fail_next(3)
    with pytest.raises(TemporaryFailure) as failed:
        await keeper.bearer()
    assert "503" in failed.value.text and failed.value.code == 451
    assert failed.value.hint is not None and "token endpoint" in failed.value.hint
    grant = keeper.store.grants.get("alice")
    assert grant is not None and grant.needs_authorization is None  # not the grant's fault


async def test_a_wrong_client_secret_points_at_the_config(
    server: AuthorizationServer, keeper: Keeper, tmp_path: Path
) -> None:
    assert keeper.settings.client_secret_file is not None
    keeper.settings.client_secret_file.write_text("not-the-secret\n")
    with pytest.raises(TemporaryFailure) as failed:
        await keeper.bearer()
    assert "invalid_client" in failed.value.text
    assert failed.value.hint is not None and "providers.lab.oauth2" in failed.value.hint


def follow_in_browser(url: str) -> None:
    """What the person's browser does: sign in, get redirected to relay's listener."""
    with urllib.request.urlopen(url, timeout=5) as page:  # noqa: S310  (loopback)
        assert page.status == 200


async def test_browser_sign_in_exchanges_the_code_with_its_pkce_verifier(
    server: AuthorizationServer, tmp_path: Path
) -> None:
    client = settings_for(server, tmp_path).client()
    shown: list[str] = []

    def announce(url: str, redirect_uri: str) -> None:
        shown.append(redirect_uri)
        asyncio.get_running_loop().run_in_executor(None, follow_in_browser, url)

    token_endpoint = endpoint()
    try:
        grant = await sign_in_with_browser(
            token_endpoint, client, announce, login_hint=ALICE, timeout=10
        )
    finally:
        await token_endpoint.close()
    assert grant.refresh_token is not None and grant.scopes == DEFAULT_SCOPES
    exchange = server.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["redirect_uri"] == shown[0] and shown[0].startswith("http://127.0.0.1:")
    assert len(exchange["code_verifier"]) >= 43  # RFC 7636 §4.1


async def test_a_declined_sign_in_is_an_error_with_the_servers_words(
    server: AuthorizationServer, tmp_path: Path
) -> None:
    server.deny_next_authorization = True
    client = settings_for(server, tmp_path).client()

    def announce(url: str, _redirect_uri: str) -> None:
        asyncio.get_running_loop().run_in_executor(None, follow_in_browser, url)

    token_endpoint = endpoint()
    with pytest.raises(OAuthError) as declined:
        await sign_in_with_browser(token_endpoint, client, announce, login_hint=None, timeout=10)
    await token_endpoint.close()
    assert declined.value.error == "access_denied"


async def test_device_sign_in_polls_until_the_person_approves(
    server: AuthorizationServer, tmp_path: Path
) -> None:
    client = settings_for(server, tmp_path).client()
    shown: list[DeviceAuthorization] = []

    def announce(device: DeviceAuthorization) -> None:
        shown.append(device)
        asyncio.get_running_loop().call_later(0.3, server.approve_device, device.user_code, ALICE)

    token_endpoint = endpoint()
    try:
        grant = await sign_in_with_device(token_endpoint, client, announce)
    finally:
        await token_endpoint.close()
    assert grant.refresh_token is not None
    polls = [r for r in server.token_requests if r["grant_type"].endswith("device_code")]
    assert len(polls) >= 2  # authorization_pending at least once, then the tokens
    assert shown[0].verification_uri.startswith(server.base_url)


async def test_a_grant_unused_for_long_is_renewed_without_any_mail(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    users = [("alice", "lab", keeper.settings)]
    keeping = asyncio.ensure_future(keep_grants_alive(keeper.tokens, lambda: users, idle=0.0))
    try:
        for _ in range(100):
            if server.refresh_count(ALICE) == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        keeping.cancel()
    assert server.refresh_count(ALICE) == 1


async def test_a_grant_used_lately_is_left_alone(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    await keeper.bearer()  # used just now
    users = [("alice", "lab", keeper.settings)]
    keeping = asyncio.ensure_future(keep_grants_alive(keeper.tokens, lambda: users, idle=3600))
    await asyncio.sleep(0.3)
    keeping.cancel()
    assert server.refresh_count(ALICE) == 1


async def test_a_grant_found_dead_by_the_keepalive_is_reported_for_a_renewal_notice(
    server: AuthorizationServer, keeper: Keeper
) -> None:
    server.revoke(ALICE)
    users = [("alice", "lab", keeper.settings)]
    reported: list[tuple[str, RelayError]] = []
    found = asyncio.Event()

    async def on_failure(login: str, error: RelayError) -> None:
        reported.append((login, error))
        found.set()

    keeping = asyncio.ensure_future(
        keep_grants_alive(keeper.tokens, lambda: users, on_failure, idle=0.0)
    )
    try:
        await asyncio.wait_for(found.wait(), timeout=10)
    finally:
        keeping.cancel()
    [(login, error)] = reported
    assert login == "alice" and isinstance(error, AuthorizationNeeded)
    assert "invalid_grant" in error.reason
