"""An SMTP proxy in front of a real server that lets the mail through and loses the 250.

It terminates implicit TLS with the peers' certificate, speaks implicit TLS to the server, and
passes every byte both ways, except: for the first `cut` mails, once the client has sent the
end of DATA, the server's reply is read and dropped, and the client is cut off. The server
has the mail; the client never hears so, as when a connection dies at the worst moment.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

END_OF_DATA = b"\r\n.\r\n"
CHUNK = 65536


@dataclass
class ReplyCutter:
    """Counts what went through, and how many replies it swallowed."""

    server_host: str
    server_port: int
    server_tls: ssl.SSLContext
    cut: int = 1
    data_ends: int = 0  # ends of DATA passed to the server: how often a mail was sent
    swallowed: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        """Proxy one client connection."""
        try:
            server_in, server_out = await asyncio.open_connection(
                self.server_host, self.server_port, ssl=self.server_tls
            )
        except OSError:
            client_out.close()
            return
        cutting = asyncio.Event()
        upward = asyncio.ensure_future(self._client_to_server(client_in, server_out, cutting))
        downward = asyncio.ensure_future(self._server_to_client(server_in, client_out, cutting))
        try:
            await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            upward.cancel()
            downward.cancel()
            for writer in (client_out, server_out):
                writer.transport.abort()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cutting: asyncio.Event
    ) -> None:
        in_data, tail = False, b""
        while chunk := await reader.read(CHUNK):
            seen = tail + chunk
            if not in_data and seen.upper().endswith(b"DATA\r\n"):
                in_data = True
            elif in_data and seen.endswith(END_OF_DATA):
                in_data = False
                self.data_ends += 1
                if self.swallowed < self.cut:
                    self.swallowed += 1
                    cutting.set()  # before the write: the reply may come back at once
            tail = seen[-8:]
            writer.write(chunk)
            await writer.drain()

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cutting: asyncio.Event
    ) -> None:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                return
            if cutting.is_set():
                return  # the reply to the end of DATA: dropped, and the client cut off
            writer.write(chunk)
            await writer.drain()


@asynccontextmanager
async def reply_cutter(
    server_host: str, server_port: int, ca_file: Path, cert: Path, key: Path, cut: int = 1
) -> AsyncIterator[tuple[ReplyCutter, int]]:
    """Run the proxy on 127.0.0.1 port 0 (implicit TLS); yield it and its port."""
    server_tls = ssl.create_default_context(cafile=str(ca_file))
    client_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client_tls.load_cert_chain(cert, key)
    cutter = ReplyCutter(server_host, server_port, server_tls, cut)
    server = await asyncio.start_server(cutter.handle, "127.0.0.1", 0, ssl=client_tls)
    try:
        yield cutter, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        with suppress(Exception):
            await server.wait_closed()
