"""Bounces and delay warnings: DSNs queued to the sender for failed, expired or late mail."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from relay.config.model import RelayConfig
from relay.queue.dsn import build_dsn
from relay.queue.records import NewMessage, QueueEntry
from relay.queue.spool import Spool
from relay.state.store import Store

logger = logging.getLogger("relay.bounces")  # the name shows in log lines: kept from 0.1


class Bounces:
    """Queues each DSN through the sender's own account and hands it over for a first attempt."""

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        spool: Spool,
        attempt_now: Callable[[str], None],
    ) -> None:
        self.config = config
        self._store = store
        self._spool = spool
        self._attempt_now = attempt_now

    async def expire(self, entry: QueueEntry) -> None:
        """Bounce what is still pending of mail past its lifetime, and drop it from the queue."""
        days = self.config.queue.lifetime / 86400
        reply = f"expired after {days:g} days in the queue; last reply: {entry.last_reply}"
        logger.warning(
            "queue.expired id=%s user=%s rcpts=%d", entry.id, entry.login, len(entry.pending)
        )
        await self.bounce(entry, dict.fromkeys(entry.pending, reply), {}, "unknown")
        await self._spool.remove(entry.id)

    async def warn_delayed(self, entry: QueueEntry) -> None:
        """Tell the sender their mail is still being retried, once per message."""
        delayed = {r: entry.recipients[r][1] or entry.last_reply for r in entry.pending}
        await self.bounce(entry, {}, delayed, "unknown")
        await self._spool.mark_warned(entry.id)

    async def bounce(
        self, entry: QueueEntry, failed: dict[str, str], delayed: dict[str, str], remote: str
    ) -> None:
        """Queue a DSN to the sender through the same account; a bounce is never bounced."""
        if entry.is_bounce:
            logger.warning("queue.bounce_dropped id=%s reason=a bounce is never bounced", entry.id)
            return
        user = self._store.find_user(entry.login)
        header = await self._spool.read_sent_header(entry.id)
        if user is None or header is None:
            logger.error("queue.bounce_impossible id=%s user=%s", entry.id, entry.login)
            return
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
        )
        bounce_id = secrets.token_hex(8)
        await self._spool.enqueue(
            NewMessage(
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
            ),
            0.0,
        )
        # The DSN gets its first attempt now, like mail from an app, not at the next tick.
        self._attempt_now(bounce_id)
        kind = "failed" if failed else "delayed"
        logger.info(
            "queue.dsn id=%s for=%s kind=%s rcpts=%d",
            bounce_id,
            entry.id,
            kind,
            len(failed) + len(delayed),
        )
