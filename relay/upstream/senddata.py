"""DATA written to the provider in pieces through aiosmtplib: its one private name is here."""

from __future__ import annotations

import asyncio

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from relay.errors import StoreError
from relay.message import (
    CRLF,
    STREAM_THRESHOLD,
    MessageData,
    SpooledData,
    end_of_data,
    stuffed,
    wire_pieces,
)

# aiosmtplib's undocumented name relay relies on: its flow-control wait, as asyncio's
# StreamWriter.drain(). Pinned by tests/test_library_contracts.py; `relay serve` refuses to
# start without it rather than find out at the first mail.
AIOSMTPLIB_INTERNALS = {"_drain_helper": "waiting for the socket to take each piece of DATA"}

START_INPUT = 354


COMPLETED = 250


WRITE_CHUNK = 256 * 1024


class ReplyLost(Exception):
    """The end of DATA was handed to the connection, and no reply to it came back."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")


async def send_data(client: aiosmtplib.SMTP, data: MessageData) -> aiosmtplib.SMTPResponse:
    """DATA through aiosmtplib's lower-level calls: its data() copies the message three times.

    Data in the spool (a large mail) is read a piece at a time as the connection takes it.
    """
    start = await client.execute_command(b"DATA")
    if start.code != START_INPUT:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    return await send_body(client, data)


async def send_body(client: aiosmtplib.SMTP, data: MessageData) -> aiosmtplib.SMTPResponse:
    """The message and its end, once the server answered DATA with 354; then its reply."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    progress = _Progress()
    try:
        await _write_data(protocol, data, client.timeout, progress)
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as error:
        client.close()  # as data() does: a half-sent message leaves the session unusable
        if progress.all_written:
            # The server may have taken the mail and answered 250 into the void.
            raise ReplyLost(error) from error
        raise
    except BaseException:
        # DATA cut short (the spool could not be read, or the attempt was cancelled): without
        # its end line the server discards what it got, and the session cannot be used again.
        client.close()
        raise
    if response.code != COMPLETED:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


class _Progress:
    """How far a DATA write got: once the end of data is written, a lost reply is in doubt."""

    all_written = False


async def _write_data(
    protocol: SMTPProtocol, data: MessageData, timeout: float | None, progress: _Progress
) -> None:
    """Write the message in pieces, each once the connection has taken the one before."""
    if not isinstance(data, bytes):
        await _write_spooled(protocol, data, timeout, progress)
        return
    pieces = wire_pieces(data)
    if len(data) < WRITE_CHUNK:
        pieces = [b"".join(pieces)]  # a small mail costs one TLS record and one send, not three
    for index, piece in enumerate(pieces):
        await _write_piece(protocol, piece, timeout, progress, last=index == len(pieces) - 1)


async def _write_spooled(
    protocol: SMTPProtocol, data: SpooledData, timeout: float | None, progress: _Progress
) -> None:
    """Write data read from the spool a piece at a time, dot-stuffed across the pieces."""
    before = CRLF  # the data's start is a line start (RFC 5321 §4.5.2)
    for start in range(0, data.size, STREAM_THRESHOLD):
        piece = await data.read(start, STREAM_THRESHOLD)
        if not piece:
            raise StoreError("message data in the spool ended early")
        # Data the spool knows has no line starting with a dot needs no pass to stuff one.
        wire = stuffed(piece, before) if data.dot_lines else piece
        await _write_piece(protocol, wire, timeout, progress, last=False)
        before = (before + piece[-2:])[-2:]
    await _write_piece(protocol, end_of_data(before), timeout, progress, last=True)


async def _write_piece(
    protocol: SMTPProtocol, piece: bytes, timeout: float | None, progress: _Progress, *, last: bool
) -> None:
    """Write piece in WRITE_CHUNKs, each once the connection took the one before; last: the end."""
    for start in range(0, len(piece), WRITE_CHUNK):
        protocol.write(piece[start : start + WRITE_CHUNK])
        progress.all_written = last and start + WRITE_CHUNK >= len(piece)
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
