"""SASL logins with an OAuth2 bearer token: XOAUTH2 and OAUTHBEARER (RFC 7628)."""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable

import aiosmtplib

from relay.model import Secret

AUTH_CONTINUE = 334
AUTH_SUCCESSFUL = 235


class BearerMechanism(enum.Enum):
    """A SASL mechanism that carries an OAuth2 access token."""

    # Google's and Microsoft's documented mechanism, offered by every provider that takes tokens.
    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"

    def initial_response(self, username: str, token: Secret, host: str, port: int) -> bytes:
        """The client's first message, before base64."""
        bearer = f"auth=Bearer {token.reveal()}\x01\x01"
        if self is BearerMechanism.XOAUTH2:
            return f"user={username}\x01{bearer}".encode()
        # RFC 7628 §3.1: a GS2 header naming the user (',' and '=' escaped as in RFC 5801),
        # then key/value pairs separated by ^A.
        name = username.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={name},\x01host={host}\x01port={port}\x01{bearer}".encode()

    @property
    def failure_answer(self) -> bytes:
        """What the client sends after the server's error challenge, to get the final reply."""
        # Google's XOAUTH2 doc: an empty response. RFC 7628 §3.2.3: a single ^A.
        return b"" if self is BearerMechanism.XOAUTH2 else b"\x01"


def bearer_refused_fix(login: str) -> str:
    """What to do when a server refuses a freshly renewed access token."""
    return (
        "the server refused a fresh OAuth2 token: check that the upstream user is the account "
        "that signed in, that the grant has the mail scopes ('relay check "
        f"{login}'), and at Microsoft that SMTP AUTH is on for the mailbox; then "
        f"'relay user authorize {login}' again if needed"
    )


def bearer_mechanism(offered: Iterable[str]) -> BearerMechanism | None:
    """The mechanism to use among those the server offers; XOAUTH2 first, as it is widest."""
    names = {name.upper() for name in offered}
    for mechanism in BearerMechanism:
        if mechanism.value in names:
            return mechanism
    return None


async def smtp_bearer_login(
    client: aiosmtplib.SMTP, username: str, token: Secret
) -> BearerMechanism:
    """AUTH with the access token; SMTPAuthenticationError with the server's reply if refused."""
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    offered = client.server_auth_methods
    mechanism = bearer_mechanism(offered)
    if mechanism is None:
        raise aiosmtplib.SMTPAuthenticationError(
            504,
            "5.7.4 server offers no OAuth2 mechanism (XOAUTH2 or OAUTHBEARER); "
            f"it offers: {' '.join(offered) or 'no AUTH at all'}",
        )
    first = mechanism.initial_response(username, token, client.hostname or "", client.port or 0)
    response = await client.execute_command(
        b"AUTH", mechanism.value.encode(), base64.b64encode(first)
    )
    if response.code == AUTH_CONTINUE:
        # The server's JSON error status (RFC 7628 §3.2.2); the final reply follows our answer.
        response = await client.execute_command(base64.b64encode(mechanism.failure_answer))
    if response.code != AUTH_SUCCESSFUL:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)
    return mechanism


async def smtp_login(
    client: aiosmtplib.SMTP, username: str, secret: Secret, *, bearer: bool
) -> str:
    """Log in with a password (PLAIN, LOGIN...) or an access token; the mechanism used."""
    if bearer:
        return (await smtp_bearer_login(client, username, secret)).value
    await client.login(username, secret.reveal())
    return "password"
