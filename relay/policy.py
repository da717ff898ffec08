"""Pure policy decisions about an envelope: no I/O, no clock, no awaits."""

from __future__ import annotations

from relay.errors import PolicyRejection
from relay.store import User

Refusal = PolicyRejection | None


def sender_refusal(sender: str, user: User) -> Refusal:
    """Refuse an envelope sender that is not one of the user's own addresses."""
    if user.rewrite_from or sender.lower() in user.sender_addresses:
        return None
    allowed = ", ".join(user.sender_addresses)
    return PolicyRejection(553, "5.7.1", f"<{sender}> is not yours to send as; allowed: {allowed}")


def recipient_count_refusal(already: int, limit: int) -> Refusal:
    """Refuse one more recipient once the per-message limit is reached."""
    if already < limit:
        return None
    return PolicyRejection(452, "4.5.3", f"too many recipients: at most {limit} per message")


def login_refusal(user: User | None, secret_ok: bool) -> Refusal:
    """Refuse a login that is unknown, wrong or disabled, without saying which."""
    if user is not None and secret_ok and user.enabled:
        return None
    # RFC 4954 §6: one answer for every failure, so a client cannot probe for logins.
    return PolicyRejection(535, "5.7.8", "authentication credentials invalid")


def effective_recipient_limit(configured: int, provider_limit: int | None) -> int:
    """The smaller of relay's own limit and the provider's documented one."""
    return configured if provider_limit is None else min(configured, provider_limit)
