"""The renewal notice itself: a plain-text mail saying what happened and what to do."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate

from relay.model import User
from relay.renewal.routing import Route
from relay.renewal.trouble import Reason, Trouble

SENDER_NAME = "relay"


@dataclass(frozen=True, slots=True)
class Link:
    """The user's fresh one-time link to their page, and when it stops working."""

    url: str  # holds the link token: a secret, never logged
    expires_at: float


@dataclass(frozen=True, slots=True)
class NoticeFacts:
    """Everything a notice says."""

    user: User
    trouble: Trouble
    route: Route
    link: Link | None  # None: the pages are off, so the admin must help
    found_at: float
    admin: str | None  # the admin's address, to name in the notice
    interval: float  # seconds before relay tells the same user again


def subject_of(facts: NoticeFacts) -> str:
    """The notice's Subject."""
    return f"Action needed: relay cannot send mail as {facts.user.email}"


def notice_text(facts: NoticeFacts) -> str:
    """The notice's body, as lines of plain text."""
    user, trouble = facts.user, facts.trouble
    lines: list[str] = []
    if facts.route.to_admin:
        lines += [
            f"This notice is for {user.login} <{user.email}>. It comes to you, the",
            "administrator, because relay has no other mailbox to send it from.",
            "",
        ]
    lines += [f"Hello {user.display_name or user.email},", ""]
    lines += _what_happened(user, trouble.reason, facts.found_at)
    lines += ["", f"What {user.provider} said:", f"    {trouble.detail}", "", "What to do:"]
    if facts.link is not None:
        lines += _steps(trouble.reason)
        lines += [
            "",
            f"    {facts.link.url}",
            "",
            f"The link works once, until {_when(facts.link.expires_at)}. After that, or if",
            f"it does not open, ask {facts.admin or 'your administrator'} for a new one.",
        ]
    else:
        who = facts.admin or "your administrator"
        lines += [
            f"Ask {who} to renew it for you: relay's enrollment pages are",
            "not turned on, so relay cannot send you a link to do it yourself.",
        ]
    lines += [
        "",
        f"relay tells you this at most {_how_often(facts.interval)}. Mail your applications",
        "send meanwhile cannot go out until the login works again.",
    ]
    return "\r\n".join(lines) + "\r\n"


def notice_message(facts: NoticeFacts, message_id: str) -> bytes:
    """The whole notice, From the route's sender To its recipient, CRLF line endings."""
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr((SENDER_NAME, facts.route.sender.email))
    message["To"] = facts.route.recipient
    message["Subject"] = subject_of(facts)
    message["Date"] = formatdate(facts.found_at, localtime=True)
    message["Message-ID"] = message_id
    # RFC 3834 §5: a machine wrote it; auto-responders must not answer.
    message["Auto-Submitted"] = "auto-generated"
    text = notice_text(facts)
    # 7bit keeps the link on one line, as the reader must copy it; quoted-printable would fold it.
    message.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    return message.as_bytes()


def _what_happened(user: User, reason: Reason, found_at: float) -> list[str]:
    when = _when(found_at)
    if reason is Reason.NEEDS_AUTHORIZE:
        return [
            f"relay sends your applications' mail through your mailbox {user.email}",
            f"at {user.provider}. Since {when}, {user.provider} no longer accepts the",
            "permission you gave relay: it was revoked, it expired, or your organisation's",
            "sign-in rules now ask you to sign in again.",
        ]
    return [
        f"relay sends your applications' mail through your mailbox {user.email}",
        f"at {user.provider}. Since {when}, {user.provider} refuses the password relay",
        "signs in with: it was changed, or the app password was removed.",
    ]


def _steps(reason: Reason) -> list[str]:
    if reason is Reason.NEEDS_AUTHORIZE:
        return [
            "Open this link in your browser, sign in to your mailbox again and press",
            "Test. Mail waiting in relay's queue goes out once the test passes.",
        ]
    return [
        "Open this link in your browser, enter your new (app) password and press",
        "Test. relay uses it from then on.",
    ]


def _how_often(interval: float) -> str:
    if interval == 86400:
        return "once a day"
    if interval % 86400 == 0:
        return f"once every {interval / 86400:g} days"
    if interval >= 3600:
        return f"once every {interval / 3600:g} hours"
    return f"once every {interval / 60:g} minutes"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
