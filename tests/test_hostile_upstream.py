"""A hostile or broken provider: every misbehaviour is bounded and keeps the mail queued."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from tests.harness import RelaySetup, running_daemon, write_config

Script = Callable[[Any, asyncio.StreamWriter], Awaitable[None]]
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: s\r\n\r\nbody\r\n"


@asynccontextmanager
async def scripted_server(
    script: Script, tls: ssl.SSLContext | None
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server that runs the script per connection; yields (port, bytes received)."""
    received: list[bytes] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(_Recording(reader, received), writer)
        except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


class _Recording:
    """A stream reader that also keeps every line it hands out."""

    def __init__(self, reader: asyncio.StreamReader, into: list[bytes]) -> None:
        self._reader = reader
        self._into = into

    async def readline(self) -> bytes:
        line = await self._reader.readline()
        self._into.append(line)
        return line


async def endless_ehlo(reader: Any, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hostile.test ESMTP\r\n")
    await reader.readline()
    while True:
        writer.write(b"250-" + b"X" * 1000 + b"\r\n")
        await writer.drain()


async def megabyte_greeting(reader: Any, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 " + b"Y" * 1_000_000 + b"\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def stall_mid_reply(reader: Any, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220-hostile.test is about to say more\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def no_starttls_offered(reader: Any, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 plain.test ESMTP\r\n")
    while line := await reader.readline():
        if line.upper().startswith((b"EHLO", b"HELO")):
            writer.write(b"250-plain.test\r\n250 AUTH PLAIN LOGIN\r\n")
        elif line.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            return
        else:
            writer.write(b"235 2.7.0 sure, anything\r\n")
        await writer.drain()


@asynccontextmanager
async def relay_before(
    tmp_path: Path, port: int, tls: str, ca: Path
) -> AsyncIterator[tuple[RelaySetup, int, str]]:
    """A relay with short upstream timeouts pointed at the scripted server."""
    provider = {"smtp": {"host": "127.0.0.1", "port": port, "tls": tls}, "ca_file": str(ca)}
    setup = write_config(
        tmp_path / "relay",
        {"lab": provider},
        upstream={"connect_timeout": 2, "timeout": 2},
        queue={"min_backoff": 3600, "max_backoff": 3600, "first_attempt_timeout": 8},
    )
    secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
    async with running_daemon(setup) as daemon:
        yield setup, daemon.addresses[0][1], secret


async def app_reply(port: int, secret: str) -> str:
    """What the legacy app hears for one mail."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await client.connect()
    await client.login("alice", secret)
    _, reply = await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    await client.quit()
    return reply


@pytest.fixture
def tls_material(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the CA file that trusts it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.mark.parametrize(
    "script", [endless_ehlo, megabyte_greeting, stall_mid_reply], ids=lambda s: s.__name__
)
async def test_misbehaving_provider_is_bounded_and_the_mail_stays_queued(
    tmp_path: Path, tls_material: tuple[ssl.SSLContext, Path], script: Script
) -> None:
    context, ca_file = tls_material
    async with scripted_server(script, context) as (port, _):
        async with relay_before(tmp_path, port, "implicit", ca_file) as (setup, relay_port, secret):
            reply = await asyncio.wait_for(app_reply(relay_port, secret), timeout=20)
            listing = setup.cli("queue", "list").out
    assert reply.startswith("2.0.0 queued as ")
    assert "1 queued," in listing


async def test_provider_without_starttls_never_sees_the_password(
    tmp_path: Path, tls_material: tuple[ssl.SSLContext, Path]
) -> None:
    _, ca_file = tls_material
    async with scripted_server(no_starttls_offered, None) as (port, received):
        async with relay_before(tmp_path, port, "starttls", ca_file) as (setup, relay_port, secret):
            reply = await app_reply(relay_port, secret)
    assert reply.startswith("2.0.0 queued as ") and "STARTTLS" in reply
    assert not any(line.upper().startswith(b"AUTH") for line in received)
    assert not any(line.upper().startswith(b"MAIL") for line in received)
