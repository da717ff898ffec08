"""Sending one message upstream through the user's provider account over verified TLS."""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from relay.errors import (
    PermanentFailure,
    TemporaryFailure,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTlsError,
    UpstreamUnavailable,
)
from relay.keys import Secret
from relay.providers import Endpoint, TlsMode

logger = logging.getLogger(__name__)

_ENHANCED_PREFIXES = ("2.", "4.", "5.")
# Reply codes that make sense as the answer to DATA (RFC 5321 §4.3.2); others are mapped to 554.
_DATA_PERMANENT_CODES = {550, 551, 552, 553, 554}


@dataclass(frozen=True, slots=True)
class UpstreamAccount:
    """Where and as whom to log in upstream."""

    endpoint: Endpoint
    username: str
    secret: Secret
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What the provider said about one message."""

    reply: str
    refused: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """How long to wait for the provider."""

    connect: float = 30.0
    command: float = 60.0


class TlsContexts:
    """One verifying TLS context per CA file, built once: loading CA bundles is slow."""

    def __init__(self) -> None:
        self._contexts: dict[Path | None, ssl.SSLContext] = {}

    def for_ca_file(self, ca_file: Path | None) -> ssl.SSLContext:
        """A client context that checks the chain and the host name, TLS 1.2 or newer."""
        context = self._contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._contexts[ca_file] = context
        return context


async def send_message(
    account: UpstreamAccount,
    sender: str,
    recipients: list[str],
    message: bytes,
    *,
    local_hostname: str,
    timeouts: UpstreamTimeouts,
    tls: TlsContexts,
) -> DeliveryReport:
    """Log in to the provider and send one message; raise an UpstreamError with its reply."""
    started = time.monotonic()
    endpoint = account.endpoint
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        use_tls=endpoint.tls is TlsMode.IMPLICIT,
        # True (not None) makes STARTTLS mandatory: never fall back to plaintext.
        start_tls=endpoint.tls is TlsMode.STARTTLS,
        tls_context=tls.for_ca_file(account.ca_file),
        local_hostname=local_hostname,
        timeout=timeouts.command,
    )
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        await client.connect(timeout=timeouts.connect)
        await _login(client, account, where)
        refused, reply = await client.sendmail(sender, recipients, message)
    except UpstreamError:
        raise
    except (aiosmtplib.SMTPException, OSError) as error:
        raise upstream_error(error, where) from None
    finally:
        await _close(client)
    return DeliveryReport(
        reply=one_line(reply),
        refused={rcpt: f"{r.code} {one_line(r.message)}" for rcpt, r in refused.items()},
        seconds=time.monotonic() - started,
    )


async def _login(client: aiosmtplib.SMTP, account: UpstreamAccount, where: str) -> None:
    try:
        await client.login(account.username, account.secret.reveal())
    except aiosmtplib.SMTPAuthenticationError as error:
        text = (
            f"login as {account.username} at {where} failed: {error.code} {one_line(error.message)}"
        )
        if 400 <= error.code < 500:
            raise TemporaryFailure(451, _enhanced(error.message, "4.7.0"), text) from None
        raise PermanentFailure(554, _enhanced(error.message, "5.7.8"), text) from None


async def _close(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=5.0)
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def upstream_error(error: BaseException, where: str) -> UpstreamError:
    """Classify an aiosmtplib or socket error as temporary or permanent, keeping the reply."""
    tls_problem = _tls_cause(error)
    if tls_problem is not None:
        return UpstreamTlsError(451, "4.7.5", f"TLS with {where} failed: {tls_problem}")
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        first = error.recipients[0]
        details = "; ".join(
            f"<{r.recipient}> {r.code} {one_line(r.message)}" for r in error.recipients
        )
        return _from_reply(first.code, first.message, f"{where} refused every recipient: {details}")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return _from_reply(
            error.code, error.message, f"{where} said: {error.code} {one_line(error.message)}"
        )
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(
            451, "4.4.2", f"{where} did not answer in time: {one_line(str(error))}"
        )
    if isinstance(error, aiosmtplib.SMTPNotSupported) or "STARTTLS" in str(error):
        return UpstreamTlsError(
            451, "4.7.5", f"{where} does not offer STARTTLS; refusing to send in plaintext"
        )
    return UpstreamUnavailable(451, "4.4.1", f"{where} unreachable: {one_line(str(error))}")


def _from_reply(code: int, message: str, text: str) -> UpstreamError:
    if 400 <= code < 500:
        return TemporaryFailure(451, _enhanced(message, "4.0.0"), text)
    client_code = code if code in _DATA_PERMANENT_CODES else 554
    return PermanentFailure(client_code, _enhanced(message, "5.0.0"), text)


def _tls_cause(error: BaseException) -> str | None:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return (
                f"certificate not accepted: {current.verify_message}; check the provider's host "
                "name, or set its ca_file if it uses a private CA"
            )
        if isinstance(current, ssl.SSLError):
            return f"handshake failed: {current.reason or current}"
        current = current.__cause__ or current.__context__
    return None


def _enhanced(message: str, default: str) -> str:
    first = message.split(maxsplit=1)[0] if message.split() else ""
    if first.startswith(_ENHANCED_PREFIXES) and first.count(".") == 2:
        return first
    return default


def one_line(text: str) -> str:
    """A provider reply on one printable line, safe to put in our own reply or log."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
