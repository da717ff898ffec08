"""Reading the provider's replies and errors: temporary or permanent, with its words and a hint."""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from relay.errors import (
    PermanentFailure,
    PermanentLoginRefusal,
    QuotaExceeded,
    TemporaryFailure,
    TemporaryLoginRefusal,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTlsError,
    UpstreamUnavailable,
)
from relay.providers.hints import hint_for, preset_for_host
from relay.reply import Reply

# Reply codes that make sense as the answer to DATA (RFC 5321 §4.3.2); others are mapped to 554.
_DATA_PERMANENT_CODES = {550, 551, 552, 553, 554}
# Gmail 550 5.4.5 "Daily user sending limit exceeded", Microsoft 5.2.2 SubmissionQuotaExceeded,
# iCloud "You have exceeded your daily sending limit" (PROVIDERS.md §4).
_QUOTA_WORDS = re.compile(
    r"daily (user )?sending (limit|quota)|sending (limit|quota) exceeded|SubmissionQuotaExceeded",
    re.IGNORECASE,
)
_QUOTA_CODES = ("5.4.5", "4.5.3", "5.2.2")


def upstream_error(error: BaseException, where: str) -> UpstreamError:
    """Classify an aiosmtplib or socket error as temporary or permanent, keeping the reply."""
    tls_problem = _tls_cause(error)
    if tls_problem is not None:
        text = f"TLS with {where} failed: {tls_problem}"
        return UpstreamTlsError(451, "4.7.5", text, provider_hint(where, text))
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        first = error.recipients[0]
        details = "; ".join(
            f"<{r.recipient}> {r.code} {one_line(r.message)}" for r in error.recipients
        )
        text = f"{where} refused every recipient: {details}"
        return _from_reply(first.code, first.message, text, where)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        text = f"{where} said: {error.code} {one_line(error.message)}"
        return _from_reply(error.code, error.message, text, where)
    if isinstance(error, TimeoutError):
        text = f"{where} did not answer in time: {one_line(str(error))}"
        return UpstreamTimeout(451, "4.4.2", text, provider_hint(where, text))
    if isinstance(error, aiosmtplib.SMTPNotSupported) or "STARTTLS" in str(error):
        text = f"{where} does not offer STARTTLS; refusing to send in plaintext"
        return UpstreamTlsError(451, "4.7.5", text, provider_hint(where, text))
    text = f"{where} unreachable: {one_line(str(error))}"
    return UpstreamUnavailable(451, "4.4.1", text, provider_hint(where, text))


def reply_error(code: int, message: str, where: str) -> UpstreamError:
    """The error for a whole-message refusal, keeping the provider's words."""
    return _from_reply(code, message, f"{where} said: {code} {one_line(message)}", where)


def auth_error(code: int, message: str, username: str, where: str) -> UpstreamError:
    """The error for a refused upstream login."""
    text = f"login as {username} at {where} failed: {code} {one_line(message)}"
    hint = provider_hint(where, f"{code} {one_line(message)}")
    said = provider_reply(code, message)
    if 400 <= code < 500:
        return TemporaryLoginRefusal(451, said.status("4.7.0"), text, hint)
    return PermanentLoginRefusal(554, said.status("5.7.8"), text, hint)


def provider_hint(where: str, words: str) -> str | None:
    """The hints table's advice for what the server at where (host:port) said, if any."""
    host = where.rpartition(":")[0] or where
    hint = hint_for(preset_for_host(host), words)
    return None if hint is None else hint.text


def _from_reply(code: int, message: str, text: str, where: str) -> UpstreamError:
    hint = provider_hint(where, f"{code} {one_line(message)}")
    # Only a real 5xx is final; a garbled, endless or out-of-grammar reply is the server's
    # problem, not the mail's, so it keeps the mail queued.
    said = provider_reply(code, message)
    if is_quota_reply(said):
        # The mail is fine; the user's quota for today is not: keep it queued, do not bounce.
        enhanced = said.status("5.7.0")
        return QuotaExceeded(451, "4" + enhanced[1:], text, hint)
    if not 500 <= code < 600:
        return TemporaryFailure(451, said.status("4.0.0"), text, hint)
    return PermanentFailure(data_reply_code(code), said.status("5.0.0"), text, hint)


def is_quota_reply(reply: Reply) -> bool:
    """Whether a provider's reply says the user's sending quota is used up, not the mail bad."""
    # X.2.2 is also "recipient's mailbox full" (RFC 3463): only Microsoft's wording counts.
    return bool(_QUOTA_WORDS.search(reply.text)) or (
        reply.enhanced in _QUOTA_CODES and "quota" in reply.text.lower()
    )


def data_reply_code(code: int) -> int:
    """A 5xx code that makes sense as the answer to DATA (RFC 5321 §4.3.2); others are 554."""
    return code if code in _DATA_PERMANENT_CODES else 554


def refusal_reply(failed: dict[str, Reply]) -> Reply:
    """The one reply for a message whose every recipient the provider refused for good."""
    first = next(iter(failed.values()), Reply(550, "5.0.0", "refused"))
    details = "; ".join(f"<{r}> {reply.line}" for r, reply in failed.items())
    text = f"provider refused every recipient: {details}"
    return Reply(data_reply_code(first.code), first.status("5.0.0"), text)


def provider_reply(code: int, message: str) -> Reply:
    """What the provider said, as a value: its enhanced code is read once, here."""
    return Reply.parse(f"{code} {one_line(message)}")


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


def one_line(text: str) -> str:
    """A provider reply on one printable line, safe to put in our own reply or log."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
