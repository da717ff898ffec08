"""An IMAP session for Sent copies: TLS with a verified certificate, login, LIST, APPEND.

relay drives the standard library's imaplib in a worker thread rather than aioimaplib. imaplib
does STARTTLS with relay's own SSLContext, bounds every socket read and write with a timeout,
reads literals in replies and is typed (typeshed). aioimaplib 2.0.3 has no STARTTLS, leaves a
command waiting out its whole timeout when the server drops the connection, writes an APPEND
literal without flow control, ships no type information, and is GPL-3.0-only while relay is MIT.
The worker thread only ever blocks on a socket that has a timeout, and the event loop can cut
that socket (Aborter) when the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import SentCopyError, SentCopyRetry
from relay.message import STREAM_THRESHOLD, MessageData, SpooledData
from relay.model import Secret
from relay.providers.presets import Endpoint, TlsMode
from relay.sent.imapwire import (
    MISSING_CODES,
    Mailbox,
    error_reply,
    parse_list,
    personal_prefix,
    quoted,
    reply_text,
    response_code,
    retry_advice,
)
from relay.upstream.replies import one_line
from relay.upstream.sasl import bearer_mechanism

SEEN = r"(\Seen)"


class Aborter:
    """Lets the event loop cut short the connection a worker thread is blocked on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._aborted = False

    def watch(self, client: imaplib.IMAP4) -> None:
        """Follow this client's current socket; cut it at once if abort() came first."""
        with self._lock:
            self._socket = client.sock
            aborted = self._aborted
        if aborted:
            _cut(client.sock)

    def abort(self) -> None:
        """Shut the watched socket down, which ends any read or write blocked on it."""
        with self._lock:
            self._aborted = True
            sock = self._socket
        if sock is not None:
            _cut(sock)


