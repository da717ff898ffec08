"""RFC 2920 PIPELINING upstream: MAIL, every RCPT and DATA in one write, their replies read back.

aiosmtplib 5.1.3 cannot read pipelined replies: its protocol drops bytes that arrive while a
parsed reply waits to be collected, and parses its buffer only when bytes arrive, so a second
reply in the same segment is never seen. While the replies come back, relay's own intake stands
in for aiosmtplib's protocol on the transport (asyncio's public set_protocol) and parses them
with ReplyParser; the body then goes through aiosmtplib's protocol as before.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol

from relay.message import DOT_ATOM_ADDRESS
from relay.upstream.envelope import Upstream
from relay.upstream.replyparser import ReplyParser
from relay.upstream.verdicts import RecipientVerdicts, lost_before_mail, mail_refusal

# aiosmtplib's undocumented shape relay relies on here: its protocol is a plain (not buffered)
# asyncio protocol whose transport attribute is the connection's transport, so another
# protocol can stand in for it and hand it back. Pinned by tests/test_library_contracts.py;
# `relay serve` refuses to start without it.
AIOSMTPLIB_PIPELINING = {
    "transport": "the connection's transport, on which relay's intake stands in for a while",
    "data_received": "where aiosmtplib reads replies: relay's intake takes them instead",
    "connection_lost": "told when the connection ends while relay's intake stands in",
    "pause_writing": "told of flow control while relay's intake stands in",
    "resume_writing": "told of flow control while relay's intake stands in",
}
# As aiosmtplib's execute_command refuses them: CR, LF or NUL in an argument inject commands.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
MAIL_ACCEPTED = 250


def envelope_commands(
    sender: str, recipients: list[str], envelope: Upstream, options: list[str]
) -> bytes:
    """MAIL FROM, RCPT TO per recipient and DATA, as one piece to write (RFC 2920 §3.1)."""
    commands = [_command(b"MAIL", b"FROM:", sender, options + envelope.mail, envelope.encoding)]
    for recipient in recipients:
        rcpt = envelope.rcpt.get(recipient, [])
        commands.append(_command(b"RCPT", b"TO:", recipient, rcpt, envelope.encoding))
    commands.append(b"DATA\r\n")
    return b"".join(commands)


def _command(
    verb: bytes, prefix: bytes, address: str, options: Iterable[str], encoding: str
) -> bytes:
    # aiosmtplib's quote_address runs the email parser: 1% of relay's CPU a mail, for the plain
    # addresses apps give, which it would give back as they are.
    plain = DOT_ATOM_ADDRESS.fullmatch(address) is not None
    quoted = f"<{address}>" if plain else quote_address(address)
    args = [verb, prefix + quoted.encode(encoding)]
    args += [option.encode("ascii") for option in options]
    if any(_CONTROL.search(arg) for arg in args):
        raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


class ReplyIntake(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol on the transport while pipelined replies come back."""

    def __init__(self, inner: SMTPProtocol) -> None:
        self._inner = inner
        self._parser = ReplyParser()
        self._arrived = asyncio.Event()
        self._failure: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            self._parser.feed(data)
        except aiosmtplib.SMTPResponseException as malformed:
            self._failure = malformed
        self._arrived.set()

    def eof_received(self) -> bool:
        self._end(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport, as aiosmtplib's protocol does

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._end(lost)
        self._inner.connection_lost(exc)  # so the client knows it is disconnected

    def send(self, commands: bytes) -> None:
        """Write the pipelined commands, all in one piece."""
        self._inner.write(commands)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _end(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        self._arrived.set()

    async def reply(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        """The next reply; each waits at most timeout, as one command's reply does."""
        while (reply := self._parser.next_reply()) is None:
            if self._failure is not None:
                raise self._failure
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from None
        return reply


@asynccontextmanager
async def pipelined(client: aiosmtplib.SMTP) -> AsyncIterator[ReplyIntake]:
    """Relay's intake on the connection while replies come back; any failure closes it."""
    protocol = client.protocol
    transport = protocol.transport if protocol is not None else None
    if protocol is None or transport is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    intake = ReplyIntake(protocol)
    transport.set_protocol(intake)
    try:
        yield intake
    except BaseException:
        transport.set_protocol(protocol)
        # Replies left unread would be paired with the wrong commands: the session is done.
        client.close()
        raise
    transport.set_protocol(protocol)


async def pipelined_envelope(
    client: aiosmtplib.SMTP, where: str, commands: bytes, recipients: list[str], *, reused: bool
) -> tuple[RecipientVerdicts, aiosmtplib.SMTPResponse]:
    """Write the envelope and DATA at once; the recipients' verdicts and DATA's reply."""
    verdicts = RecipientVerdicts(where)
    async with pipelined(client) as replies:
        try:
            replies.send(commands)
            mail = await replies.reply(client.timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as error:
            raise lost_before_mail(error, where, reused=reused) from None
        if mail.code != MAIL_ACCEPTED:
            raise mail_refusal(mail.code, mail.message, where, reused=reused)
        for recipient in recipients:
            rcpt = await replies.reply(client.timeout)
            verdicts.take(recipient, rcpt.code, rcpt.message)
        start = await replies.reply(client.timeout)
    return verdicts, start


def pipelining_gaps() -> list[str]:
    """The shape of aiosmtplib's protocol relay's intake needs that it lacks (empty when all)."""
    own = [vars(cls) for cls in SMTPProtocol.__mro__ if cls.__module__.startswith("aiosmtplib")]
    gaps = [
        f"aiosmtplib.protocol.SMTPProtocol.{name}"
        for name in AIOSMTPLIB_PIPELINING
        if name != "transport" and not any(callable(names.get(name)) for names in own)
    ]
    if "transport" not in SMTPProtocol.__init__.__code__.co_names:
        gaps.append("aiosmtplib.protocol.SMTPProtocol.transport")
    if issubclass(SMTPProtocol, asyncio.BufferedProtocol):
        gaps.append("aiosmtplib.protocol.SMTPProtocol as a plain (not buffered) protocol")
    return gaps
