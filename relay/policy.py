"""Pure policy decisions about an envelope: no I/O, no clock, no awaits."""

from __future__ import annotations

from relay.errors import PolicyRejection
from relay.model import User
from relay.providers.presets import mailbox_key

Refusal = PolicyRejection | None


def sender_refusal(sender: str, user: User, preset: str | None = None) -> Refusal:
    """Refuse an envelope sender that is not one of the user's own addresses at their provider."""
    if user.rewrite_from:
        return None
    key = mailbox_key(sender, preset)
    if any(mailbox_key(address, preset) == key for address in user.sender_addresses):
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


def auth_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to hold a login answer after this many recent failures (doubling, capped)."""
    if failures <= 0 or base <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))


def rate_refusal(last_minute: int, last_day: int, per_minute: int, per_day: int) -> Refusal:
    """Refuse one more message once a user's per-minute or per-day limit is reached (0: none)."""
    if per_minute and last_minute >= per_minute:
        return PolicyRejection(
            450, "4.7.1", f"sending rate limit reached: at most {per_minute} messages a minute"
        )
    if per_day and last_day >= per_day:
        return PolicyRejection(
            450, "4.7.1", f"daily limit reached: at most {per_day} messages in 24 hours"
        )
    return None


def connection_refusal(open_total: int, open_from_peer: int, total: int, per_peer: int) -> Refusal:
    """Refuse a new connection beyond the global or per-address limit."""
    if open_total >= total:
        return PolicyRejection(421, "4.7.0", f"too many connections ({total}); try again later")
    if open_from_peer >= per_peer:
        return PolicyRejection(
            421, "4.7.0", f"too many connections from your address ({per_peer}); try again later"
        )
    return None
