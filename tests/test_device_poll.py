"""Waiting for a device authorization one poll at a time (relay/oauth/devicepoll.py).

Against the local authorization server (tests/peers/oauthserver.py), which answers a poll that
comes sooner than its interval with slow_down, as RFC 8628 §3.5 lets a provider do.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from relay.errors import OAuthError
from relay.model import OAuthClient, Secret
from relay.oauth.client import SLOW_DOWN_STEP, TokenEndpoint, token_http_client
from relay.oauth.devicepoll import DevicePoll, poll_once
from tests.peers.oauthserver import DEFAULT_SCOPES, DEVICE_GRANT, AuthorizationServer


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(device_interval=1) as running:
        yield running


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    token_endpoint = TokenEndpoint(token_http_client(ssl.create_default_context(), 5, 5))
    try:
        yield token_endpoint
    finally:
        await token_endpoint.close()


def client_of(server: AuthorizationServer) -> OAuthClient:
    return OAuthClient(
        client_id=server.client_id,
        client_secret=Secret(server.client_secret),
        authorize_url=server.authorize_url,
        token_url=server.token_url,
        device_url=server.device_url,
        scopes=(*DEFAULT_SCOPES, "openid", "email"),  # as the page asks: who signed in, too
    )


def polls(server: AuthorizationServer) -> int:
    return sum(1 for form in server.token_requests if form["grant_type"] == DEVICE_GRANT)


async def test_no_request_goes_before_the_interval_and_slow_down_lengthens_it_for_good(
    server: AuthorizationServer, endpoint: TokenEndpoint
) -> None:
    client = client_of(server)
    poll = DevicePoll.started(await endpoint.start_device(client))
    assert poll.interval == 1 and 0 < poll.wait() <= 1
    assert await poll_once(endpoint, client, poll) is None  # too soon: the provider is not asked
    assert polls(server) == 0
    await asyncio.sleep(poll.wait() + 0.1)
    assert await poll_once(endpoint, client, poll) is None  # authorization_pending
    assert polls(server) == 1 and poll.wait() > 0.5
    # A clock that says the interval has passed when the provider thinks it has not:
    assert await poll_once(endpoint, client, poll, now=poll.next_poll) is None  # slow_down
    assert polls(server) == 2
    assert poll.interval == 1 + SLOW_DOWN_STEP and poll.wait() > SLOW_DOWN_STEP


async def test_the_tokens_come_once_the_user_approved(
    server: AuthorizationServer, endpoint: TokenEndpoint
) -> None:
    client = client_of(server)
    poll = DevicePoll.started(await endpoint.start_device(client))
    server.approve_device(poll.device.user_code, "alice@example.org")
    await asyncio.sleep(poll.wait() + 0.1)
    grant = await poll_once(endpoint, client, poll)
    assert grant is not None and grant.refresh_token is not None and grant.id_token is not None


async def test_a_declined_code_raises_access_denied_and_an_expired_one_expired_token(
    server: AuthorizationServer, endpoint: TokenEndpoint
) -> None:
    client = client_of(server)
    poll = DevicePoll.started(await endpoint.start_device(client))
    server.deny_device(poll.device.user_code)
    await asyncio.sleep(poll.wait() + 0.1)
    with pytest.raises(OAuthError) as denied:
        await poll_once(endpoint, client, poll)
    assert denied.value.error == "access_denied"
    asked = polls(server)
    with pytest.raises(OAuthError) as expired:
        await poll_once(endpoint, client, poll, now=poll.device.expires_at)
    assert expired.value.error == "expired_token" and polls(server) == asked  # not asked
