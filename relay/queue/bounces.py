"""Bounces and delay warnings: DSNs queued to the sender for failed, expired or late mail.

A DSN is written in the same transaction as what it reports (the failed attempt, the expiry,
the warned flag), so a crash can never record a failure whose sender is not told.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.model import Notify, User
from relay.queue.dsn import build_dsn
from relay.queue.records import NewMessage, QueueEntry
from relay.queue.spool import Spool
from relay.reply import Reply
from relay.state.store import Store

logger = logging.getLogger("relay.bounces")  # the name shows in log lines: kept from 0.1


class Bounces:
    """Builds each DSN for the sender's own account and hands it over for a first attempt."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        spool: Spool,
        attempt_now: Callable[[str], None],
    ) -> None:
        self._live = live
        self._store = store
        self._spool = spool
        self._attempt_now = attempt_now

    @property
    def config(self) -> RelayConfig:
        """The config in force (a reload replaces it)."""
        return self._live.current

    async def expire(self, entry: QueueEntry) -> None:
        """Bounce what is still pending of mail past its lifetime, and drop it from the queue."""
        days = self.config.queue.lifetime / 86400
        last = Reply.parse(entry.last_reply) if entry.last_reply else None
        text = f"expired after {days:g} days in the queue; last reply: {entry.last_reply}"
        # RFC 3463 X.4.7: delivery time expired.
        reply = Reply(554, "5.4.7", text) if last is None else Reply(last.code, "5.4.7", text)
        logger.warning(
            "queue.expired id=%s user=%s rcpts=%d", entry.id, entry.login, len(entry.pending)
        )
        user = self._store.find_user(entry.login)
        failed = dict.fromkeys(entry.pending, reply)
        bounce = await self.dsn(entry, user, failed, {}, "unknown")
        await self._spool.expire(entry.id, bounce)
        self.queued(bounce, entry, "failed", len(failed))

    async def warn_delayed(self, entry: QueueEntry) -> None:
        """Tell the sender their mail is still being retried, once per message."""
        delayed = {
            r: Reply.parse(entry.recipients[r][1] or entry.last_reply or "") for r in entry.pending
        }
        user = self._store.find_user(entry.login)
        warning = await self.dsn(entry, user, {}, delayed, "unknown")
        await self._spool.warn(entry.id, warning)
        self.queued(warning, entry, "delayed", len(delayed))

    async def dsn(
        self,
        entry: QueueEntry,
        user: User | None,
        failed: dict[str, Reply],
        delayed: dict[str, Reply],
        remote: str,
    ) -> NewMessage | None:
        """The DSN to the sender through the same account, to spool; a bounce is never bounced."""
        if entry.is_bounce:
            logger.warning("queue.bounce_dropped id=%s reason=a bounce is never bounced", entry.id)
            return None
        # RFC 3461 §4.1: only the events each recipient's NOTIFY asks for (NEVER: none).
        asked = entry.params.notice
        failed = {r: reply for r, reply in failed.items() if asked(r).wants(Notify.FAILURE)}
        delayed = {r: reply for r, reply in delayed.items() if asked(r).wants(Notify.DELAY)}
        if not failed and not delayed:
            logger.info("queue.dsn_not_asked id=%s reason=NOTIFY", entry.id)
            return None
        header = await self._spool.read_sent_header(entry.id)
        if user is None or header is None:
            logger.error("queue.bounce_impossible id=%s user=%s", entry.id, entry.login)
            return None
        # RFC 3461 §4.3: RET=FULL returns the whole message; otherwise (HDRS, or nothing
        # asked) its header only, which is also all the sender needs to recognise it.
        full = await self._spool.read_data(entry.id) if entry.params.ret == "FULL" else None
        now = time.time()
        report = build_dsn(
            reporting_host=self.config.hostname,
            user_email=user.email,
            original_sender=entry.sender,
            original_header=header,
            received_at=entry.received_at,
            now=now,
            remote=remote,
            failed=failed,
            delayed=delayed,
            resent_in_doubt=entry.resent_in_doubt,
            params=entry.params,
            original=full,
        )
        bounce_id = secrets.token_hex(8)
        return NewMessage(
            id=bounce_id,
            login=entry.login,
            sender=user.email,
            message_id=f"<dsn-{bounce_id}@relay>",
            recipients=(entry.sender,),
            upstream_data=report,
            body_offset=0,
            sent_header=b"",
            received_at=now,
            is_bounce=True,
        )

    def queued(self, bounce: NewMessage | None, entry: QueueEntry, kind: str, rcpts: int) -> None:
        """A DSN is in the spool: its first attempt starts now, not at the next tick."""
        if bounce is None:
            return
        self._attempt_now(bounce.id)
        logger.info("queue.dsn id=%s for=%s kind=%s rcpts=%d", bounce.id, entry.id, kind, rcpts)
