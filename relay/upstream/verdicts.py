"""What the provider's replies in one mail transaction mean, pipelined or one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.reply import Reply
from relay.upstream.account import SendOutcome
from relay.upstream.replies import is_quota_reply, provider_reply, reply_error, upstream_error

SERVICE_CLOSING = 421  # RFC 5321 §3.8: the server is closing the channel
RCPT_ACCEPTED = (250, 251)  # RFC 5321 §4.3.2, as aiosmtplib's rcpt() takes them


class BrokenIdleSession(Exception):
    """A pooled session failed before the message was handed over: safe to try a fresh one."""


def mail_refusal(code: int, message: str, where: str, *, reused: bool) -> Exception:
    """The error for a refused MAIL: on a reused session a 421 says only the session is stale."""
    if reused and code == SERVICE_CLOSING:
        return BrokenIdleSession()
    return reply_error(code, message, where)


def lost_before_mail(error: BaseException, where: str, *, reused: bool) -> Exception:
    """The error for a session gone before MAIL was answered: nothing was handed over."""
    return BrokenIdleSession() if reused else upstream_error(error, where)


@dataclass
class RecipientVerdicts:
    """The RCPT replies of one mail, sorted into accepted, deferred (4xx) and failed."""

    where: str
    accepted: list[str] = field(default_factory=list)
    deferred: dict[str, Reply] = field(default_factory=dict)
    failed: dict[str, Reply] = field(default_factory=dict)

    def take(self, recipient: str, code: int, message: str) -> None:
        """Sort one RCPT reply; raise UpstreamError for a reply about the whole mail."""
        if code in RCPT_ACCEPTED:
            self.accepted.append(recipient)
            return
        reply = provider_reply(code, message)
        if code == SERVICE_CLOSING or is_quota_reply(reply):
            # Not about this recipient: the whole mail waits (a quota is not a bounce).
            raise reply_error(code, message, self.where)
        (self.deferred if 400 <= code < 500 else self.failed)[recipient] = reply

    def outcome(self, reply: Reply | None) -> SendOutcome:
        """The verdicts with DATA's reply; None when no recipient was accepted, so no DATA."""
        if reply is None:
            return SendOutcome(None, deferred=self.deferred, failed=self.failed)
        return SendOutcome(reply, dict.fromkeys(self.accepted, reply), self.deferred, self.failed)
