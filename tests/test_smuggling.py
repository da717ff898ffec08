"""SMTP smuggling: no byte sequence ends a message early, inbound or on the way upstream.

relay's policy is to normalise, as Postfix's smtpd_forbid_bare_newline=normalize does: only
CRLF.CRLF ends DATA (aiosmtpd reads CRLF-terminated lines), and every bare CR or LF inside the
message becomes CRLF before it goes upstream, where the client dot-stuffs it. Rejecting bare LF
instead would break the legacy PHP and cron mailers relay exists for.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import trustme

from tests.harness import running_daemon, write_config
from tests.test_server import provider_for
from tests.upstream import Upstream, recording_upstream

PAYLOADS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-lf": b"\r.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-cr": b"\n.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
    "crlf-dot-nul-crlf": b"\r\n.\x00\r\n",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "cr-crlf-dot-cr-crlf": b"\r\r\n.\r\r\n",
}
SMUGGLED = (
    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nevil\r\n"
)


@pytest_asyncio.fixture
async def relay_port_secret_upstream(tmp_path: Path) -> AsyncIterator[tuple[int, str, Upstream]]:
    """A relay before a raw-recording upstream."""
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(tmp_path / "relay", {"lab": provider_for(upstream)})
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            yield daemon.addresses[0][1], secret, upstream


def session_bytes(secret: str, payload: bytes) -> list[bytes]:
    """The client's commands, one element per write."""
    auth = base64.b64encode(b"\0alice\0" + secret.encode())
    return [
        b"EHLO app.example\r\n",
        b"AUTH PLAIN " + auth + b"\r\n",
        b"MAIL FROM:<alice@example.org>\r\n",
        b"RCPT TO:<bob@example.net>\r\n",
        b"DATA\r\n",
        b"Subject: one mail\r\n\r\nbefore" + payload + SMUGGLED + b"after\r\n.\r\n",
        b"QUIT\r\n",
    ]


async def converse(port: int, writes: list[bytes], pipelined: bool) -> list[bytes]:
    """Send the writes (all at once when pipelined); return every reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if pipelined:
            writer.write(b"".join(writes))
        else:
            await reader.readline()  # greeting
            for chunk in writes:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.05)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=20)
    finally:
        writer.close()
        await writer.wait_closed()
    return data.split(b"\r\n")


def assert_exactly_one_clean_mail(upstream: Upstream) -> None:
    """The upstream got one message, and nothing on the wire held a bare CR or LF."""
    handler = upstream.handler
    assert len(handler.received) == 1
    assert handler.received[0].recipients == ["bob@example.net"]
    assert handler.raw.count(b"\r\n.\r\n") == 1
    assert b"\r" not in handler.raw.replace(b"\r\n", b"")
    assert b"\n" not in handler.raw.replace(b"\r\n", b"")
    # The smuggled commands reach the provider only as lines of the one message's body.
    assert handler.raw.count(b"\r\nRCPT TO:<bob@example.net>\r\n") == 1


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_payload_does_not_end_the_message_early(
    relay_port_secret_upstream: tuple[int, str, Upstream], payload: bytes
) -> None:
    port, secret, upstream = relay_port_secret_upstream
    replies = await converse(port, session_bytes(secret, payload), pipelined=False)
    assert sum(r.startswith(b"250 2.0.0") for r in replies) == 1
    assert_exactly_one_clean_mail(upstream)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_payload_pipelined_in_one_write_does_not_end_the_message_early(
    relay_port_secret_upstream: tuple[int, str, Upstream], payload: bytes
) -> None:
    port, secret, upstream = relay_port_secret_upstream
    replies = await converse(port, session_bytes(secret, payload), pipelined=True)
    assert sum(r.startswith(b"250 2.0.0") for r in replies) == 1
    assert_exactly_one_clean_mail(upstream)


@pytest.mark.parametrize("size", [1_000, 100_000, 10_000_000])
async def test_mail_with_bare_lf_line_endings_of_any_size_arrives_with_crlf(
    relay_port_secret_upstream: tuple[int, str, Upstream], size: int
) -> None:
    # PHP's mail() and cron mailers end lines with a bare LF, 72-octet lines here.
    port, secret, upstream = relay_port_secret_upstream
    line = b"x" * 71 + b"\n"
    body = line * (size // len(line))
    writes = session_bytes(secret, b"")
    writes[5] = b"Subject: bare lf\n\n" + body + b"\r\n.\r\n"
    replies = await converse(port, writes, pipelined=False)
    assert any(reply.startswith(b"250 2.0.0 ") and b"sent" in reply for reply in replies)
    [mail] = upstream.handler.received
    assert b"\n" not in mail.data.replace(b"\r\n", b"")
    assert mail.data.count(b"x" * 71 + b"\r\n") == size // len(line)


async def test_a_bare_lf_line_over_1000_octets_is_refused_with_500(
    relay_port_secret_upstream: tuple[int, str, Upstream],
) -> None:
    port, secret, upstream = relay_port_secret_upstream
    writes = session_bytes(secret, b"")
    writes[5] = b"Subject: long line\n\nshort\n" + b"y" * 1_200 + b"\nshort\r\n.\r\n"
    replies = await converse(port, writes, pipelined=False)
    assert any(reply.startswith(b"500 5.5.6 Line too long") for reply in replies)
    assert upstream.handler.received == []
