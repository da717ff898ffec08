"""A user's own mail as their page shows it: last send, queued mail, last error, last check."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, replace

from relay.model import CheckRecord
from relay.queue.admin import open_queue_admin
from relay.web.site import Site

SHOWN_QUEUED = 10  # the oldest queued mails listed; the count says how many there are


@dataclass(frozen=True, slots=True)
class QueuedMail:
    """One of the user's mails still waiting to go out."""

    received: str
    recipients: str
    attempts: int
    last_reply: str


@dataclass(frozen=True, slots=True)
class MailActivity:
    """What relay did with the user's mail lately."""

    last_sent: str | None
    queued_count: int
    queued: tuple[QueuedMail, ...]
    last_error: str | None
    last_error_at: str | None
    last_check: CheckRecord | None = None
    last_check_at: str | None = None


async def read_activity(site: Site, login: str) -> MailActivity:
    """The user's activity from the spool (in a worker thread: sqlite blocks) and the store."""
    activity = await asyncio.to_thread(_from_spool, site, login)
    check = site.store.last_check(login)
    if check is None:
        return activity
    return replace(activity, last_check=check, last_check_at=when(check.checked_at))


def _from_spool(site: Site, login: str) -> MailActivity:
    with open_queue_admin(site.config.spool_path) as queue:
        status = queue.user_status().get(login)
        entries = [entry for entry in queue.entries() if entry.login == login]
    queued = tuple(
        QueuedMail(
            received=when(entry.received_at) or "-",
            recipients=", ".join(entry.pending or entry.recipients),
            attempts=entry.attempts,
            last_reply=entry.last_reply,
        )
        for entry in entries[:SHOWN_QUEUED]
    )
    error = status.last_error if status else None
    # An error older than the last delivery is history, as `relay status` shows it.
    if status and error and (status.last_error_at or 0) < (status.last_delivered_at or 0):
        error = None
    return MailActivity(
        last_sent=when(status.last_delivered_at) if status else None,
        queued_count=len(entries),
        queued=queued,
        last_error=error,
        last_error_at=when(status.last_error_at) if status and error else None,
    )


def when(moment: float | None) -> str | None:
    """A moment as people read it, in UTC: 2026-12-02 20:31 UTC."""
    if moment is None:
        return None
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")
