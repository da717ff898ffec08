"""The queue runner: the first attempt while the app waits, then retries, expiry and bounces."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from relay.config.delivery import pace_for, session_ceiling
from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.errors import StoreError
from relay.message import PreparedMessage
from relay.model import NO_PARAMS, EnvelopeParams, User
from relay.ops.channels import Ops
from relay.queue.attempts import Attempts
from relay.queue.bounces import Bounces
from relay.queue.delivery import Delivery, DeliveryParts, Handoff, Settled
from relay.queue.indoubt import InDoubtCheck
from relay.queue.pace import Pacer, UserPace
from relay.queue.pause import PauseState, SpoolPause
from relay.queue.records import NewMessage, QueueEntry, QueueStats
from relay.queue.results import AlreadyAccepted, Handed, Queued, Refused, Spooled
from relay.queue.retry import is_expired, needs_delay_warning
from relay.queue.sentcopies import SentCopies
from relay.queue.spool import Spool, fingerprint
from relay.queue.staging import StagedBody
from relay.reply import NO_STORAGE
from relay.state.store import Store
from relay.state.writer import StoreWriter
from relay.upstream.credentials import Credentials
from relay.upstream.pool import QUIT_TIMEOUT, UpstreamPool

logger = logging.getLogger("relay.runner")  # the name shows in log lines: kept from 0.1
T = TypeVar("T")

SCHEDULER_TICK = 1.0  # `relay queue retry` edits the spool from another process; pick that up
STATS_INTERVAL = 2.0  # how fresh the queue figures behind STATUS= and the gauges are
HOUSEKEEPING_INTERVAL = 30.0


@dataclass
class _Ticks:
    """The scheduler loop's own state, and its failures said once until it works again."""

    started: bool = False
    housekeeping: float = 0.0
    failing: str | None = None

    def failed(self, error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"
        if text != self.failing:
            logger.error(
                "queue.tick_failed error=%s (said once until it works)", text, exc_info=error
            )
            self.failing = text

    def worked(self) -> None:
        if self.failing is not None:
            logger.warning("queue.tick_recovered after=%r", self.failing)
            self.failing = None


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
        self.pause = SpoolPause(spool.path.parent, lambda _state: None)
        self.pacer = Pacer()
        self._sent = SentCopies(live, store, spool, credentials, pool.tls, ops, self.pause, writer)
        self._bounces = Bounces(live, store, spool, self._attempt_now)
        self._attempts = Attempts(live, store, credentials, pool, spool, ops)
        parts = DeliveryParts(
            live=live,
            store=store,
            spool=spool,
            attempts=self._attempts,
            doubts=InDoubtCheck(credentials, pool.tls, lambda: self._attempts.graph, spool),
            bounces=self._bounces,
            sent=self._sent,
            pause=self.pause,
            ops=ops,
            pacer=self.pacer,
        )
        self._delivery = Delivery(parts, self._start_sent_copy, self._provider_is_back)
        self._store = store
        self._live = live
        self._ops = ops
        self.stats = QueueStats()
        self._credentials = credentials
        self._spool = spool
        self._pool = pool
        self._inflight: set[str] = set()
        self._rounds: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # -- accepting mail from the listener ------------------------------------------------------

    async def accept(
        self,
        user: User,
        prepared: PreparedMessage,
        recipients: list[str],
        *,
        verdict: bool = True,
        params: EnvelopeParams = NO_PARAMS,
        staged: StagedBody | None = None,
    ) -> Handed:
        """Spool a message durably and try it once; with verdict, say what the provider said.

        Without verdict (spool mode) the app hears 250 as soon as the mail is committed, and a
        refusal reaches the sender as a DSN, as for any retry. staged: the body of a large mail,
        written while it arrived (prepared then holds its header); the spool adopts it.
        """
        queue = self.config.queue
        size = prepared.size + (staged.size if staged is not None else 0)
        if self.pause.paused:
            return Refused(NO_STORAGE)
        if not self.pause.space.room_for(size, queue.min_free_bytes):
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
            params=params,
            staged=staged.hand_over() if staged is not None else None,
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
        logger.debug(
            "queue.accepted id=%s user=%s msg_id=%s rcpts=%d size=%d",
            queue_id,
            user.login,
            prepared.message_id,
            len(recipients),
            size,
        )
        handoff = Handoff(client_waiting=verdict)
        # The first attempt uses what is in memory: reading it back would copy the data again.
        task = self._spawn(self._first_attempt(message, handoff, user))
        if not verdict:
            return Spooled(queue_id)
        done, _ = await asyncio.wait({task}, timeout=queue.first_attempt_timeout)
        if not done and not handoff.decided:
            handoff.client_waiting = False
            return Queued(queue_id, "the provider is slow")
        return (await task).result

    async def submit(self, message: NewMessage) -> None:
        """Spool a mail relay wrote itself (a renewal notice) and start its first attempt."""
        await self._spool.enqueue(message, 0.0)
        self._attempt_now(message.id)

    def stage(self) -> StagedBody:
        """A staged body for a large mail as it arrives (accept's staged)."""
        return self._spool.stage()

    # -- the retry loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start a retry round for each user with mail due, until stopped."""
        ticks = _Ticks()
        while not self._stopping:
            try:
                await self._tick(ticks)
            except Exception as error:  # noqa: BLE001  the loop must outlive any one tick
                if isinstance(error, StoreError):
                    self.pause.begin(f"spool access failed: {error}")
                ticks.failed(error)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=SCHEDULER_TICK)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self, ticks: _Ticks) -> None:
        if not ticks.started:
            self._delivery.deferred_users |= await self._spool.deferred_logins()
            ticks.started = True
        if not await self._can_deliver():
            return
        now = time.time()
        rounds: dict[str, list[str]] = {}
        for queue_id, login in await self._spool.due(now):
            rounds.setdefault(login, []).append(queue_id)
        for login, queue_ids in rounds.items():
            if login not in self._rounds and not self._stopping:
                self._rounds.add(login)
                self._spawn(self._round(login, queue_ids))
        for job_id in await self._spool.due_sent_jobs(now):
            if not self.pause.blocks(job_id, now):
                self._start_sent_copy(job_id)
        if now - self.stats.taken >= STATS_INTERVAL:
            self.stats = await self._spool.stats(now)
        if now - ticks.housekeeping >= HOUSEKEEPING_INTERVAL:
            ticks.housekeeping = now
            await self._spool.forget_accepted_before(now - self.config.queue.duplicate_window)
            await self._pool.close_idle()
            # Delivered mail must not linger in the log (secure_delete wipes it from the file).
            await self._spool.checkpoint()
        ticks.worked()

    async def _can_deliver(self) -> bool:
        """False while delivery is paused; resuming writes the outcomes kept in memory first."""
        low = self.pause.disk_low(self.config.queue.min_free_bytes)
        if low is not None:
            self.pause.begin(low)
            return False
        if not self.pause.paused:
            return True
        for queue_id, record in list(self.pause.unwritten.items()):
            try:
                updated = await self._spool.record(queue_id, record)
            except StoreError:
                return False  # still refused: stay paused, try again at the next tick
            self.pause.forget(queue_id)
            if updated is not None:
                await self._delivery.written(updated, record)
        self.pause.end()
        return True

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give attempts under way `grace` seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        # QUIT to idle sessions within what is left of the grace time, then they are cut.
        left = max(0.1, deadline - loop.time())
        await self._pool.close_all(quit_timeout=min(QUIT_TIMEOUT, left))
        await self._attempts.close()
        await self._credentials.tokens.close()

    @property
    def config(self) -> RelayConfig:
        """The config in force, as the runner and all it hands work to read it."""
        return self._live.current

    def delivery_states(self) -> list[UserPace]:
        """Per user with sessions or paced sends: what `relay status` shows of their delivery."""
        usage = self._pool.usage()
        states = []
        for login in sorted(set(usage) | self.pacer.logins()):
            user = self._store.find_user(login)
            provider = self.config.providers.get(user.provider) if user else None
            if provider is None:
                continue
            pace = pace_for(self.config, login, provider)
            own = self.config.users.get(login)
            whose = "user's own" if own is not None and own.pace is not None else provider.name
            use = usage.get(login)
            ceiling = session_ceiling(self.config, login, provider)
            states.append(
                UserPace(
                    login=login,
                    provider=provider.name,
                    sessions=use.in_use if use else 0,
                    limit=use.limit if use else ceiling,
                    ceiling=ceiling,
                    waiting_sends=use.waiting if use else 0,
                    pace=f"{pace.describe()} ({whose})",
                    waiting=self.pacer.waiting_reason(login, pace),
                )
            )
        return states

    def watch_pause(self, on_change: Callable[[PauseState], None]) -> None:
        """Call on_change whenever delivery pauses or resumes (the daemon's status file)."""
        self.pause.on_change = on_change

    def _start_sent_copy(self, job_id: str) -> None:
        if not self._stopping:
            self._sent.start(job_id, self._spawn)

    def _attempt_now(self, queue_id: str) -> None:
        """Give a message just queued (a DSN) its first attempt now, not at the next tick."""
        self._inflight.add(queue_id)
        self._spawn(self._first_attempt_of(queue_id))
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
                if self._stopping or self.pause.paused:
                    return
                now = time.time()
                batch = [
                    q
                    for q in queue_ids[start : start + width]
                    if q not in self._inflight and not self.pause.blocks(q, now)
                ]
                if not batch:
                    continue
                self._inflight.update(batch)
                try:
                    # Marked in doubt before the end of DATA goes out, in one commit per batch.
                    entries = await self._spool.claim(batch)
                except StoreError as error:
                    self._inflight.difference_update(batch)
                    self.pause.begin(f"spool write failed: {error}")
                    return
                self._inflight.difference_update(set(batch) - {e.id for e in entries})
                results = await asyncio.gather(*(self._retry(entry) for entry in entries))
                down = next((r for r in results if r is not None and r.provider_down), None)
                if down is not None:
                    # The rest would fail the same way; they wait with the oldest, keeping order.
                    await self._spool.postpone(login, down.next_attempt)
                    return
        except StoreError as error:
            self.pause.begin(f"spool write failed: {error}")
        finally:
            self._rounds.discard(login)
            self._wake.set()  # mail that fell due during the round need not wait for a tick

    async def _first_attempt(self, message: NewMessage, handoff: Handoff, user: User) -> Settled:
        try:
            return await self._delivery.settle(message.entry(), handoff, message.in_memory, user)
        finally:
            self._inflight.discard(message.id)

    async def _first_attempt_of(self, queue_id: str) -> None:
        try:
            entry = await self._spool.entry(queue_id)
            if entry is not None:
                # Its claim is the spooling itself: nothing earlier can have delivered it.
                await self._delivery.settle(replace(entry, claimed_at=None), None)
        except Exception:  # noqa: BLE001  logged; the mail stays queued for the next round
            logger.exception("queue.attempt_crashed id=%s", queue_id)
        finally:
            self._inflight.discard(queue_id)

    async def _retry(self, entry: QueueEntry) -> Settled | None:
        try:
            now = time.time()
            if is_expired(entry.received_at, now, self.config.queue):
                await self._bounces.expire(entry)
                return None
            warn = needs_delay_warning(entry.received_at, now, entry.warned, self.config.queue)
            if warn and not entry.is_bounce:
                await self._bounces.warn_delayed(entry)
            return await self._delivery.settle(entry, None)
        except Exception:  # noqa: BLE001  whatever it was, the mail backs off like any other
            await self._delivery.crashed(entry)
            return None
        finally:
            self._inflight.discard(entry.id)

    async def _provider_is_back(self, login: str) -> None:
        if login not in self._delivery.deferred_users:
            return
        self._delivery.deferred_users.discard(login)
        moved = await self._spool.kick(login, time.time())
        if moved:
            logger.info(
                "queue.kicked user=%s messages=%d reason=provider accepted mail", login, moved
            )
            self._wake.set()
