"""The one-shot loopback listener that receives the browser's redirect after sign-in."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from relay.errors import OAuthError
from relay.oauth.flows import LoopbackRedirect


async def visit(url: str) -> tuple[int, str]:
    """GET url like a browser would; the status and page."""

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  (loopback)
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(get)


async def started_listener() -> LoopbackRedirect:
    listener = LoopbackRedirect("the-state")
    await listener.start(0)
    return listener


async def test_the_redirect_with_our_state_hands_over_the_code() -> None:
    listener = await started_listener()
    try:
        assert listener.redirect_uri == f"http://127.0.0.1:{listener.port}/"
        status, page = await visit(listener.redirect_uri + "?code=abc123&state=the-state")
        assert (status, await listener.code()) == (200, "abc123")
        assert "You can close this tab" in page
    finally:
        await listener.close()


async def test_a_stray_visit_and_a_forged_state_are_turned_away_and_the_wait_goes_on() -> None:
    listener = await started_listener()
    try:
        assert (await visit(listener.redirect_uri + "favicon.ico"))[0] == 404
        forged, page = await visit(listener.redirect_uri + "?code=evil&state=other")
        assert forged == 400 and "not started by this relay command" in page
        waiting = asyncio.ensure_future(listener.code())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await visit(listener.redirect_uri + "?code=real&state=the-state")
        assert await waiting == "real"
    finally:
        await listener.close()


async def test_a_refused_consent_ends_the_wait_with_the_servers_error() -> None:
    listener = await started_listener()
    try:
        url = listener.redirect_uri + "?error=access_denied&error_description=no+thanks"
        status, page = await visit(url + "&state=the-state")
        assert status == 200 and "access_denied" in page
        with pytest.raises(OAuthError) as refused:
            await listener.code()
        assert (refused.value.error, refused.value.description) == ("access_denied", "no thanks")
    finally:
        await listener.close()


async def test_the_listener_is_gone_once_closed() -> None:
    listener = await started_listener()
    await listener.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", listener.port)
