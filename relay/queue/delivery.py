"""One delivery attempt of a spooled mail, and everything its outcome sets off.

Whatever happens, the outcome is written, or kept in memory until it can be (SpoolPause), and
the mail backs off: an exception anywhere in an attempt is logged once and retried on the normal
schedule, never at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from relay.config.delivery import pace_for
from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.errors import DeliveryInDoubt, QuotaExceeded, StoreError, TemporaryFailure, Throttled
from relay.model import User
from relay.ops.channels import Ops
from relay.queue.attempts import Attempts, Verdict, app_refusal, summary
from relay.queue.bounces import Bounces
from relay.queue.indoubt import FOUND_IN_SENT, Doubt, InDoubtCheck, found_in_sent
from relay.queue.pace import QUOTA_PAUSE, Pacer, Wait
from relay.queue.pause import SpoolPause
from relay.queue.records import AttemptRecord, QueueEntry
from relay.queue.results import Handed, Queued, Refused, Sent
from relay.queue.retry import retry_delay
from relay.queue.sentcopies import SentCopies
from relay.queue.spool import Spool
from relay.reply import LOCAL_ERROR
from relay.state.store import Store

logger = logging.getLogger("relay.runner")  # the name shows in log lines: kept from 0.1


@dataclass
class Handoff:
    """Who answers for a first attempt: the waiting app, or (after the deadline) a DSN."""

    client_waiting: bool = True
    decided: bool = False


@dataclass(frozen=True, slots=True)
class Settled:
    """How one attempt ended: what the app hears, and whether the provider seemed down."""

    result: Handed
    provider_down: bool
    next_attempt: float


@dataclass(frozen=True, slots=True)
class DeliveryParts:
    """What an attempt works with."""

    live: LiveConfig
    store: Store
    spool: Spool
    attempts: Attempts
    doubts: InDoubtCheck
    bounces: Bounces
    sent: SentCopies
    pause: SpoolPause
    ops: Ops
    pacer: Pacer


class Delivery:
    """Runs one attempt, writes its outcome (or keeps it), and acts on it."""

    def __init__(
        self,
        parts: DeliveryParts,
        start_sent_copy: Callable[[str], None],
        provider_is_back: Callable[[str], Awaitable[None]],
    ) -> None:
        self._live = parts.live
        self._store = parts.store
        self._spool = parts.spool
        self._attempts = parts.attempts
        self._doubts = parts.doubts
        self._bounces = parts.bounces
        self._sent = parts.sent
        self.pause = parts.pause
        self._ops = parts.ops
        self._pacer = parts.pacer
        self._start_sent_copy = start_sent_copy
        self._provider_is_back = provider_is_back
        # Users with deferred mail: only for them does a delivery make other mail due.
        self.deferred_users: set[str] = set()
        # Retry jitter needs no secrecy: a seeded generator, not a getrandom() call per mail.
        self._random = random.Random()  # noqa: S311

    @property
    def config(self) -> RelayConfig:
        """The config in force (a reload replaces it)."""
        return self._live.current

    async def settle(
        self,
        entry: QueueEntry,
        handoff: Handoff | None,
        data: bytes | None = None,
        user: User | None = None,
    ) -> Settled:
        """Attempt delivery of a spooled message (data: in memory) and act on the verdict."""
        queued = Settled(Queued(entry.id), provider_down=False, next_attempt=0.0)
        try:
            attempted = await self._attempt(entry, data, user)
        except Exception:  # noqa: BLE001  whatever it was, the mail backs off like any other
            if handoff is not None:
                handoff.decided = True
            await self.crashed(entry)
            return queued
        if attempted is None:
            return queued
        if isinstance(attempted, Wait):
            if handoff is not None:
                handoff.decided = True
            return await self._paced(entry, attempted)
        verdict, resent = attempted
        if isinstance(verdict.error, QuotaExceeded):
            self._quota_reached(entry, verdict.error)
        now = time.time()
        delay = retry_delay(entry.attempts + 1, self.config.queue, self._random.uniform(-1, 1))
        if isinstance(verdict.error, QuotaExceeded):
            delay = max(delay, QUOTA_PAUSE)
        if isinstance(verdict.error, Throttled):
            # The provider said how long (Graph's Retry-After): exactly that, for the user's
            # other mail too, since the provider counts per mailbox.
            delay = verdict.error.retry_after
            self._pacer.close(entry.login, delay, verdict.error.reply.line)
        outcome = verdict.outcome
        # Decide who hears about failures before the outcome is written, so the deadline
        # cannot slip in between: either the waiting app hears the 5xx, or the sender gets
        # a DSN, written in the same transaction as the failure.
        app_hears_it = handoff is not None and handoff.client_waiting
        if handoff is not None:
            handoff.decided = True
        refused = app_hears_it and not outcome.delivered and not outcome.deferred
        record = await self._record_for(entry, verdict, refused, now + delay, resent)
        try:
            updated = await self._spool.record(entry.id, record)
        except StoreError as error:
            if refused:  # the app hears "queued" now, so the sender must get the DSN
                record = await self._record_for(entry, verdict, False, now + delay, resent)
            self.pause.unwritten[entry.id] = record
            self.pause.begin(f"spool write failed: {error}")
            self._attempts.log(entry, verdict, delay)
            return queued
        if updated is None:  # dropped by an operator meanwhile: no DSN or Sent job written
            return queued
        try:
            await self.written(updated, record)
            result = await self._conclude(updated, verdict, refused, delay)
        except Exception:  # noqa: BLE001  the outcome is written: nothing will repeat
            logger.exception("queue.after_attempt_failed id=%s", entry.id)
            return queued
        provider_down = isinstance(verdict.error, TemporaryFailure)
        return Settled(result, provider_down, now + delay)

    async def _paced(self, entry: QueueEntry, wait: Wait) -> Settled:
        """Not now: the mail (and the user's others, in a round) waits for the pace to allow it."""
        until = time.time() + wait.seconds
        await self._spool.defer(entry.id, until)
        reason = f"{wait.reason}, next in {wait.seconds:.0f} s"
        logger.info("queue.paced id=%s user=%s reason=%r", entry.id, entry.login, reason)
        return Settled(Queued(entry.id, reason), provider_down=True, next_attempt=until)

    def _quota_reached(self, entry: QueueEntry, error: QuotaExceeded) -> None:
        """The provider's daily quota is used up: that user's mail waits, nobody else's."""
        self._pacer.close(entry.login, QUOTA_PAUSE, error.reply.line)
        logger.warning(
            "delivery.quota user=%s next_in=%.0fs reply=%r (deferred, not bounced)",
            entry.login,
            QUOTA_PAUSE,
            error.reply.line,
        )

    async def _attempt(
        self, entry: QueueEntry, data: bytes | None, user: User | None
    ) -> tuple[Verdict, bool] | Wait | None:
        """The attempt's verdict and whether it re-sent in-doubt mail; Wait or None: not yet."""
        resent = False
        found_user = user or self._store.find_user(entry.login)
        provider = self.config.providers.get(found_user.provider) if found_user else None
        if entry.claimed_at is not None:
            timeout = self.config.upstream.timeout
            doubt = await self._doubts.decide(entry, found_user, provider, timeout)
            if doubt is Doubt.WAIT:
                return None
            self._ops.metrics.in_doubt(doubt.value)
            if doubt is Doubt.FOUND and provider is not None:
                return Verdict(found_in_sent(entry), None, provider.smtp.host, found_user), False
            resent = doubt is Doubt.RESEND
        if found_user is not None and provider is not None:
            pace = pace_for(self.config, found_user.login, provider)
            wait = self._pacer.take(found_user.login, pace, len(entry.pending))
            if wait is not None:
                return Wait(wait.seconds, f"{wait.reason} at {provider.name}")
        return await self._attempts.attempt(entry, data, user), resent

    async def _record_for(
        self, entry: QueueEntry, verdict: Verdict, refused: bool, next_attempt: float, resent: bool
    ) -> AttemptRecord:
        outcome = verdict.outcome
        bounce = None
        if outcome.failed and not refused:
            counted = replace(entry, resent_in_doubt=entry.resent_in_doubt + int(resent))
            bounce = await self._bounces.dsn(
                counted, verdict.user, outcome.failed, {}, verdict.remote
            )
        found = outcome.reply is FOUND_IN_SENT  # the provider filed its own copy
        sent_job = (
            self._sent.job_for(entry, verdict.user) if outcome.delivered and not found else None
        )
        in_doubt = isinstance(verdict.error, DeliveryInDoubt)
        return AttemptRecord(
            delivered=outcome.delivered,
            failed=outcome.failed,
            deferred=outcome.deferred,
            reply=summary(verdict),
            next_attempt=next_attempt,
            sent_job=sent_job,
            bounce=bounce,
            in_doubt_since=time.time() if in_doubt else None,
            resent_in_doubt=resent,
        )

    async def written(self, updated: QueueEntry, record: AttemptRecord) -> None:
        """Once an outcome is in the spool: announce its DSN, start its Sent copy."""
        self._bounces.queued(record.bounce, updated, "failed", len(record.failed))
        if record.sent_job is not None:
            self._start_sent_copy(record.sent_job.id)

    async def crashed(self, entry: QueueEntry) -> None:
        """An attempt ended in an exception: logged once, counted, backed off like a 4xx."""
        now = time.time()
        delay = retry_delay(entry.attempts + 1, self.config.queue, self._random.uniform(-1, 1))
        logger.exception(
            "queue.attempt_crashed id=%s user=%s attempt=%d next_in=%.0fs",
            entry.id,
            entry.login,
            entry.attempts + 1,
            delay,
        )
        self._ops.metrics.job_crashed("delivery")
        record = AttemptRecord(
            delivered={},
            failed={},
            deferred=dict.fromkeys(entry.pending, LOCAL_ERROR),
            reply=LOCAL_ERROR.line,
            next_attempt=now + delay,
            # It may have crashed after the end of DATA: the provider may have the mail.
            in_doubt_since=now,
        )
        try:
            await self._spool.record(entry.id, record)
        except Exception as error:  # noqa: BLE001  the backoff then lives in memory
            self.pause.hold(entry.id, now + delay)
            if isinstance(error, StoreError):
                self.pause.begin(f"spool write failed: {error}")

    async def _conclude(
        self, entry: QueueEntry, verdict: Verdict, refused: bool, delay: float
    ) -> Handed:
        outcome = verdict.outcome
        self._attempts.log(entry, verdict, delay)
        if outcome.delivered:
            await self._provider_is_back(entry.login)
        if refused:
            await self._spool.remove(entry.id)
            return Refused(app_refusal(verdict))
        if not entry.pending and not entry.removed:
            await self._spool.remove(entry.id)
        if entry.pending:
            self.deferred_users.add(entry.login)
            return Queued(entry.id, summary(verdict))
        return Sent(entry.message_id, outcome.reply, dict(outcome.failed))
