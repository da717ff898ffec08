"""Signing a user in: authorization code with PKCE on a loopback redirect, or the device flow."""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from relay.errors import OAuthError
from relay.model import OAuthClient
from relay.oauth.client import (
    DeviceAuthorization,
    Pkce,
    TokenEndpoint,
    TokenGrant,
    authorization_url,
)

LOOPBACK = "127.0.0.1"
REQUEST_HEAD_LIMIT = 16 * 1024  # bytes of request line and headers a browser's redirect needs
READ_SECONDS = 10.0  # for one request on the listener, so a silent connection cannot hold it

Announce = Callable[[str, str], None]  # the address to open, and the redirect URI


class LoopbackRedirect:
    """A one-shot HTTP listener on loopback that receives the authorization response."""

    def __init__(self, state: str, host: str = LOOPBACK) -> None:
        self.state = state
        self.host = host
        self._result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._server: asyncio.Server | None = None
        self._v6: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int) -> None:
        """Listen on the port (0: any free one)."""
        self._server = await asyncio.start_server(self._answer, LOOPBACK, port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.host == "localhost":
            # A browser may try ::1 first for "localhost"; answer there too where IPv6 is up.
            with contextlib.suppress(OSError):
                self._v6 = await asyncio.start_server(self._answer, "::1", self.port)

    @property
    def redirect_uri(self) -> str:
        """The redirect URI to register the request with (RFC 8252 §7.3)."""
        return f"http://{self.host}:{self.port}/"

    async def code(self) -> str:
        """The authorization code, once the browser comes back with one."""
        return await asyncio.shield(self._result)

    async def close(self) -> None:
        """Stop listening."""
        for server in (self._server, self._v6):
            if server is not None:
                server.close()
                await server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, page = self._handle(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, page = "400 Bad Request", "relay could not read this request."
        body = _page(page).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _handle(self, head: bytes) -> tuple[str, str]:
        """The status and message for one request; settles the result on a real redirect."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or parts[0] != "GET":
            return "405 Method Not Allowed", "relay waits for the sign-in redirect here."
        query = parse_qs(urlsplit(parts[1]).query)
        state = query.get("state", [""])[0]
        if "code" not in query and "error" not in query:
            return "404 Not Found", "Nothing here."  # a favicon or a stray visit
        # RFC 6749 §10.12: a response without our state may be forged; keep waiting.
        if not secrets.compare_digest(state.encode(), self.state.encode()):
            return "400 Bad Request", "This sign-in was not started by this relay command."
        if self._result.done():
            return "409 Conflict", "relay has its answer already; you can close this tab."
        if "error" in query:
            error = query["error"][0]
            description = query.get("error_description", [""])[0]
            self._result.set_exception(OAuthError(error, description))
            return "200 OK", f"The sign-in did not complete: {error} {description}"
        self._result.set_result(query["code"][0])
        return "200 OK", "relay is signed in. You can close this tab."


def _page(message: str) -> str:
    return f"<!doctype html><title>relay</title><p>{html.escape(message)}</p>\n"


async def sign_in_with_browser(
    endpoint: TokenEndpoint,
    client: OAuthClient,
    announce: Announce,
    *,
    login_hint: str | None,
    port: int = 0,
    timeout: float = 300.0,
) -> TokenGrant:
    """Authorization code flow with PKCE (RFC 7636) and a loopback redirect (RFC 8252)."""
    listener = LoopbackRedirect(secrets.token_urlsafe(24), client.redirect_host)
    await listener.start(port)
    try:
        pkce = Pkce.new()
        url = authorization_url(client, listener.redirect_uri, listener.state, pkce, login_hint)
        announce(url, listener.redirect_uri)
        try:
            async with asyncio.timeout(timeout):
                code = await listener.code()
        except TimeoutError:
            raise OAuthError("timeout", f"no sign-in came back within {timeout:g} s") from None
    finally:
        await listener.close()
    return await endpoint.exchange_code(client, code, listener.redirect_uri, pkce)


async def sign_in_with_device(
    endpoint: TokenEndpoint,
    client: OAuthClient,
    announce: Callable[[DeviceAuthorization], None],
) -> TokenGrant:
    """Device authorization grant (RFC 8628): a code to type in on any device with a browser."""
    device = await endpoint.start_device(client)
    announce(device)
    return await endpoint.poll_device(client, device)
