"""DATA written to the provider in pieces through aiosmtplib: its one private name is here."""

from __future__ import annotations

import asyncio

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from relay.message import wire_pieces

# aiosmtplib's undocumented name relay relies on: its flow-control wait, as asyncio's
# StreamWriter.drain(). Pinned by tests/test_library_contracts.py; `relay serve` refuses to
# start without it rather than find out at the first mail.
AIOSMTPLIB_INTERNALS = {"_drain_helper": "waiting for the socket to take each piece of DATA"}

START_INPUT = 354


COMPLETED = 250


WRITE_CHUNK = 256 * 1024


async def send_data(client: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """DATA through aiosmtplib's lower-level calls: its data() copies the message three times."""
    start = await client.execute_command(b"DATA")
    if start.code != START_INPUT:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        await _write_data(protocol, data, client.timeout)
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError):
        client.close()  # as data() does: a half-sent message leaves the session unusable
        raise
    if response.code != COMPLETED:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _write_data(protocol: SMTPProtocol, data: bytes, timeout: float | None) -> None:
    """Write the message in pieces, each once the connection has taken the one before."""
    pieces = wire_pieces(data)
    if len(data) < WRITE_CHUNK:
        pieces = [b"".join(pieces)]  # a small mail costs one TLS record and one send, not three
    for piece in pieces:
        for start in range(0, len(piece), WRITE_CHUNK):
            protocol.write(piece[start : start + WRITE_CHUNK])
            # Written at once, a 10 MB mail is held three more times by asyncio's TLS layer and
            # socket buffer. aiosmtplib has no public drain(); _drain_helper is its flow-control
            # hook (the asyncio StreamWriter.drain() pattern it copies).
            try:
                async with asyncio.timeout(timeout):
                    await protocol._drain_helper()
            except TimeoutError:
                raise aiosmtplib.SMTPTimeoutError("Timed out sending the message") from None


def aiosmtplib_gaps() -> list[str]:
    """The internals relay needs that this aiosmtplib lacks (empty when all are there)."""
    return [
        f"aiosmtplib.protocol.SMTPProtocol.{name}"
        for name in AIOSMTPLIB_INTERNALS
        if not asyncio.iscoroutinefunction(getattr(SMTPProtocol, name, None))
    ]
