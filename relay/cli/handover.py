"""Handing mail to the daemon over its Unix socket: SMTP, as any app speaks it to relay.

The socket speaks SMTP rather than a protocol of relay's own: the daemon serves it with the
listener every app meets (the same handler, sender rules, limits, rates, fix-ups, spool and
Sent copy; only AUTH is replaced by the kernel's word on who connected, SO_PEERCRED), so
nothing about the mail is decided twice. `-bs` is then only a pipe between the caller and the
daemon, and the client is the standard library's smtplib. A frame of our own would have meant
a second parser in the daemon, a second set of refusals, and an SMTP server inside -bs.
"""

from __future__ import annotations

import os
import smtplib
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from relay.errors import RelayError
from relay.reply import Reply

HANDOVER_TIMEOUT = 120.0  # seconds to wait for the daemon's reply to one command
NOT_RUNNING = b"421 4.3.2 relay is not running, try again later\r\n"


class DaemonUnreachable(RelayError, ConnectionError):
    """Nothing accepts connections on the socket: the daemon is stopped, or starting."""


class SocketForbidden(RelayError, PermissionError):
    """This user may not reach the socket (the directory's or the socket's mode)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the daemon is told beside the message."""

    sender: str
    recipients: tuple[str, ...]
    body: str | None = None  # BODY=, when the daemon offers 8BITMIME


class UnixSMTP(smtplib.SMTP):
    """smtplib's client over a Unix socket instead of TCP."""

    def __init__(self, path: Path, timeout: float = HANDOVER_TIMEOUT) -> None:
        self.path = path
        # No local_hostname lookup (getfqdn may wait on DNS): the peer is this machine.
        super().__init__(local_hostname="localhost", timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return connect(self.path, timeout)


def connect(path: Path, timeout: float | None = HANDOVER_TIMEOUT) -> socket.socket:
    """A stream connected to the daemon's socket; DaemonUnreachable or SocketForbidden if not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except PermissionError as error:
        sock.close()
        raise SocketForbidden(f"may not connect to {path}: {error.strerror}") from None
    except (FileNotFoundError, ConnectionRefusedError) as error:
        sock.close()
        raise DaemonUnreachable(f"nothing listens on {path} ({error.strerror})") from None
    except OSError as error:
        sock.close()
        raise DaemonUnreachable(f"cannot connect to {path}: {error.strerror or error}") from None
    return sock


def hand_over(path: Path, envelope: Envelope, data: bytes, log: list[str]) -> Reply:
    """Give one message (CRLF lines) to the daemon; its reply, positive only if it took it all.

    Every recipient must be taken before DATA, or the transaction is reset and nothing is
    sent: the caller keeps the whole mail, never a copy some recipients already have.
    """
    client = UnixSMTP(path)
    try:
        greeting = _reply(*client.connect("localhost", 0), log)
        if greeting.code != 220:
            return greeting  # refused before the greeting: not mapped, or too many sessions
        code, text = client.ehlo()
        if code != 250:
            return _reply(code, text, log)
        options = [f"BODY={envelope.body}"] if envelope.body and client.has_extn("8bitmime") else []
        reply = _reply(*client.mail(envelope.sender, options), log)
        if not reply.positive:
            return reply
        for recipient in envelope.recipients:
            reply = _reply(*client.rcpt(recipient), log)
            if not reply.positive:
                client.rset()
                return Reply(reply.code, reply.enhanced, f"<{recipient}>: {reply.text}")
        try:
            return _reply(*client.data(data), log)
        except smtplib.SMTPDataError as refused:
            return _reply(refused.smtp_code, refused.smtp_error, log)
    except (DaemonUnreachable, SocketForbidden):
        raise
    except (smtplib.SMTPServerDisconnected, OSError) as error:
        # The caller keeps the mail: if the break came after the daemon spooled it, it may go
        # out twice (as any SMTP client's retry can), but it is never lost.
        raise DaemonUnreachable(f"the daemon broke off the conversation: {error}") from None
    finally:
        _quit(client)


def _reply(code: int, text: bytes | str, log: list[str]) -> Reply:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    reply = Reply.parse(f"{code} {' '.join(words.split())}")
    log.append(reply.line)
    return reply


def _quit(client: UnixSMTP) -> None:
    try:
        if client.sock is not None:
            client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def converse(path: Path, stdin: int, stdout: int) -> None:
    """-bs: the caller's SMTP on stdin/stdout, carried to the daemon and back unchanged."""
    try:
        sock = connect(path, timeout=None)
    except DaemonUnreachable:
        _write_all(stdout, NOT_RUNNING)  # the SMTP client hears it as a greeting
        raise
    with sock:
        feeder = threading.Thread(target=_feed, args=(stdin, sock), daemon=True)
        feeder.start()
        while chunk := sock.recv(65536):
            _write_all(stdout, chunk)


def _feed(stdin: int, sock: socket.socket) -> None:
    """Copy the caller's commands to the daemon; at their end, tell the daemon so."""
    try:
        while chunk := os.read(stdin, 65536):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return  # the daemon closed first (after QUIT, or a refusal): nothing more to send


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def exit_status(reply: Reply) -> int:
    """The sysexits.h status for the daemon's last reply (what cron and PHP report)."""
    if reply.positive:
        return os.EX_OK
    if not reply.permanent:
        return os.EX_TEMPFAIL
    status = reply.status("5.0.0")
    if status.startswith("5.7.") or reply.code == 530:
        return os.EX_NOPERM  # not yours to send as, not mapped, disabled
    if status in ("5.1.7", "5.1.8"):
        return os.EX_DATAERR  # RFC 3463: the sender's address is bad
    if status.startswith("5.1."):
        return os.EX_NOUSER  # RFC 3463 X.1.x: a destination address is bad
    if reply.code == 552 or status.startswith(("5.3.4", "5.5.", "5.6.")):
        return os.EX_DATAERR  # too big, or the message or an argument malformed
    return os.EX_UNAVAILABLE
