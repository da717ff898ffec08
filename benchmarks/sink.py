"""The upstream sink: an SMTP server with STARTTLS and AUTH that counts mail and keeps none.

Run as its own process: `python -m benchmarks.sink --cert C --key K --login L` with the
password in $BENCH_SINK_PASSWORD. It prints `{"port": N, "plain_port": M}` once listening (port
wants STARTTLS before AUTH, as providers do; plain_port takes AUTH in the clear, for the
direct-plain baseline), then answers control lines on stdin, one JSON line each on stdout:

    stats [T0 T1]   totals, and how many mails arrived between monotonic times T0 and T1
    reset           forget everything counted so far
    delay D [C]     wait D ms before the reply to the end of DATA (and C ms before the replies
                    to MAIL and RCPT), as a provider far away does; 0 answers at once
    quit            stop (end of stdin does the same)

It is a raw asyncio.Protocol rather than aiosmtpd because aiosmtpd reads DATA one line at a
time in Python: a sink that costs more CPU per mail than the thing it measures would hide the
difference that the benchmark is after. Here the end of DATA is found with bytes.find over each
chunk as it arrives, and the content is dropped at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import hmac
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 4096
MAX_MESSAGE = 64 * 1024 * 1024
HOSTNAME = "sink.bench.test"


@dataclass
class Counters:
    """What the sink has accepted."""

    arrivals: list[float] = field(default_factory=list)
    bytes: int = 0
    connections: int = 0
    tls_sessions: int = 0
    logins: int = 0
    failed_logins: int = 0
    protocol_errors: int = 0

    def stats(self, start: float | None, end: float | None) -> dict[str, int]:
        """Totals, and the arrivals within [start, end] when both are given."""
        window = 0
        if start is not None and end is not None:
            window = bisect.bisect_right(self.arrivals, end) - bisect.bisect_left(
                self.arrivals, start
            )
        return {
            "mails": len(self.arrivals),
            "window_mails": window,
            "bytes": self.bytes,
            "connections": self.connections,
            "tls_sessions": self.tls_sessions,
            "logins": self.logins,
            "failed_logins": self.failed_logins,
            "protocol_errors": self.protocol_errors,
        }


@dataclass
class Delays:
    """How long the sink takes to answer, in seconds; set from the control pipe."""

    data: float = 0.0
    command: float = 0.0


@dataclass(frozen=True)
class SinkSettings:
    """Who may log in, the TLS context STARTTLS uses, and whether AUTH needs it first."""

    login: bytes
    password: bytes
    tls: ssl.SSLContext
    delays: Delays = field(default_factory=Delays)
    require_tls: bool = True


class SinkProtocol(asyncio.Protocol):
    """One SMTP session: STARTTLS is required before AUTH, AUTH before MAIL."""

    def __init__(self, settings: SinkSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.tls = False
        self.authenticated = False
        self.has_sender = False
        self.recipients = 0
        self.in_data = False
        self.data_tail = b""
        self.data_bytes = 0
        self.pending_auth: str | None = None  # "plain", "login-user" or "login-password"
        self.auth_user = b""
        self.upgrading = False
        self.answering = False  # a delayed reply is pending: read no further command yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("sink needs a stream transport")
        first = self.transport is None
        self.transport = transport
        if first:
            self.counters.connections += 1
            self.reply(f"220 {HOSTNAME} ESMTP bench sink")

    def reply(self, line: str) -> None:
        """Send one reply line."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line.encode() + b"\r\n")

    def data_received(self, data: bytes) -> None:
        if self.in_data:
            self._take_data(data)
            return
        self.buffer += data
        self._run_commands()

    def _answer(self, line: str, delay: float, then: Callable[[], None] | None = None) -> None:
        """Reply after delay seconds, reading no further command until then."""
        if not delay:
            if then is not None:
                then()
            self.reply(line)
            return
        self.answering = True

        def answer() -> None:
            self.answering = False
            if then is not None:
                then()
            self.reply(line)
            self._run_commands()

        asyncio.get_running_loop().call_later(delay, answer)

    def _run_commands(self) -> None:
        while not self.in_data and not self.upgrading and not self.answering:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    self.reply("500 5.5.2 line too long")
                    self._close()
                return
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            self._command(line)
        if self.in_data and self.buffer:
            rest = bytes(self.buffer)
            self.buffer.clear()
            self._take_data(rest)

    def _take_data(self, data: bytes) -> None:
        # The CRLF that ended the DATA command counts as the CRLF before the final dot, so
        # an empty message (".\r\n" at once) ends too.
        window = self.data_tail + data
        end = window.find(END_OF_DATA)
        if end < 0:
            self.data_bytes += len(data)
            self.data_tail = window[-(len(END_OF_DATA) - 1) :]
            if self.data_bytes > MAX_MESSAGE:
                self.reply("552 5.3.4 message too big for the sink")
                self._close()
            return
        consumed = end + len(END_OF_DATA) - len(self.data_tail)
        self.data_bytes += consumed
        self.in_data = False
        self.has_sender, self.recipients = False, 0
        size = self.data_bytes

        def arrived() -> None:  # counted when the 250 goes out: that is when it was taken
            self.counters.arrivals.append(time.monotonic())
            self.counters.bytes += size

        self.buffer += data[consumed:]
        queued = f"250 2.0.0 Ok: queued as {len(self.counters.arrivals) + 1}"
        self._answer(queued, self.settings.delays.data, arrived)
        if not self.answering and self.buffer:
            self._run_commands()

    def _command(self, line: bytes) -> None:
        if self.pending_auth is not None:
            self._auth_continue(line)
            return
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in (b"EHLO", b"HELO"):
            self.has_sender, self.recipients = False, 0
            self._ehlo(verb)
        elif verb == b"STARTTLS":
            self._starttls()
        elif verb == b"AUTH":
            self._auth(arg)
        elif verb == b"MAIL":
            if not self.authenticated:
                self.reply("530 5.7.0 authentication required")
            else:
                self.has_sender, self.recipients = True, 0
                self._answer("250 2.1.0 Ok", self.settings.delays.command)
        elif verb == b"RCPT":
            if not self.has_sender:
                self.reply("503 5.5.1 need MAIL first")
            else:
                self.recipients += 1
                self._answer("250 2.1.5 Ok", self.settings.delays.command)
        elif verb == b"DATA":
            if not self.recipients:
                self.reply("503 5.5.1 need RCPT first")
            else:
                self.in_data, self.data_tail, self.data_bytes = True, b"\r\n", 0
                self.reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self.has_sender, self.recipients = False, 0
            self.reply("250 2.0.0 Ok")
        elif verb == b"NOOP":
            self.reply("250 2.0.0 Ok")
        elif verb == b"QUIT":
            self.reply("221 2.0.0 Bye")
            self._close()
        else:
            self.counters.protocol_errors += 1
            self.reply("502 5.5.2 command not implemented")

    def _ehlo(self, verb: bytes) -> None:
        if verb == b"HELO":
            self.reply(f"250 {HOSTNAME}")
            return
        lines = [HOSTNAME, "PIPELINING", f"SIZE {MAX_MESSAGE}", "8BITMIME"]
        lines.append(
            "AUTH PLAIN LOGIN" if self.tls or not self.settings.require_tls else "STARTTLS"
        )
        lines.append("ENHANCEDSTATUSCODES")
        for line in lines[:-1]:
            self.reply(f"250-{line}")
        self.reply(f"250 {lines[-1]}")

    def _starttls(self) -> None:
        if self.tls:
            self.reply("503 5.5.1 TLS already active")
            return
        self.reply("220 2.0.0 Ready to start TLS")
        # RFC 3207 §4.2: forget anything the client sent before the handshake.
        self.buffer.clear()
        self.upgrading = True
        asyncio.get_running_loop().create_task(self._upgrade())

    async def _upgrade(self) -> None:
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        try:
            upgraded = await loop.start_tls(transport, self, self.settings.tls, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            self.counters.protocol_errors += 1
            transport.close()
            return
        if upgraded is None:
            return
        self.transport = upgraded
        self.tls, self.upgrading, self.authenticated = True, False, False
        self.counters.tls_sessions += 1
        # The client may have spoken as soon as its side of the handshake finished, before
        # start_tls() returned here: run what arrived meanwhile.
        self._run_commands()

    def _auth(self, arg: bytes) -> None:
        if not self.tls and self.settings.require_tls:
            self.reply("530 5.7.0 must issue STARTTLS first")
            return
        mechanism, _, initial = arg.partition(b" ")
        mechanism = mechanism.upper()
        if mechanism == b"PLAIN":
            if initial:
                self._check_plain(initial)
            else:
                self.pending_auth = "plain"
                self.reply("334 ")
        elif mechanism == b"LOGIN":
            if initial:
                self.auth_user = _b64(initial)
                self.pending_auth = "login-password"
                self.reply("334 UGFzc3dvcmQ6")
            else:
                self.pending_auth = "login-user"
                self.reply("334 VXNlcm5hbWU6")
        else:
            self.reply("504 5.5.4 mechanism not supported")

    def _auth_continue(self, line: bytes) -> None:
        stage, self.pending_auth = self.pending_auth, None
        if line == b"*":
            self.reply("501 5.7.0 authentication cancelled")
        elif stage == "plain":
            self._check_plain(line)
        elif stage == "login-user":
            self.auth_user = _b64(line)
            self.pending_auth = "login-password"
            self.reply("334 UGFzc3dvcmQ6")
        else:
            self._check(self.auth_user, _b64(line))

    def _check_plain(self, blob: bytes) -> None:
        parts = _b64(blob).split(b"\0")
        if len(parts) != 3:
            self.reply("501 5.5.2 cannot split PLAIN credentials")
            return
        self._check(parts[1], parts[2])

    def _check(self, login: bytes, password: bytes) -> None:
        ok = hmac.compare_digest(login, self.settings.login) and hmac.compare_digest(
            password, self.settings.password
        )
        if ok:
            self.authenticated = True
            self.counters.logins += 1
            self.reply("235 2.7.0 Authentication successful")
        else:
            self.counters.failed_logins += 1
            self.reply("535 5.7.8 authentication credentials invalid")

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _b64(blob: bytes) -> bytes:
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return b""


async def _control(counters: Counters, delays: Delays) -> None:
    """Answer control lines on stdin until quit or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, *args = line.decode().split()
        if command == "stats":
            start, end = (float(args[0]), float(args[1])) if len(args) == 2 else (None, None)
            _say(counters.stats(start, end))
        elif command == "reset":
            # Sessions hold this very object, so it is cleared in place.
            fresh = Counters()
            for name in Counters.__dataclass_fields__:
                setattr(counters, name, getattr(fresh, name))
            _say({"reset": True})
        elif command == "delay":
            delays.data = float(args[0]) / 1000
            delays.command = float(args[1]) / 1000 if len(args) > 1 else 0.0
            _say({"delay_ms": args})
        elif command == "quit":
            return


def _say(document: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _listen(settings: SinkSettings, counters: Counters) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SinkProtocol(settings, counters), "127.0.0.1", 0, backlog=1024
    )


async def serve(settings: SinkSettings) -> None:
    """Listen on 127.0.0.1 port 0, announce the port, and serve until told to quit."""
    counters = Counters()
    plain = replace(settings, require_tls=False)
    servers = [await _listen(kind, counters) for kind in (settings, plain)]
    port, plain_port = (server.sockets[0].getsockname()[1] for server in servers)
    _say({"port": port, "plain_port": plain_port, "pid": os.getpid()})
    try:
        await _control(counters, settings.delays)
    finally:
        for server in servers:
            server.close()


def main() -> None:
    """Entry point of the sink process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--login", required=True, help="the one login accepted")
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    password = os.environ.get("BENCH_SINK_PASSWORD", "").encode()
    asyncio.run(serve(SinkSettings(args.login.encode(), password, context)))


if __name__ == "__main__":
    main()
