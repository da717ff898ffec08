"""A byte-exact SMTP client, and relays cloned from one prepared state directory.

`relay init` and `relay user add` run as subprocesses and take about a second; a test that
needs a fresh relay copies a directory prepared once instead.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml

from relay.daemon import Daemon
from tests.harness import RelaySetup, running_daemon, write_config
from tests.test_server import provider_for
from tests.upstream import Upstream, recording_upstream

# RFC 5321 §4.2: Reply-line = Reply-code [ SP / "-" textstring ]; textstring = HT / SP..~
REPLY_LINE = re.compile(rb"[2-5][0-9]{2}([ -][\t\x20-\x7e]*)?")
READ_TIMEOUT = 20.0
# Somewhere relay can never connect to: replaced by the recording upstream in each test.
PLACEHOLDER = {"smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"}}


def assert_reply_line(line: bytes) -> None:
    """One reply line as sent: CRLF-terminated, a code, then printable text only."""
    assert line.endswith(b"\r\n"), line
    assert REPLY_LINE.fullmatch(line[:-2]), line


@dataclass(frozen=True)
class Reply:
    """One complete (possibly multi-line) SMTP reply."""

    lines: list[bytes]

    @property
    def code(self) -> int:
        """The reply code of the last line."""
        return int(self.lines[-1][:3])

    @property
    def text(self) -> str:
        """All lines, CRLF-joined, for assertion messages and substring checks."""
        return b"".join(self.lines).decode("ascii")


class RawClient:
    """A byte-exact SMTP client: what it writes goes on the wire unchanged."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Connect and read the 220 greeting."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        assert (await client.reply()).code == 220
        return client

    async def reply(self) -> Reply:
        """Read one complete reply; every line must be a well-formed reply line."""
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not line:
                raise EOFError(f"connection closed after {lines!r}")
            assert_reply_line(line)
            lines.append(line)
            if line[3:4] != b"-":
                return Reply(lines)

    async def send(self, data: bytes) -> Reply:
        """Write raw bytes and read the one reply they earn."""
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def login(self, secret: str, login: bytes = b"alice") -> None:
        """EHLO and AUTH PLAIN with a right secret."""
        assert (await self.send(b"EHLO app.example\r\n")).code == 250
        blob = base64.b64encode(b"\0" + login + b"\0" + secret.encode())
        assert (await self.send(b"AUTH PLAIN " + blob + b"\r\n")).code == 235

    async def close(self) -> None:
        """Close the connection, whatever state it is in."""
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


# --- A relay in front of a recording upstream, cloned from one prepared state directory ---


@dataclass(frozen=True)
class Template:
    """An initialised relay directory with user alice, made once per module."""

    setup: RelaySetup
    secret: str


@dataclass(frozen=True)
class Relay:
    """A running relay (cloned from a template) in front of a recording upstream."""

    daemon: Daemon
    upstream: Upstream
    secret: str
    setup: RelaySetup
    clients: list[RawClient] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The relay's listening port."""
        return self.daemon.addresses[0][1]

    async def queued(self) -> int:
        """How many messages the spool holds."""
        return (await self.daemon.parts.spool.stats(time.time())).queued

    async def client(self, logged_in: bool = True) -> RawClient:
        """A connected raw client; logged in as alice unless told otherwise."""
        client = await RawClient.connect(self.port)
        self.clients.append(client)  # closed when the relay stops, even if the test failed
        if logged_in:
            await client.login(self.secret)
        return client


def make_template(root: Path) -> Template:
    """`relay init` and `relay user add alice` once; tests copy the result."""
    # No login-failure delay: these tests fail logins on purpose, many times.
    setup = write_config(root, {"lab": PLACEHOLDER}, limits={"auth_failure_delay": 0})
    return Template(setup, setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55"))


def clone(template: Template, root: Path) -> RelaySetup:
    """A private copy of the template's config, key and state (modes kept)."""
    shutil.copytree(template.setup.root, root / "relay")
    return RelaySetup(root / "relay")


def rewrite_config(setup: RelaySetup, **settings: Any) -> None:
    """Replace top-level config keys in the copy's config.yaml."""
    document = yaml.safe_load(setup.config_path.read_text())
    document.update(settings)
    setup.config_path.write_text(yaml.safe_dump(document))


@asynccontextmanager
async def cloned_relay(template: Template, root: Path, **settings: Any) -> AsyncIterator[Relay]:
    """Start a recording upstream and a relay (a copy of template) pointed at it; stop both."""
    setup = clone(template, root)
    async with recording_upstream(trustme.CA(), root) as upstream:
        rewrite_config(setup, providers={"lab": provider_for(upstream)}, **settings)
        async with running_daemon(setup) as daemon:
            running = Relay(daemon, upstream, template.secret, setup)
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.close()


async def assert_nothing_sent(relay: Relay) -> None:
    """Nothing queued, and the provider never even heard from relay."""
    assert await relay.queued() == 0
    assert relay.upstream.handler.received == []
    assert relay.upstream.handler.connections == 0
