"""The spool's records: a message to commit, a queued entry, an attempt's outcome, figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from relay.model import NO_PARAMS, EnvelopeParams
from relay.queue.sentjobs import SentJobSpec
from relay.queue.staging import StagedBody
from relay.reply import Reply


class RecipientState(Enum):
    """Where one recipient of a queued message stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to commit to the spool."""

    id: str
    login: str
    sender: str
    message_id: str
    recipients: tuple[str, ...]
    upstream_data: bytes  # with staged: the header block only, and the body follows from there
    body_offset: int  # where the body starts in upstream_data; the Sent copy shares it
    sent_header: bytes
    received_at: float
    is_bounce: bool = False
    fingerprint: str | None = None  # set when duplicate submissions should be recognised
    params: EnvelopeParams = NO_PARAMS  # SMTPUTF8 and DSN requests, for every attempt
    # A large mail's body, staged while it arrived; the spool copies it in and closes it.
    staged: StagedBody | None = field(default=None, repr=False, compare=False)

    @property
    def in_memory(self) -> bytes | None:
        """The whole upstream data if it is in memory (not staged), for the first attempt."""
        return self.upstream_data if self.staged is None else None

    def entry(self) -> QueueEntry:
        """The queue entry this message has once committed, before any attempt."""
        return QueueEntry(
            id=self.id,
            login=self.login,
            sender=self.sender,
            message_id=self.message_id,
            received_at=self.received_at,
            next_attempt=self.received_at,
            attempts=0,
            last_reply="",
            is_bounce=self.is_bounce,
            warned=False,
            recipients=dict.fromkeys(self.recipients, (RecipientState.PENDING, "")),
            params=self.params,
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message's envelope and state, without its data."""

    id: str
    login: str
    sender: str
    message_id: str
    received_at: float
    next_attempt: float
    attempts: int
    last_reply: str
    is_bounce: bool
    warned: bool
    recipients: dict[str, tuple[RecipientState, str]] = field(default_factory=dict)
    removed: bool = False  # delivered to everyone and already deleted from the spool
    # When an attempt that may have reached the provider began, with no outcome written since
    # (a crash, or a connection cut after the end of DATA); None when nothing is in doubt.
    claimed_at: float | None = None
    resent_in_doubt: int = 0  # times sent again after such an attempt: possible duplicates
    params: EnvelopeParams = NO_PARAMS  # as the app gave them (schema 4)

    @property
    def pending(self) -> list[str]:
        """Recipients still to be delivered."""
        return [a for a, (s, _) in self.recipients.items() if s is RecipientState.PENDING]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one delivery attempt achieved, to be written in one transaction."""

    delivered: dict[str, Reply]
    failed: dict[str, Reply]
    deferred: dict[str, Reply]
    reply: str  # the attempt in one line, for `relay queue list` and `relay status`
    next_attempt: float
    sent_job: SentJobSpec | None = None  # filed if this attempt is the first to deliver
    bounce: NewMessage | None = None  # the DSN for the failed recipients, queued with them
    # Set when the provider may have the mail although no reply said so: the next attempt
    # looks for it first (or counts a possible duplicate). The time the attempt began.
    in_doubt_since: float | None = None
    resent_in_doubt: bool = False  # this attempt sent mail that an earlier one may have delivered


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue figures for STATUS= lines, gauges and `relay status`."""

    queued: int = 0
    deferred: int = 0
    oldest_received: float | None = None
    sent_copies: int = 0
    taken: float = 0.0

    def oldest_age(self) -> float:
        """Seconds the oldest queued message has waited (0 when the queue is empty)."""
        return 0.0 if self.oldest_received is None else max(0.0, self.taken - self.oldest_received)
