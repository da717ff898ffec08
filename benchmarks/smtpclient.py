"""A lean SMTP client on asyncio streams: what the load generator speaks, as a plain app would."""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass

# A 10 MB message arrives in one write; the reader never buffers more than a reply.
READ_LIMIT = 1 << 16


class SmtpReplyError(Exception):
    """The server answered with a code other than the one the step needs."""

    def __init__(self, step: str, code: int, text: str) -> None:
        super().__init__(f"{step}: {code} {text}")
        self.step = step
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Target:
    """Where the generator submits, and how it logs in there."""

    host: str
    port: int
    starttls: bool = False
    ca_file: str | None = None
    server_name: str | None = None
    login: str | None = None
    password: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying client context when the target needs STARTTLS."""
        if not self.starttls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)


class SmtpClient:
    """One SMTP connection; each step waits for its reply, as apps without PIPELINING do."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, target: Target, timeout: float = 120.0) -> SmtpClient:
        """Open a connection and read the greeting; every reply must come within timeout."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, limit=READ_LIMIT
            )
        client = cls(reader, writer, timeout)
        try:
            await client.expect("greeting", 220)
        except BaseException:
            client.abort()
            raise
        return client

    async def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply; TimeoutError (an OSError) if it is late."""
        lines = []
        async with asyncio.timeout(self.timeout):
            while True:
                line = await self.reader.readuntil(b"\r\n")
                lines.append(line[4:-2].decode("utf-8", "replace"))
                if line[3:4] != b"-":
                    return int(line[:3]), " ".join(lines)

    async def expect(self, step: str, code: int) -> str:
        """Read a reply and raise unless it has the expected code."""
        got, text = await self.reply()
        if got != code:
            raise SmtpReplyError(step, got, text)
        return text

    async def command(self, step: str, line: bytes, code: int) -> str:
        """Send one command line and check its reply."""
        self.writer.write(line + b"\r\n")
        return await self.expect(step, code)

    async def hello(self, target: Target, name: bytes = b"loadgen.bench.test") -> None:
        """EHLO, STARTTLS when the target needs it, and AUTH PLAIN when it has a login."""
        await self.command("ehlo", b"EHLO " + name, 250)
        context = target.tls_context()
        if context is not None:
            await self.command("starttls", b"STARTTLS", 220)
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(context, server_hostname=target.server_name)
            await self.command("ehlo", b"EHLO " + name, 250)
        if target.login is not None and target.password is not None:
            token = f"\0{target.login}\0{target.password}".encode()
            await self.command("auth", b"AUTH PLAIN " + base64.b64encode(token), 235)

    async def send(self, sender: bytes, recipient: bytes, parts: tuple[bytes, ...]) -> str:
        """One mail transaction; parts are already dot-stuffed and end with CRLF."""
        await self.command("mail", b"MAIL FROM:<" + sender + b">", 250)
        await self.command("rcpt", b"RCPT TO:<" + recipient + b">", 250)
        await self.command("data", b"DATA", 354)
        self.writer.writelines((*parts, b".\r\n"))
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        return await self.expect("end of data", 250)

    async def quit(self) -> None:
        """Say QUIT, wait for 221 and close."""
        try:
            await self.command("quit", b"QUIT", 221)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the connection without ceremony."""
        self.writer.close()
