"""What became of a mail the listener handed over: the runner's answer, as values.

The listener alone turns these into the reply the app hears (relay.listener.answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.reply import Reply


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider took the mail while the app waited (perhaps not for every recipient)."""

    message_id: str
    provider: Reply | None  # its reply to DATA (None for a retry that delivered nothing new)
    refused: dict[str, Reply] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Queued:
    """The mail is spooled and relay keeps trying; reason is why (None: the provider is slow)."""

    queue_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Spooled:
    """Spool mode: the mail is committed and its first attempt has started in the background."""

    queue_id: str


@dataclass(frozen=True, slots=True)
class AlreadyAccepted:
    """The same mail was accepted moments ago (an app that retried after a timeout)."""

    message_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was queued: every recipient was refused for good, or relay cannot take it now."""

    reply: Reply


Accepted = Sent | Queued | Spooled | AlreadyAccepted
Handed = Accepted | Refused
