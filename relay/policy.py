"""Pure policy decisions about an envelope: no I/O, no clock, no awaits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from relay.errors import PolicyRejection
from relay.model import STREAM_THRESHOLD, User
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


def wants_verdict(listener_reply: str, user_reply: str | None) -> bool:
    """Whether the app waits for the provider's verdict: the user's setting, else the listener's."""
    return (user_reply or listener_reply) == "verdict"


@dataclass(frozen=True, slots=True)
class SizeLimit:
    """The largest mail a user may send now, and whose limit that is (for the 552's text)."""

    octets: int
    whose: str

    def describe(self) -> str:
        """The limit in MB and octets, and whose it is."""
        return f"{megabytes(self.octets)} ({self.octets} bytes), {self.whose}"


def megabytes(octets: int) -> str:
    """Octets in (decimal, truncated) MB, as providers state their limits."""
    if octets >= 10_000_000:
        return f"{octets // 1_000_000} MB"
    return f"{int(octets / 100_000) / 10:g} MB"


def message_size_limit(
    provider: str, announced: int | None, documented: int | None, cap: int | None, memory: int
) -> SizeLimit:
    """The provider's limit (its EHLO's SIZE, else the documented one), capped by relay's own."""
    if announced:
        base, whose = announced, f"the limit provider {provider!r} announces"
    elif documented:
        base, whose = documented, f"the documented limit of provider {provider!r}"
    else:
        # Not known until relay first talks to the provider: relay takes what it can hold,
        # and the provider judges the first attempt (relay passes SIZE= on to it).
        base = memory
        whose = f"relay's limits.max_data_in_memory (provider {provider!r} not asked yet)"
    if cap is not None and cap < base:
        return SizeLimit(cap, "relay's limits.max_message_bytes")
    if memory < min(base, STREAM_THRESHOLD):
        # A mail past the in-memory budget could never be taken (452 for ever); only one past
        # STREAM_THRESHOLD is streamed to the spool instead of held.
        return SizeLimit(memory, "relay's limits.max_data_in_memory")
    return SizeLimit(base, whose)


def size_refusal(size: int, limit: SizeLimit) -> Refusal:
    """Refuse a mail (declared with SIZE, or as read) larger than the limit."""
    if size <= limit.octets:
        return None
    # RFC 1870 §6.1 and RFC 3463 X.3.4: the message is larger than the system's limit.
    return PolicyRejection(552, "5.3.4", f"message too big: the limit is {limit.describe()}")


def utf8_address_refusal(
    address: str, smtputf8: bool, provider: str, provider_offers: bool | None
) -> Refusal:
    """Refuse a non-ASCII address without SMTPUTF8, or for a provider known not to take one."""
    if address.isascii():
        return None
    if any("\udc80" <= c <= "\udcff" for c in address):
        # Bytes that are not UTF-8 (aiosmtpd keeps them as surrogates): no provider takes them.
        return PolicyRejection(553, "5.1.3", "the address is not valid UTF-8")
    # RFC 6531 §3.5 (and RFC 6533's X.6.7): non-ASCII addresses are not permitted.
    if not smtputf8:
        return PolicyRejection(
            553, "5.6.7", f"<{address}> is not ASCII: give SMTPUTF8 in MAIL FROM to send it"
        )
    if provider_offers is False:
        return PolicyRejection(
            553,
            "5.6.7",
            f"provider {provider!r} does not take internationalised addresses (its server "
            f"offers no SMTPUTF8): <{address}> cannot be sent through it",
        )
    return None


# --- Mail without AUTH: the sendmail socket's callers, sender-mapped and one-user listeners ---


def local_caller_refusal(
    unix_user: str, uid: int, login: str | None, user: User | None, map_key: str
) -> Refusal:
    """Refuse a sendmail caller whose Unix user maps to no usable relay user, saying why."""
    who = f"Unix user {unix_user} (uid {uid})"
    if login is None:
        how = f"map it to a relay user in config.yaml, {map_key}: {{{unix_user}: LOGIN}}"
        return PolicyRejection(554, "5.7.1", f"{who} may not send through relay: {how}")
    if user is None:
        how = f"add it with `relay user add {login} ...` or change {map_key}.{unix_user}"
        return PolicyRejection(
            554, "5.7.1", f"{who} maps to relay user {login!r}, who does not exist: {how}"
        )
    if not user.enabled:
        return PolicyRejection(554, "5.7.1", f"{who} maps to relay user {login!r}, who is disabled")
    return None


def listener_user_refusal(login: str, user: User | None) -> PolicyRejection:
    """Why a one-user listener's user cannot send: missing, or disabled."""
    if user is None:
        # The operator's to fix, and the app's mail is fine: it keeps it and tries again.
        return PolicyRejection(451, "4.3.5", f"this listener's user {login!r} does not exist")
    return PolicyRejection(550, "5.7.1", f"this listener's user {login!r} is disabled")


def sender_owner(address: str, candidates: Sequence[tuple[User, str | None]]) -> User | None:
    """The one user (with their provider's preset) whose own address the sender is, if one."""
    owners = [user for user, preset in candidates if is_own_address(address, user, preset)]
    return owners[0] if len(owners) == 1 else None


def unknown_sender_refusal(address: str, known: Sequence[str]) -> PolicyRejection:
    """Refuse a sender that names no user this listener serves, listing those it knows."""
    listed = ", ".join(known) or "none (no enabled user)"
    text = f"<{address}> is not the address of a user relay serves here; known: {listed}"
    return PolicyRejection(553, "5.7.1", text)


def local_sender(address: str, user: User) -> str:
    """A bare local name (`www-data`, as sendmail gives without -f) stands for the user's own."""
    return address if "@" in address or address in ("", "<>") else user.email
