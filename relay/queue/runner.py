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

from relay.config.model import RelayConfig
from relay.errors import TemporaryFailure
from relay.message import PreparedMessage
from relay.model import User
from relay.ops.channels import Ops
from relay.queue.attempts import Attempts, Verdict, app_refusal, summary
from relay.queue.bounces import Bounces
from relay.queue.records import AttemptRecord, NewMessage, QueueEntry, QueueStats, RecipientState
from relay.queue.retry import is_expired, needs_delay_warning, retry_delay
from relay.queue.sentcopies import SentCopies
from relay.queue.spool import Spool, fingerprint
from relay.state.store import Store
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
    """How one attempt ended: the app's reply, and whether the provider seemed down."""

    reply: str
    provider_down: bool
    next_attempt: float


class QueueRunner:
    """Delivers spooled mail: once while the app waits, then on a backoff schedule."""

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        credentials: Credentials,
        spool: Spool,
        pool: UpstreamPool,
        ops: Ops,
    ) -> None:
        self.sent = SentCopies(config, store, spool, credentials, pool.tls, ops)
        self.attempts = Attempts(config, store, credentials, pool, spool, ops)
        self.bounces = Bounces(config, store, spool, self._attempt_now)
        self._config = config
        self.ops = ops
        self.stats = QueueStats()
        self.store = store
        self.credentials = credentials
        self.spool = spool
        self.pool = pool
        self._inflight: set[str] = set()
        self._rounds: set[str] = set()
        # Users with deferred mail: only for them does a delivery make other mail due.
        self._deferred_users: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._random = random.SystemRandom()

    # -- accepting mail from the listener ------------------------------------------------------

    async def accept(self, user: User, prepared: PreparedMessage, recipients: list[str]) -> str:
        """Spool a message durably, try it once within the deadline, and return the app's reply."""
        queue = self.config.queue
        size = prepared.size
        if shutil.disk_usage(self.spool.path.parent).free - size < queue.min_free_bytes:
            logger.error("queue.disk_low user=%s size=%d", user.login, size)
            return "452 4.3.1 insufficient system storage, try again later"
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
            stored = await self.spool.enqueue(message, queue.duplicate_window)
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
            return f"250 2.0.0 {prepared.message_id} already accepted; not sent twice"
        self.ops.metrics.mail_accepted(user.login, user.provider)
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
        task = self._spawn(self._settle(queue_id, handoff, message))
        done, _ = await asyncio.wait({task}, timeout=queue.first_attempt_timeout)
        if not done and not handoff.decided:
            handoff.client_waiting = False
            return f"250 2.0.0 queued as {queue_id}; the provider is slow, relay keeps trying"
        return (await task).reply

    # -- the retry loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start a retry round for each user with mail due, until stopped."""
        housekeeping = 0.0
        self._deferred_users |= await self.spool.deferred_logins()
        while not self._stopping:
            now = time.time()
            rounds: dict[str, list[str]] = {}
            for queue_id, login in await self.spool.due(now):
                rounds.setdefault(login, []).append(queue_id)
            for login, queue_ids in rounds.items():
                if login not in self._rounds and not self._stopping:
                    self._rounds.add(login)
                    self._spawn(self._round(login, queue_ids))
            for job_id in await self.spool.due_sent_jobs(now):
                self._start_sent_copy(job_id)
            if now - self.stats.taken >= STATS_INTERVAL:
                self.stats = await self.spool.stats(now)
            if now - housekeeping >= HOUSEKEEPING_INTERVAL:
                housekeeping = now
                await self.spool.forget_accepted_before(now - self.config.queue.duplicate_window)
                await self.pool.close_idle()
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
        await self.pool.close_all()
        await self.credentials.tokens.close()

    @property
    def config(self) -> RelayConfig:
        """The config in force; a reload replaces it for the runner and all it hands work to."""
        return self._config

    @config.setter
    def config(self, config: RelayConfig) -> None:
        self._config = config
        self.sent.config = config
        self.attempts.config = config
        self.bounces.config = config

    def _start_sent_copy(self, job_id: str) -> None:
        if not self._stopping:
            self.sent.start(job_id, self._spawn)

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
                    await self.spool.postpone(login, down.next_attempt)
                    return
        finally:
            self._rounds.discard(login)
            self._wake.set()  # mail that fell due during the round need not wait for a tick

    async def _retry(self, queue_id: str) -> Settled | None:
        try:
            entry = await self.spool.entry(queue_id)
            if entry is None:
                return None
            now = time.time()
            if is_expired(entry.received_at, now, self.config.queue):
                await self.bounces.expire(entry)
                return None
            warn = needs_delay_warning(entry.received_at, now, entry.warned, self.config.queue)
            if warn and not entry.is_bounce:
                await self.bounces.warn_delayed(entry)
            return await self._settle(queue_id, None)
        finally:
            self._inflight.discard(queue_id)

    # -- one attempt and what follows from it --------------------------------------------------

    async def _settle(
        self, queue_id: str, handoff: Handoff | None, fresh: NewMessage | None = None
    ) -> Settled:
        """Attempt delivery of a spooled message (fresh: just committed) and act on the verdict."""
        queued = Settled(f"250 2.0.0 queued as {queue_id}", provider_down=False, next_attempt=0.0)
        try:
            entry = fresh.entry() if fresh is not None else await self.spool.entry(queue_id)
            if entry is None:
                return queued
            verdict = await self.attempts.attempt(entry, fresh.upstream_data if fresh else None)
            now = time.time()
            delay = retry_delay(entry.attempts + 1, self.config.queue, self._random.uniform(-1, 1))
            outcome = verdict.outcome
            sent_job = self.sent.job_for(entry) if outcome.delivered else None
            updated = await self.spool.record(
                queue_id,
                AttemptRecord(
                    delivered=outcome.delivered,
                    failed=outcome.failed,
                    deferred=outcome.deferred,
                    reply=summary(verdict),
                    next_attempt=now + delay,
                    sent_job=sent_job,
                ),
            )
            if sent_job is not None:
                self._start_sent_copy(sent_job.id)
            if updated is None:  # dropped by an operator meanwhile
                return queued
            # Decide who hears about failures before any further await, so the deadline cannot
            # slip in between: either the waiting app hears a 5xx, or the sender gets a DSN.
            app_hears_it = handoff is not None and handoff.client_waiting
            if handoff is not None:
                handoff.decided = True
            reply = await self._conclude(updated, verdict, app_hears_it, delay)
        except Exception:
            logger.exception("queue.attempt_crashed id=%s", queue_id)
            return queued
        finally:
            if handoff is not None:
                self._inflight.discard(queue_id)
        provider_down = isinstance(verdict.error, TemporaryFailure)
        return Settled(reply, provider_down, now + delay)

    async def _conclude(
        self, entry: QueueEntry, verdict: Verdict, app_hears_it: bool, delay: float
    ) -> str:
        outcome = verdict.outcome
        self.attempts.log(entry, verdict, delay)
        if outcome.delivered:
            await self._provider_is_back(entry.login)
        delivered_any = any(s is RecipientState.DELIVERED for s, _ in entry.recipients.values())
        if not entry.pending and app_hears_it and not delivered_any:
            await self.spool.remove(entry.id)
            return app_refusal(verdict)
        if outcome.failed:
            await self.bounces.bounce(entry, outcome.failed, {}, verdict.remote)
        if not entry.pending and not entry.removed:
            await self.spool.remove(entry.id)
        if entry.pending:
            self._deferred_users.add(entry.login)
            return f"250 2.0.0 queued as {entry.id}; {summary(verdict)}; relay keeps trying"
        refused = "; ".join(f"<{r}> {reply}" for r, reply in outcome.failed.items())
        tail = f"; refused by provider: {refused}" if refused else ""
        return f"250 2.0.0 {entry.message_id} sent, provider said: {outcome.reply}{tail}"

    async def _provider_is_back(self, login: str) -> None:
        if login not in self._deferred_users:
            return
        self._deferred_users.discard(login)
        moved = await self.spool.kick(login, time.time())
        if moved:
            logger.info(
                "queue.kicked user=%s messages=%d reason=provider accepted mail", login, moved
            )
            self._wake.set()
