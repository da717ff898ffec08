"""An in-process upstream SMTP server over TLS that records what it receives."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class ReceivedMail:
    """One message as the upstream saw it."""

    login: str
    sender: str
    recipients: list[str]
    data: bytes


class RawRecordingSMTP(SMTP):
    """aiosmtpd's server, also keeping every (decrypted) byte the client sent."""

    def __init__(self, handler: RecordingHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.recorder = handler

    def data_received(self, data: bytes) -> None:
        self.recorder.raw += data
        self.recorder.chunks.append(data)
        super().data_received(data)


@dataclass
class RecordingHandler:
    """Accepts mail from one login/password pair and records it; replies can be scripted."""

    login: str
    password: str
    received: list[ReceivedMail] = field(default_factory=list)
    connections: int = 0
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # Every RCPT as (MAIL FROM, RCPT TO), accepted or not: what was tried, not only delivered.
    tried: list[tuple[str, str]] = field(default_factory=list)
    data_reply: str | None = None
    sessions: list[SMTP] = field(default_factory=list)
    raw: bytes = b""
    mail_replies: list[str] = field(default_factory=list)  # scripted, one per MAIL, in order
    chunks: list[bytes] = field(default_factory=list)  # raw, one per data_received
    pipelining: bool = True  # announced in EHLO, as every real provider does (RFC 2920)

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout does."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, lines: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO lines, with PIPELINING unless switched off (it takes pipelining)."""
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        return [lines[0], "250-PIPELINING", *lines[1:]] if self.pipelining else lines

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """Accept only the configured login and password."""
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.login.encode(),
            self.password.encode(),
        )
        if ok:
            return AuthResult(success=True, auth_data=self.login)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Take the sender unless a reply is scripted for this MAIL."""
        if self.mail_replies:
            return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept a recipient unless a reply is scripted for it."""
        self.tried.append((envelope.mail_from or "", address))
        scripted = self.rcpt_replies.get(address)
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        """Record the message, or answer with the scripted reply."""
        if self.data_reply is not None:
            return self.data_reply
        assert envelope.mail_from is not None and envelope.original_content is not None
        self.received.append(
            ReceivedMail(
                str(session.auth_data),
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
            )
        )
        return "250 2.0.0 Ok: queued as TEST"


@dataclass
class Upstream:
    """A running recording upstream and how to reach it."""

    handler: RecordingHandler
    host: str
    port: int
    ca_file: Path
    tls: str


@asynccontextmanager
async def recording_upstream(
    ca: trustme.CA, directory: Path, *, tls: str = "starttls", cert_host: str = "127.0.0.1"
) -> AsyncIterator[Upstream]:
    """Start an upstream on 127.0.0.1 port 0 with a certificate for cert_host; stop it after."""
    cert = ca.issue_cert(cert_host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = RecordingHandler(login="alice@example.org", password="upstream-Pa55")
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        handler.connections += 1
        session = RawRecordingSMTP(
            handler,
            hostname="upstream.test",
            tls_context=context if tls == "starttls" else None,
            require_starttls=tls == "starttls",
            authenticator=handler.authenticate,
            auth_required=True,
            # Implicit TLS is already encrypted; aiosmtpd only knows about STARTTLS.
            auth_require_tls=tls == "starttls",
            loop=loop,
        )
        handler.sessions.append(session)
        return session

    server = await loop.create_server(
        protocol, "127.0.0.1", 0, ssl=context if tls == "implicit" else None
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield Upstream(handler, "127.0.0.1", port, ca_file, tls)
    finally:
        server.close()
        await server.wait_closed()
