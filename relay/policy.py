"""Pure policy decisions about an envelope: no I/O, no clock, no awaits."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from relay.errors import PolicyRejection
from relay.model import User
from relay.providers.presets import mailbox_key

Refusal = PolicyRejection | None


def sender_refusal(sender: str, user: User, preset: str | None = None) -> Refusal:
    """Refuse an envelope sender that is not one of the user's own addresses at their provider."""
    if user.rewrite_from or is_own_address(sender, user, preset):
        return None
    allowed = ", ".join(user.sender_addresses)
    return PolicyRejection(553, "5.7.1", f"<{sender}> is not yours to send as; allowed: {allowed}")


def header_sender_refusal(
    fields: Sequence[tuple[str, Sequence[str]]],
    user: User,
    preset: str | None = None,
    foreign_from: bool = False,
) -> Refusal:
    """Refuse a From or Sender field naming anyone but the user, compared as the envelope is.

    fields holds each From or Sender field's name and addresses ("" for one that cannot be
    read). With foreign_from (a provider that enforces From itself) only From goes unchecked:
    Sender names who actually sent the mail (RFC 5322 §3.6.2), and that is always the user.
    """
    for name, addresses in fields:
        if foreign_from and name.lower() == "from":
            continue
        foreign = [a for a in addresses if not is_own_address(a, user, preset)] or (
            [] if addresses else [""]
        )
        if foreign:
            what = f"<{foreign[0]}> is not yours to send as" if foreign[0] else "cannot be read"
            allowed = ", ".join(user.sender_addresses)
            return PolicyRejection(553, "5.7.1", f"{name}: header {what}; allowed: {allowed}")
    return None


def is_own_address(address: str, user: User, preset: str | None) -> bool:
    """True when the address is one of the user's, as their provider tells mailboxes apart."""
    if not address:
        return False
    key = mailbox_key(address, preset)
    return any(mailbox_key(own, preset) == key for own in user.sender_addresses)


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
    """Seconds to hold a failed login's answer after this many failures (doubling, capped)."""
    if failures <= 0 or base <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))


class Admission(Enum):
    """What an AUTH attempt that a cheap check could not prove right may do now."""

    VERIFY = "verify"  # run the full (slow) verification
    WAIT = "wait"  # wait for the attempt in flight on the same login, then ask again
    BUSY = "busy"  # 454 4.7.0 at once: the login is being guessed, or too many checks run


def auth_admission(
    penalised: bool, in_flight: bool, failures: int, verifying: int, cap: int
) -> Admission:
    """One unproven attempt per login at a time, none during a failure's penalty, a global cap."""
    # A failed attempt's penalty holds its login (and a non-exempt address): guesses in
    # parallel get 454 rather than each their own delay, so a login takes at most one guess per
    # penalty. A right secret is proven by a cheap check before this and never comes here.
    if penalised:
        return Admission.BUSY
    if in_flight:
        # One app's connections at start-up wait for the first (then the cache proves them);
        # a login with failures is being guessed, and gets no queue.
        return Admission.BUSY if failures else Admission.WAIT
    # The cap bounds slow checks (scrypt, 32 MiB each) at once, over all logins.
    return Admission.BUSY if verifying >= cap else Admission.VERIFY


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


def connection_refusal(
    open_total: int, open_from_peer: int, total: int, per_peer: int, unauthenticated: int = 0
) -> Refusal:
    """Refuse a new connection beyond the global or per-address limit."""
    # With a session still unauthenticated, that one gives way instead (unauthenticated_eviction).
    if open_total >= total and not unauthenticated:
        return PolicyRejection(421, "4.7.0", f"too many connections ({total}); try again later")
    if open_from_peer >= per_peer:
        return PolicyRejection(
            421, "4.7.0", f"too many connections from your address ({per_peer}); try again later"
        )
    return None


class Eviction(Enum):
    """Which unauthenticated session gives way to a new connection."""

    SAME_ADDRESS = "same address"  # the oldest from the new connection's own address
    BUSIEST_ADDRESS = "busiest address"  # the oldest from the address holding the most


def unauthenticated_eviction(
    open_total: int,
    total: int,
    unauthenticated: int,
    unauthenticated_from_peer: int,
    unauthenticated_cap: int,
    per_peer: int,
) -> Eviction | None:
    """Whether a new connection closes an unauthenticated session to make room, and whose."""
    # As Dovecot's login processes do when full, the oldest client not logged in goes: a local
    # app authenticates in milliseconds after connecting, so junk that only connects cannot
    # keep it out (refusing the newcomer would, and every local app shares 127.0.0.1).
    if unauthenticated_from_peer >= per_peer:
        return Eviction.SAME_ADDRESS
    if unauthenticated and (unauthenticated >= unauthenticated_cap or open_total >= total):
        return Eviction.BUSIEST_ADDRESS
    return None


def unauthenticated_cap(max_connections: int, share: float) -> int:
    """How many sessions may be open before AUTH: a share of max_connections, at least one."""
    return max(1, int(max_connections * share))