def _cut(sock: socket.socket) -> None:
    with suppress(OSError):
        # socket.socket's shutdown, not SSLSocket's: that one drops the TLS object under the
        # thread still using it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class SpooledLiteral:
    """An APPEND literal read from the spool a piece at a time, from the worker thread.

    imaplib takes len() of a literal for its {size} and passes it whole to send(): the clients
    below send this one piece by piece instead, so a large Sent copy is never held whole.
    """

    def __init__(self, data: SpooledData, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._data = data
        self._loop = loop  # the spool is read on its own thread, through the event loop
        self._timeout = timeout

    def __len__(self) -> int:
        return self._data.size

    def pieces(self) -> Iterator[bytes]:
        """The literal's octets in order, each piece read when the socket is ready for it."""
        for start in range(0, self._data.size, STREAM_THRESHOLD):
            read = self._data.read(start, STREAM_THRESHOLD)
            piece = asyncio.run_coroutine_threadsafe(read, self._loop).result(self._timeout)
            if not piece:
                raise OSError("message data in the spool ended early")
            yield piece


Literal = bytes | SpooledLiteral


def literal_for(data: MessageData, loop: asyncio.AbstractEventLoop, timeout: float) -> Literal:
    """What APPEND sends for data: the bytes, or the spool's data read as it goes out."""
    return data if isinstance(data, bytes) else SpooledLiteral(data, loop, timeout)


def _send(client: imaplib.IMAP4, data: object) -> None:
    """imaplib.IMAP4.send, with a SpooledLiteral sent a piece at a time."""
    if isinstance(data, SpooledLiteral):
        for piece in data.pieces():
            imaplib.IMAP4.send(client, piece)
    else:
        imaplib.IMAP4.send(client, data)  # type: ignore[arg-type]  # imaplib passes bytes


class _WatchedPlain(imaplib.IMAP4):
    """imaplib's client, its socket watched by an Aborter from before the greeting."""

    def send(self, data: object) -> None:
        """Send data, a SpooledLiteral piece by piece."""
        _send(self, data)

    def __init__(self, endpoint: Endpoint, timeout: float, aborter: Aborter) -> None:
        self._aborter = aborter
        super().__init__(endpoint.host, endpoint.port, timeout)

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        """Open the socket (imaplib's documented override point) and watch it."""
        super().open(host, port, timeout)
        self._aborter.watch(self)


class _WatchedTls(imaplib.IMAP4_SSL):
    """imaplib's implicit-TLS client, its socket watched by an Aborter from before the greeting."""

    def send(self, data: object) -> None:
        """Send data, a SpooledLiteral piece by piece."""
        _send(self, data)

    def __init__(
        self, endpoint: Endpoint, context: ssl.SSLContext, timeout: float, aborter: Aborter
    ) -> None:
        self._aborter = aborter
        super().__init__(endpoint.host, endpoint.port, ssl_context=context, timeout=timeout)

    def open(self, host: str = "", port: int | None = 993, timeout: float | None = None) -> None:
        """Open the socket and finish the TLS handshake (bounded by timeout), then watch it."""
        super().open(host, port, timeout)
        self._aborter.watch(self)


@dataclass(frozen=True, slots=True)
class ImapAccount:
    """Where and as whom to log in over IMAP; login names the relay user in log lines."""

    login: str
    endpoint: Endpoint
    username: str
    secret: Secret = field(repr=False)
    ca_file: Path | None = None
    bearer: bool = False  # secret is an OAuth2 access token: XOAUTH2 or OAUTHBEARER


def connect(
    account: ImapAccount, context: ssl.SSLContext, timeout: float, aborter: Aborter
) -> ImapSession:
    """Connect, secure the connection with a verified certificate, and log in."""
    endpoint, secret = account.endpoint, account.secret
    server = f"{endpoint.host}:{endpoint.port}"
    with failures("connect", server, secret):
        if endpoint.tls is TlsMode.IMPLICIT:
            client: imaplib.IMAP4 = _WatchedTls(endpoint, context, timeout, aborter)
        else:
            client = _WatchedPlain(endpoint, timeout, aborter)
    session = ImapSession(client, server, secret)
    try:
        if endpoint.tls is TlsMode.STARTTLS:
            session.starttls(context)
            aborter.watch(client)  # the TLS socket replaced the plain one
        session.login(account.username, bearer=account.bearer)
    except BaseException:
        session.close()
        raise
    return session


class ImapSession:
    """An IMAP connection driven from one worker thread; every failure is a SentCopyError."""

    def __init__(self, client: imaplib.IMAP4, server: str, secret: Secret) -> None:
        self._client = client
        self.server = server
        self._secret = secret
        self.capabilities: frozenset[str] = frozenset()

    def starttls(self, context: ssl.SSLContext) -> None:
        """Upgrade a plain connection to TLS, refusing to go on without it."""
        with self.failures("starttls"):
            if "STARTTLS" not in self._client.capabilities:
                raise self._error(
                    "starttls",
                    "server does not offer STARTTLS; refusing to log in without TLS",
                    SentCopyRetry.AFTER_FIX,
                )
            self._client.starttls(context)

    def login(self, username: str, *, bearer: bool = False) -> None:
        """Log in with the account's secret and learn what the server offers once logged in."""
        client, secret = self._client, self._secret.reveal()
        offered = {capability.upper() for capability in client.capabilities}
        with self.failures("login"):
            reply: object = None
            if client.state != "NONAUTH":
                pass  # a PREAUTH greeting: the server knows us already
            elif bearer:
                reply = self._bearer_login(username, offered)
            elif "AUTH=PLAIN" in offered:
                # SASL PLAIN carries any UTF-8 name and password (RFC 4616), as relay's SMTP does.
                plain = f"\0{username}\0{secret}".encode()
                reply = client.authenticate("PLAIN", lambda _challenge: plain)[1]
            elif "LOGINDISABLED" in offered or not (username + secret).isascii():
                raise self._error(
                    "login",
                    "server offers neither AUTH=PLAIN nor a LOGIN that can carry these credentials",
                    SentCopyRetry.AFTER_FIX,
                )
            else:
                reply = client.login(quoted(username), secret)[1]
            # RFC 3501 §7.1: a server may list its new capabilities in the login reply.
            text = reply_text(reply)
            if response_code(text) == "CAPABILITY":
                listed = text.split("]", 1)[0].split()[1:]
            else:
                status, data = client.capability()
                self._check("capability", status, data)
                listed = reply_text(data).split()
        self.capabilities = frozenset(capability.upper() for capability in listed)

    def _bearer_login(self, username: str, offered: set[str]) -> object:
        """AUTHENTICATE with the access token (XOAUTH2, else OAUTHBEARER)."""
        names = (c.removeprefix("AUTH=") for c in offered if c.startswith("AUTH="))
        mechanism = bearer_mechanism(names)
        if mechanism is None:
            raise self._error(
                "login",
                "server offers no OAuth2 mechanism (AUTH=XOAUTH2 or AUTH=OAUTHBEARER)",
                SentCopyRetry.AFTER_FIX,
            )
        host, port = self.server.rsplit(":", 1)
        first = mechanism.initial_response(username, self._secret, host, int(port))
        answers = iter((first,))

        def respond(_challenge: bytes) -> bytes:
            # After the first message, a challenge is the server's error status; the answer
            # ends the exchange so that the tagged NO with the reason follows.
            return next(answers, mechanism.failure_answer)

        return self._client.authenticate(mechanism.value, respond)[1]

    def list_mailboxes(self, pattern: str = "*") -> list[Mailbox]:
        """Mailboxes matching pattern, with their special-use flags where the server gives them."""
        args = ['""', quoted(pattern)]
        # RFC 6154 §5.2 asks for the flags with RETURN (SPECIAL-USE); without the capability a
        # server may still put them in plain LIST (§2), as Yahoo and Zoho do.
        if "SPECIAL-USE" in self.capabilities:
            args += ["RETURN", "(SPECIAL-USE)"]
        with self.failures("list"):
            self._client.untagged_responses.pop("LIST", None)
            self._check("list", *self._client.xatom("LIST", *args))
            return parse_list(self._client.response("LIST")[1])

    def personal_prefix(self) -> str:
        """Where the user's own mailboxes live (RFC 2342), such as "" or "INBOX."."""
        if "NAMESPACE" not in self.capabilities:
            return ""
        with self.failures("namespace"):
            status, data = self._client.namespace()
        return personal_prefix(data[0]) if status == "OK" and data else ""

    def create(self, wire: str) -> bool:
        """Create and subscribe a mailbox; False if it existed already."""
        with self.failures("create"):
            status, data = self._client.create(quoted(wire))
            if status != "OK":
                if response_code(reply_text(data)) == "ALREADYEXISTS":
                    return False
                self._check("create", status, data)
            # Clients that show only subscribed folders would not show it otherwise.
            self._client.subscribe(quoted(wire))
        return True

    def holds(self, wire: str, message_id: str) -> bool:
        """Whether the mailbox has a message with this Message-ID; False if it does not exist."""
        with self.failures("search"):
            status, data = self._client.select(quoted(wire), readonly=True)
            if status != "OK":
                if response_code(reply_text(data)) in MISSING_CODES:
                    return False
                self._check("search", status, data)
            status, data = self._client.uid("SEARCH", "HEADER", "Message-ID", quoted(message_id))
            self._check("search", status, data)
        return bool(data and isinstance(data[0], bytes) and data[0].split())

    def append(self, wire: str, message: Literal, sent_at: float) -> None:
        """APPEND the message as seen, dated when it was sent; SentCopyError if refused."""
        with self.failures("append"):
            # imaplib's append() runs a CRLF regex over the whole message, which peaks at two to
            # five times its size (44-98 MB for 20 MB, measured, by line length); relay's
            # messages are CRLF already, so the caller's bytes go out as the literal untouched.
            self._client.literal = message  # type: ignore[assignment]  # typeshed says str
            try:
                date = imaplib.Time2Internaldate(sent_at)
                status, data = self._client.xatom("APPEND", quoted(wire), SEEN, date)
            finally:
                self._client.literal = None
            self._check("append", status, data)

    def logout(self) -> None:
        """Say goodbye politely; the connection is closed whatever the server answers."""
        with suppress(imaplib.IMAP4.error, OSError):
            self._client.logout()
        self.close()

    def close(self) -> None:
        """Close the connection without a word."""
        with suppress(OSError):
            self._client.shutdown()

    def failures(self, step: str) -> AbstractContextManager[None]:
        """Turn what imaplib, ssl or the socket raise during step into a SentCopyError."""
        return failures(step, self.server, self._secret)

    def _check(self, step: str, status: str, data: list[Any]) -> None:
        if status == "OK":
            return
        text = reply_text(data)
        code = response_code(text)
        raise self._error(step, text, retry_advice(step, status, code), code)

    def _error(
        self, step: str, text: str, retry: SentCopyRetry, code: str | None = None
    ) -> SentCopyError:
        return sent_copy_error(step, self.server, self._secret, text, retry, code)


@contextmanager
def failures(step: str, server: str, secret: Secret) -> Iterator[None]:
    """Turn what imaplib, ssl or the socket raise during step into a SentCopyError."""
    try:
        yield
    except SentCopyError:
        raise
    except imaplib.IMAP4.abort as error:
        # BYE, or the connection broke.
        text = reply_text(list(error.args[:1]))
        raise sent_copy_error(step, server, secret, text, SentCopyRetry.SOON) from error
    except imaplib.IMAP4.error as error:
        status, text = error_reply(error)
        code = response_code(text)
        retry = retry_advice(step, status, code)
        raise sent_copy_error(step, server, secret, text, retry, code) from error
    except ssl.SSLCertVerificationError as error:
        text = (
            f"certificate not accepted: {error.verify_message}; check the provider's imap host, "
            "or set its ca_file if it uses a private CA"
        )
        raise sent_copy_error(step, server, secret, text, SentCopyRetry.AFTER_FIX) from error
    except TimeoutError as error:
        text = f"no answer in time ({error or 'timed out'})"
        raise sent_copy_error(step, server, secret, text, SentCopyRetry.SOON) from error
    except OSError as error:
        raise sent_copy_error(step, server, secret, str(error), SentCopyRetry.SOON) from error


def sent_copy_error(
    step: str,
    server: str,
    secret: Secret,
    text: str,
    retry: SentCopyRetry,
    code: str | None = None,
) -> SentCopyError:
    """The error for a failed step, with the server's words on one line and never the secret."""
    reply = one_line(text) or "(no reply text)"
    if secret.reveal():
        reply = reply.replace(secret.reveal(), "***")
    return SentCopyError(step, server, reply, retry, code)
