"""The queue runner: the first attempt while the app waits, then retries, expiry and bounces."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import shutil
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.errors import TemporaryFailure
from relay.message import PreparedMessage
from relay.model import User
from relay.ops.channels import Ops
from relay.queue.attempts import Attempts, Verdict, app_refusal, summary
from relay.queue.bounces import Bounces
from relay.queue.records import AttemptRecord, NewMessage, QueueEntry, QueueStats
from relay.queue.results import AlreadyAccepted, Handed, Queued, Refused, Sent
from relay.queue.retry import is_expired, needs_delay_warning, retry_delay
from relay.queue.sentcopies import SentCopies
from relay.queue.spool import Spool, fingerprint
from relay.reply import NO_STORAGE
from relay.state.store import Store
from relay.state.writer import StoreWriter
from relay.upstream.credentials import Credentials
from relay.upstream.pool import UpstreamPool

logger = logging.getLogger("relay.runner")  # the name shows in log lines: kept from 0.1
T = TypeVar("T")

SCHEDULER_TICK = 1.0  # `relay queue retry` edits the spool from another process; pick that up
STATS_INTERVAL = 2.0  # how fresh the queue figures behind STATUS= and the gauges are
HOUSEKEEPING_INTERVAL = 30.0


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


class QueueRunner:
    """Delivers spooled mail: once while the app waits, then on a backoff schedule."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        credentials: Credentials,
        spool: Spool,
        pool: UpstreamPool,
        ops: Ops,
        writer: StoreWriter | None = None,
    ) -> None:
        self._sent = SentCopies(live, store, spool, credentials, pool.tls, ops, writer)
        self._attempts = Attempts(live, store, credentials, pool, spool, ops)
        self._bounces = Bounces(live, store, spool, self._attempt_now)
        self._live = live
        self._ops = ops
        self.stats = QueueStats()
        self._credentials = credentials
        self._spool = spool
        self._pool = pool
        self._inflight: set[str] = set()
        self._rounds: set[str] = set()
        # Users with deferred mail: only for them does a delivery make other mail due.
        self._deferred_users: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._random = random.SystemRandom()

    # -- accepting mail from the listener ------------------------------------------------------

    async def accept(self, user: User, prepared: PreparedMessage, recipients: list[str]) -> Handed:
        """Spool a message durably, try it once within the deadline, and say what became of it."""
        queue = self.config.queue
        size = prepared.size
        if shutil.disk_usage(self._spool.path.parent).free - size < queue.min_free_bytes:
            logger.error("queue.disk_low user=%s size=%d", user.login, size)
            return Refused(NO_STORAGE)
        queue_id = secrets.token_hex(8)
        now = time.time()
        self._inflight.add(queue_id)
        message = NewMessage(
            id=queue_id,
            login=user.login,
            sender=prepared.sender,
            message_id=prepared.message_id,
            recipients=tuple(recipients),
            upstream_data=prepared.upstream,
            body_offset=prepared.body_offset,
            sent_header=prepared.sent_header,
            received_at=now,
            fingerprint=fingerprint(user.login, prepared.message_id, prepared.sender, recipients)
            if prepared.app_message_id
            else None,
        )
        try:
            stored = await self._spool.enqueue(message, queue.duplicate_window)
        except BaseException:
            self._inflight.discard(queue_id)
            raise
        if stored is None:
            self._inflight.discard(queue_id)
            logger.info(
                "queue.duplicate user=%s msg_id=%s reason=same mail accepted within %.0fs",
                user.login,
                prepared.message_id,
                queue.duplicate_window,
            )
            return AlreadyAccepted(prepared.message_id)
        self._ops.metrics.mail_accepted(user.login, user.provider)
        logger.info(
            "queue.accepted id=%s user=%s msg_id=%s rcpts=%d size=%d",
            queue_id,
            user.login,
            prepared.message_id,
            len(recipients),
            size,
        )
        handoff = Handoff()
        # The first attempt uses what is in memory: reading it back would copy the data again.
        task = self._spawn(self._settle(queue_id, handoff, message, user))
        done, _ = await asyncio.wait({task}, timeout=queue.first_attempt_timeout)
        if not done and not handoff.decided:
            handoff.client_waiting = False
            return Queued(queue_id, "the provider is slow")
        return (await task).result

    # -- the retry loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start a retry round for each user with mail due, until stopped."""
        housekeeping = 0.0
        self._deferred_users |= await self._spool.deferred_logins()
        while not self._stopping:
            now = time.time()
            rounds: dict[str, list[str]] = {}
            for queue_id, login in await self._spool.due(now):
                rounds.setdefault(login, []).append(queue_id)
            for login, queue_ids in rounds.items():
                if login not in self._rounds and not self._stopping:
                    self._rounds.add(login)
                    self._spawn(self._round(login, queue_ids))
            for job_id in await self._spool.due_sent_jobs(now):
                self._start_sent_copy(job_id)
            if now - self.stats.taken >= STATS_INTERVAL:
                self.stats = await self._spool.stats(now)
            if now - housekeeping >= HOUSEKEEPING_INTERVAL:
                housekeeping = now
                await self._spool.forget_accepted_before(now - self.config.queue.duplicate_window)
                await self._pool.close_idle()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=SCHEDULER_TICK)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give attempts under way `grace` seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._pool.close_all()
        await self._credentials.tokens.close()

    @property
    def config(self) -> RelayConfig:
        """The config in force, as the runner and all it hands work to read it."""
        return self._live.current

    def _start_sent_copy(self, job_id: str) -> None:
        if not self._stopping:
            self._sent.start(job_id, self._spawn)

    def _attempt_now(self, queue_id: str) -> None:
        """Give a message just queued (a DSN) its first attempt now, not at the next tick."""
        self._inflight.add(queue_id)
        self._spawn(self._retry(queue_id))
        self._wake.set()

    def _spawn(self, work: Coroutine[object, object, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _round(self, login: str, queue_ids: list[str]) -> None:
        """Retry a user's queued mail oldest first, stopping while their provider is down."""
        width = self.config.queue.per_user_concurrency
        try:
            for start in range(0, len(queue_ids), width):
                if self._stopping:
                    return
                batch = [q for q in queue_ids[start : start + width] if q not in self._inflight]
                self._inflight.update(batch)
                results = await asyncio.gather(*(self._retry(q) for q in batch))
                down = next((r for r in results if r is not None and r.provider_down), None)
                if down is not None:
                    # The rest would fail the same way; they wait with the oldest, keeping order.
                    await self._spool.postpone(login, down.next_attempt)
                    return
        finally:
            self._rounds.discard(login)
            self._wake.set()  # mail that fell due during the round need not wait for a tick

    async def _retry(self, queue_id: str) -> Settled | None:
        try:
            entry = await self._spool.entry(queue_id)
            if entry is None:
                return None
            now = time.time()
            if is_expired(entry.received_at, now, self.config.queue):
                await self._bounces.expire(entry)
                return None
            warn = needs_delay_warning(entry.received_at, now, entry.warned, self.config.queue)
            if warn and not entry.is_bounce:
                await self._bounces.warn_delayed(entry)
            return await self._settle(queue_id, None)
        finally:
            self._inflight.discard(queue_id)

    # -- one attempt and what follows from it --------------------------------------------------

    async def _settle(
        self,
        queue_id: str,
        handoff: Handoff | None,
        fresh: NewMessage | None = None,
        user: User | None = None,
    ) -> Settled:
        """Attempt delivery of a spooled message (fresh: just committed) and act on the verdict."""
        queued = Settled(Queued(queue_id), provider_down=False, next_attempt=0.0)
        try:
            entry = fresh.entry() if fresh is not None else await self._spool.entry(queue_id)
            if entry is None:
                return queued
            data = fresh.upstream_data if fresh is not None else None
            verdict = await self._attempts.attempt(entry, data, user)
            now = time.time()
            delay = retry_delay(entry.attempts + 1, self.config.queue, self._random.uniform(-1, 1))
            outcome = verdict.outcome
            # Decide who hears about failures before the outcome is written, so the deadline
            # cannot slip in between: either the waiting app hears the 5xx, or the sender gets
            # a DSN, written in the same transaction as the failure.
            app_hears_it = handoff is not None and handoff.client_waiting
            if handoff is not None:
                handoff.decided = True
            refused = app_hears_it and not outcome.delivered and not outcome.deferred
            bounce = None
            if outcome.failed and not refused:
                bounce = await self._bounces.dsn(
                    entry, verdict.user, outcome.failed, {}, verdict.remote
                )
            sent_job = self._sent.job_for(entry, verdict.user) if outcome.delivered else None
            updated = await self._spool.record(
                queue_id,
                AttemptRecord(
                    delivered=outcome.delivered,
                    failed=outcome.failed,
                    deferred=outcome.deferred,
                    reply=summary(verdict),
                    next_attempt=now + delay,
                    sent_job=sent_job,
                    bounce=bounce,
                ),
            )
            if updated is None:  # dropped by an operator meanwhile: no DSN or Sent job written
                return queued
            self._bounces.queued(bounce, entry, "failed", len(outcome.failed))
            if sent_job is not None:
                self._start_sent_copy(sent_job.id)
            result = await self._conclude(updated, verdict, refused, delay)
        except Exception:
            logger.exception("queue.attempt_crashed id=%s", queue_id)
            return queued
        finally:
            if handoff is not None:
                self._inflight.discard(queue_id)
        provider_down = isinstance(verdict.error, TemporaryFailure)
        return Settled(result, provider_down, now + delay)

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
            self._deferred_users.add(entry.login)
            return Queued(entry.id, summary(verdict))
        return Sent(entry.message_id, outcome.reply, dict(outcome.failed))

    async def _provider_is_back(self, login: str) -> None:
        if login not in self._deferred_users:
            return
        self._deferred_users.discard(login)
        moved = await self._spool.kick(login, time.time())
        if moved:
            logger.info(
                "queue.kicked user=%s messages=%d reason=provider accepted mail", login, moved
            )
            self._wake.set()
