"""The spool for commands run beside the daemon: `relay queue`, `relay status`, `user authorize`.

Synchronous and short-lived: each command opens the spool file, reads or edits a few rows and
closes it, while the daemon keeps its own connection. The daemon notices edits at its next
scheduler tick (runner.SCHEDULER_TICK).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.queue.bodyfiles import FileLedger, bodies_dir
from relay.queue.records import QueueEntry, QueueStats
from relay.queue.schema import open_database
from relay.queue.sentjobs import count_jobs
from relay.queue.statements import (
    UserStatus,
    delete_message,
    make_due,
    make_id_due,
    select_entries,
    select_stats,
    select_user_status,
)


class QueueAdmin:
    """Reading and editing the queue in the spool file, one short command at a time."""

    def __init__(self, db: sqlite3.Connection, files: FileLedger | None = None) -> None:
        self._db = db
        self._files = files

    def entries(self, queue_id: str | None = None) -> list[QueueEntry]:
        """Every queued message (or the one with this queue id), oldest first."""
        return select_entries(self._db, None, queue_id)

    def sent_copies_pending(self) -> int:
        """How many Sent copies wait to be filed."""
        return count_jobs(self._db)

    def stats(self, now: float) -> QueueStats:
        """The queue's figures, as `relay status` and the daemon's gauges show them."""
        return select_stats(self._db, now)

    def user_status(self) -> dict[str, UserStatus]:
        """Each user's last delivery and last error, by login."""
        return select_user_status(self._db)

    def queued_by_user(self) -> dict[str, int]:
        """How many messages each user has queued, by login; users with none are missing."""
        rows = self._db.execute("SELECT login, count(*) FROM messages GROUP BY login")
        return {str(login): int(count) for login, count in rows}

    def retry(self, queue_id: str, now: float) -> int:
        """Make one queued message due now; 0 when there is no such message."""
        return make_id_due(self._db, queue_id, now)

    def retry_user(self, login: str, now: float) -> int:
        """Make all of a user's queued mail due now; how many messages that was."""
        return make_due(self._db, login, now)

    def drop(self, queue_id: str) -> bool:
        """Delete a queued message without sending it; False when there is no such message."""
        dropped = delete_message(self._db, queue_id)
        if self._files is not None:
            self._files.settle(self._db)  # its body file, unless its Sent copy still needs it
        return dropped


@contextmanager
def open_queue_admin(spool_path: Path) -> Iterator[QueueAdmin]:
    """The spool file opened for one command, closed when it is done."""
    db = open_database(spool_path)
    files = FileLedger(bodies_dir(spool_path))
    try:
        files.attach(db)
        yield QueueAdmin(db, files)
    finally:
        db.close()


def create_queue(spool_path: Path) -> None:
    """Create the spool file with its current schema (`relay init`); an existing one is kept."""
    open_database(spool_path).close()
