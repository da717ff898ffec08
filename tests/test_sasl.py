"""SASL with OAuth2 bearer tokens: what goes on the wire, and which mechanism is chosen."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult

from relay.model import Secret
from relay.upstream.sasl import BearerMechanism, bearer_mechanism, smtp_bearer_login

TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


def test_xoauth2_initial_response_is_googles_format() -> None:
    sent = BearerMechanism.XOAUTH2.initial_response("someuser@example.com", Secret(TOKEN), "h", 1)
    assert sent == f"user=someuser@example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()


def test_oauthbearer_initial_response_is_rfc_7628s_example() -> None:
    # RFC 7628 §4.1, with ^A written as \x01.
    sent = BearerMechanism.OAUTHBEARER.initial_response(
        "user@example.com", Secret(TOKEN), "server.example.com", 143
    )
    expected = (
        f"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        f"auth=Bearer {TOKEN}\x01\x01"
    )
    assert sent == expected.encode()


def test_oauthbearer_escapes_comma_and_equals_in_the_user_name() -> None:
    sent = BearerMechanism.OAUTHBEARER.initial_response("a,b=c", Secret("t"), "h", 1)
    assert sent.startswith(b"n,a=a=2Cb=3Dc,\x01")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["PLAIN", "XOAUTH2", "OAUTHBEARER"], BearerMechanism.XOAUTH2),
        (["plain", "oauthbearer"], BearerMechanism.OAUTHBEARER),
        (["PLAIN", "LOGIN"], None),
    ],
)
def test_xoauth2_is_preferred_and_oauthbearer_taken_when_it_is_the_only_one(
    offered: list[str], chosen: BearerMechanism | None
) -> None:
    assert bearer_mechanism(offered) is chosen


@dataclass
class BearerOnlyServer:
    """An SMTP server that offers only OAUTHBEARER, as some providers may."""

    token: str
    answers_after_error: list[bytes] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class _BearerSMTP(SMTP):
    def __init__(self, state: BearerOnlyServer, **kwargs: Any) -> None:
        super().__init__(object(), **kwargs)
        self.state = state

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        message = base64.b64decode(args[1]).decode()
        gs2, *pairs = message.split("\x01")
        fields = dict(pair.split("=", 1) for pair in pairs if pair)
        if fields.get("auth") == f"Bearer {self.state.token}":
            self.state.logins.append(gs2)
            return AuthResult(success=True, auth_data=gs2)
        status = json.dumps({"status": "invalid_token", "scope": "mail"}).encode()
        answer = await server.challenge_auth(status, encode_to_b64=True, log_client_response=False)
        self.state.answers_after_error.append(answer if isinstance(answer, bytes) else b"?")
        return AuthResult(success=False, handled=False)


@asynccontextmanager
async def bearer_only_server(
    tmp_path: Path, excluded: tuple[str, ...] = ("PLAIN", "LOGIN")
) -> AsyncIterator[tuple[int, Path, BearerOnlyServer]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    state = BearerOnlyServer(token="good-token")

    def protocol() -> SMTP:
        return _BearerSMTP(
            state,
            hostname="bearer.test",
            auth_exclude_mechanism=list(excluded),
            auth_require_tls=False,
        )

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], ca_file, state
    finally:
        server.close()
        await server.wait_closed()


async def _client(port: int, ca_file: Path) -> aiosmtplib.SMTP:
    context = ssl.create_default_context(cafile=str(ca_file))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=context)
    await client.connect()
    return client


async def test_smtp_login_uses_oauthbearer_when_the_server_offers_only_that(
    tmp_path: Path,
) -> None:
    async with bearer_only_server(tmp_path) as (port, ca_file, state):
        client = await _client(port, ca_file)
        used = await smtp_bearer_login(client, "alice@example.org", Secret("good-token"))
        await client.quit()
    assert used is BearerMechanism.OAUTHBEARER
    assert state.logins == ["n,a=alice@example.org,"]


async def test_a_refused_token_gets_the_servers_final_reply_after_the_error_challenge(
    tmp_path: Path,
) -> None:
    async with bearer_only_server(tmp_path) as (port, ca_file, state):
        client = await _client(port, ca_file)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp_bearer_login(client, "alice@example.org", Secret("stale-token"))
        client.close()
    assert refused.value.code == 535
    # RFC 7628 §3.2.3: the client ends a failed exchange with a single ^A.
    assert state.answers_after_error == [b"\x01"]


async def test_a_server_without_any_oauth2_mechanism_is_refused_before_sending_the_token(
    tmp_path: Path,
) -> None:
    async with bearer_only_server(tmp_path, ("LOGIN", "OAUTHBEARER")) as (port, ca_file, state):
        client = await _client(port, ca_file)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError, match="no OAuth2 mechanism"):
            await smtp_bearer_login(client, "alice@example.org", Secret("good-token"))
        client.close()
    assert state.logins == [] and state.answers_after_error == []
