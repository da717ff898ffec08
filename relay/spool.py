"""The durable queue: every accepted message is committed here before the app hears 250.

SQLite in WAL mode with synchronous=FULL: a commit returns only after the write-ahead log is
fsynced, so a crash at any instant keeps every message whose commit returned. One file holds
envelope, state and data together, so there is no window where a message file exists without
its envelope (or the reverse), and concurrent enqueues share one fsync (group commit). The data
has a table of its own: updating a message's state then never rewrites its body.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from relay.errors import StoreError
from relay.sentqueue import (
    SentJob,
    SentJobSpec,
    count_jobs,
    delete_job,
    insert_from_message,
    record_job_failure,
    select_due_jobs,
    select_job,
)
from relay.spooldb import BLOB_CHUNK
from relay.spooldb import SCHEMA_VERSION as SCHEMA_VERSION
from relay.spooldb import open_database as open_database

R = TypeVar("R")
Write = Callable[[sqlite3.Connection], R]  # one write of a group transaction


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
    upstream_data: bytes
    body_offset: int  # where the body starts in upstream_data; the Sent copy shares it
    sent_header: bytes
    received_at: float
    is_bounce: bool = False
    fingerprint: str | None = None  # set when duplicate submissions should be recognised

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

    @property
    def pending(self) -> list[str]:
        """Recipients still to be delivered."""
        return [a for a, (s, _) in self.recipients.items() if s is RecipientState.PENDING]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one delivery attempt achieved, to be written in one transaction."""

    delivered: dict[str, str]
    failed: dict[str, str]
    deferred: dict[str, str]
    reply: str
    next_attempt: float
    sent_job: SentJobSpec | None = None  # filed if this attempt is the first to deliver


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


def fingerprint(login: str, message_id: str, sender: str, recipients: Iterable[str]) -> str:
    """What makes two submissions the same mail sent twice by a retrying app."""
    key = "\0".join([login, message_id, sender.lower(), *sorted(r.lower() for r in recipients)])
    return hashlib.sha256(key.encode()).hexdigest()


class Spool:
    """The queue database; every call runs on one writer thread that owns the connection."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._db = db
        self._pending: list[tuple[Write[object], asyncio.Future[object]]] = []
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, path: Path) -> Spool:
        """Open (creating, 0600) the spool database."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        db = executor.submit(open_database, path).result()
        return cls(path, executor, db)

    def close(self) -> None:
        """Close the database; waits for the writer thread."""
        self._executor.submit(self._db.close).result()
        self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[..., R], *args: object) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def enqueue(self, message: NewMessage, window: float) -> str | None:
        """Commit a message durably; return None if it duplicates one accepted within window."""
        return await self._commit(partial(_insert_one, message=message, window=window))

    async def _commit(self, write: Write[R]) -> R:
        """Run write in the next group transaction; return its result once that is fsynced."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return cast(R, await future)

    async def _flush(self) -> None:
        # Group commit: every write (a new message, an attempt's outcome) that arrived while the
        # previous fsync ran shares the next one, and one trip to the spool's thread.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._run(run_batch, self._db, [write for write, _ in batch])
            except Exception as error:  # noqa: BLE001  every waiter must hear of a failed commit
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"spool write failed: {error}"))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def read_data(self, message_id: str) -> bytes | None:
        """The upstream bytes of a queued message, or None if it is gone."""
        return await self._run(select_data, self._db, message_id)

    async def read_sent_header(self, message_id: str) -> bytes | None:
        """The header block kept for the Sent copy (with Bcc)."""
        return await self._run(select_sent_header, self._db, message_id)

    async def record(self, message_id: str, attempt: AttemptRecord) -> QueueEntry | None:
        """Write an attempt's outcome; return the entry as it now stands (None once gone)."""
        now = time.time()
        return await self._commit(partial(_record, message_id=message_id, attempt=attempt, now=now))

    async def remove(self, message_id: str) -> None:
        """Delete a message and everything about it."""
        await self._run(delete_message, self._db, message_id)

    async def mark_warned(self, message_id: str) -> None:
        """Remember that a delay warning went out for this message."""
        await self._run(set_warned, self._db, message_id)

    async def entries(self, due_before: float | None = None) -> list[QueueEntry]:
        """Queued entries in order of acceptance, optionally only those due by a time."""
        return await self._run(select_entries, self._db, due_before)

    async def due(self, now: float) -> list[tuple[str, str]]:
        """(id, login) of the queued mail of users with mail due, in order of acceptance."""
        return await self._run(select_due, self._db, now)

    async def entry(self, message_id: str) -> QueueEntry | None:
        """One queued entry, or None if it is gone."""
        entries = await self._run(select_entries, self._db, None, message_id)
        return entries[0] if entries else None

    async def deferred_logins(self) -> set[str]:
        """Users with mail that has been tried and is waiting for another try."""
        return await self._run(select_deferred_logins, self._db)

    async def kick(self, login: str, now: float) -> int:
        """Make a user's deferred mail due now (their provider answered again)."""
        return await self._run(make_due, self._db, login, now)

    async def postpone(self, login: str, until: float) -> None:
        """Move a user's earlier-due mail to `until`, so a down provider is not hammered."""
        await self._run(postpone_user, self._db, login, until)

    async def stats(self, now: float) -> QueueStats:
        """Current queue figures."""
        return await self._run(select_stats, self._db, now)

    async def due_sent_jobs(self, now: float) -> list[str]:
        """Ids of Sent-copy jobs due now."""
        return await self._run(select_due_jobs, self._db, now)

    async def sent_job(self, job_id: str) -> SentJob | None:
        """One Sent-copy job with its data."""
        return await self._run(select_job, self._db, job_id)

    async def sent_job_failed(self, job_id: str, error: str, next_attempt: float) -> None:
        """Count a failed Sent copy and schedule the next try."""
        await self._run(record_job_failure, self._db, job_id, error, next_attempt)

    async def sent_job_done(self, job_id: str) -> None:
        """Remove a filed (or hopeless) Sent-copy job."""
        await self._run(delete_job, self._db, job_id)

    async def sent_jobs_pending(self) -> int:
        """How many Sent copies wait."""
        return await self._run(count_jobs, self._db)

    async def forget_accepted_before(self, cutoff: float) -> None:
        """Drop duplicate-detection records older than the window."""
        await self._run(delete_accepted_before, self._db, cutoff)


def run_batch(db: sqlite3.Connection, writes: list[Write[R]]) -> list[R]:
    """Run writes in one transaction, all or none; their results in order."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [write(db) for write in writes]
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return results


def insert_batch(db: sqlite3.Connection, batch: list[tuple[NewMessage, float]]) -> list[str | None]:
    """Insert messages in one transaction; a duplicate within its window yields None."""
    return run_batch(db, [partial(_insert_one, message=m, window=w) for m, w in batch])


def _insert_one(db: sqlite3.Connection, message: NewMessage, window: float) -> str | None:
    if message.fingerprint is not None:
        cutoff = message.received_at - window
        db.execute(
            "DELETE FROM accepted WHERE fingerprint = ? AND at < ?", (message.fingerprint, cutoff)
        )
        row = db.execute(
            "SELECT id FROM accepted WHERE fingerprint = ?", (message.fingerprint,)
        ).fetchone()
        if row is not None:
            return None
        db.execute(
            "INSERT INTO accepted (fingerprint, id, at) VALUES (?, ?, ?)",
            (message.fingerprint, message.id, message.received_at),
        )
    cursor = db.execute(
        "INSERT INTO messages (id, login, sender, message_id, received_at, next_attempt, "
        "is_bounce, body_offset, sent_header) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            message.id,
            message.login,
            message.sender,
            message.message_id,
            message.received_at,
            message.received_at,
            int(message.is_bounce),
            message.body_offset,
            message.sent_header,
        ),
    )
    seq = cursor.lastrowid
    db.executemany(
        "INSERT OR IGNORE INTO recipients (message_seq, address, state) VALUES (?, ?, ?)",
        [(seq, r, RecipientState.PENDING.value) for r in message.recipients],
    )
    _insert_body(db, seq, message.upstream_data)
    return message.id


def _insert_body(db: sqlite3.Connection, seq: int | None, data: bytes) -> None:
    if len(data) <= BLOB_CHUNK or seq is None:
        db.execute("INSERT INTO bodies (message_seq, data) VALUES (?, ?)", (seq, data))
        return
    # Bound as one value, SQLite would copy all of it first, and again to build the record.
    db.execute("INSERT INTO bodies (message_seq, data) VALUES (?, zeroblob(?))", (seq, len(data)))
    view = memoryview(data)
    with db.blobopen("bodies", "data", seq) as blob:
        for start in range(0, len(data), BLOB_CHUNK):
            blob.write(view[start : start + BLOB_CHUNK])


def _note_user_status(db: sqlite3.Connection, seq: int, attempt: AttemptRecord, now: float) -> None:
    login = db.execute("SELECT login FROM messages WHERE seq = ?", (seq,)).fetchone()[0]
    db.execute("INSERT OR IGNORE INTO user_status (login) VALUES (?)", (login,))
    if attempt.delivered:
        db.execute("UPDATE user_status SET last_delivered_at = ? WHERE login = ?", (now, login))
    if attempt.deferred or attempt.failed:
        db.execute(
            "UPDATE user_status SET last_error = ?, last_error_at = ? WHERE login = ?",
            (attempt.reply, now, login),
        )


@dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's last delivery and last delivery error."""

    last_delivered_at: float | None
    last_error: str | None
    last_error_at: float | None


def select_user_status(db: sqlite3.Connection) -> dict[str, UserStatus]:
    """Per user: when mail last went out, and the last provider error."""
    rows = db.execute(
        "SELECT login, last_delivered_at, last_error, last_error_at FROM user_status"
    ).fetchall()
    return {str(login): UserStatus(*rest) for login, *rest in rows}


def select_data(db: sqlite3.Connection, message_id: str) -> bytes | None:
    """The stored upstream bytes."""
    row = db.execute(
        "SELECT data FROM bodies WHERE message_seq = (SELECT seq FROM messages WHERE id = ?)",
        (message_id,),
    ).fetchone()
    return None if row is None else bytes(row[0])


def select_sent_header(db: sqlite3.Connection, message_id: str) -> bytes | None:
    """The stored Sent-copy header block."""
    row = db.execute("SELECT sent_header FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else bytes(row[0])


def record_attempt(
    db: sqlite3.Connection, message_id: str, attempt: AttemptRecord, now: float
) -> QueueEntry | None:
    """Apply an attempt's per-recipient outcome and schedule the next one, in one transaction."""
    [entry] = run_batch(db, [partial(_record, message_id=message_id, attempt=attempt, now=now)])
    return entry


def _record(
    db: sqlite3.Connection, message_id: str, attempt: AttemptRecord, now: float
) -> QueueEntry | None:
    """record_attempt's work, inside a transaction the caller holds."""
    row = db.execute("SELECT seq FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    seq = row[0]
    first_delivery = (
        attempt.delivered
        and not db.execute(
            "SELECT 1 FROM recipients WHERE message_seq = ? AND state = ?",
            (seq, RecipientState.DELIVERED.value),
        ).fetchone()
    )
    if first_delivery and attempt.sent_job is not None:
        # In the same transaction as the delivery, so a crash cannot lose the Sent copy.
        insert_from_message(db, seq, attempt.sent_job, now)
    for state, replies in (
        (RecipientState.DELIVERED, attempt.delivered),
        (RecipientState.FAILED, attempt.failed),
        (RecipientState.PENDING, attempt.deferred),
    ):
        db.executemany(
            "UPDATE recipients SET state = ?, reply = ? WHERE message_seq = ? AND address = ?",
            [(state.value, reply, seq, address) for address, reply in replies.items()],
        )
    db.execute(
        "UPDATE messages SET attempts = attempts + 1, last_reply = ?, next_attempt = ? "
        "WHERE seq = ?",
        (attempt.reply, attempt.next_attempt, seq),
    )
    db.execute(
        "INSERT INTO attempts (message_seq, at, reply) VALUES (?, ?, ?)",
        (seq, now, attempt.reply),
    )
    _note_user_status(db, seq, attempt, now)
    [entry] = select_entries(db, None, message_id)
    if all(state is RecipientState.DELIVERED for state, _ in entry.recipients.values()):
        # Done: deleting in the same transaction saves a second fsync per mail.
        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        entry = replace(entry, removed=True)
    return entry


def select_stats(db: sqlite3.Connection, now: float) -> QueueStats:
    """Counts of queued and deferred mail, the oldest arrival, pending Sent copies."""
    queued, deferred, oldest = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 0), min(received_at) FROM messages"
    ).fetchone()
    return QueueStats(int(queued), int(deferred), oldest, count_jobs(db), now)


def select_due(db: sqlite3.Connection, now: float) -> list[tuple[str, str]]:
    """(id, login) of every message of each user with a message due, by acceptance order."""
    # A user's queue is retried together, oldest first, as Postfix retries a destination's
    # queue: deferred mail keeps its order however the per-message backoff jitter fell.
    rows = db.execute(
        "SELECT id, login FROM messages WHERE login IN "
        "(SELECT login FROM messages WHERE next_attempt <= ?) ORDER BY seq",
        (now,),
    ).fetchall()
    return [(str(i), str(login)) for i, login in rows]


def select_deferred_logins(db: sqlite3.Connection) -> set[str]:
    """Logins with deferred mail."""
    rows = db.execute("SELECT DISTINCT login FROM messages WHERE attempts > 0").fetchall()
    return {str(row[0]) for row in rows}


def make_due(db: sqlite3.Connection, login: str, now: float) -> int:
    """Bring a user's later attempts forward to now; how many moved."""
    return db.execute(
        "UPDATE messages SET next_attempt = ? WHERE login = ? AND next_attempt > ? "
        "AND attempts > 0",
        (now, login, now),
    ).rowcount


def make_id_due(db: sqlite3.Connection, message_id: str, now: float) -> int:
    """Make one message due now; 1 if it exists, else 0."""
    return db.execute(
        "UPDATE messages SET next_attempt = ? WHERE id = ?", (now, message_id)
    ).rowcount


def postpone_user(db: sqlite3.Connection, login: str, until: float) -> None:
    """Set every earlier next attempt of a user's mail to `until`."""
    db.execute(
        "UPDATE messages SET next_attempt = ? WHERE login = ? AND next_attempt < ?",
        (until, login, until),
    )


def delete_message(db: sqlite3.Connection, message_id: str) -> bool:
    """Delete one message; whether it existed."""
    return db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0


def set_warned(db: sqlite3.Connection, message_id: str) -> None:
    """Flag a message as having had its delay warning."""
    db.execute("UPDATE messages SET warned = 1 WHERE id = ?", (message_id,))


def delete_accepted_before(db: sqlite3.Connection, cutoff: float) -> None:
    """Forget duplicate-detection fingerprints older than cutoff."""
    db.execute("DELETE FROM accepted WHERE at < ?", (cutoff,))


def select_entries(
    db: sqlite3.Connection, due_before: float | None, message_id: str | None = None
) -> list[QueueEntry]:
    """Entries (all, due ones, or one by id) in order of acceptance, with their recipients."""
    query = (
        "SELECT seq, id, login, sender, message_id, received_at, next_attempt, attempts, "
        "last_reply, is_bounce, warned FROM messages"
    )
    where: list[str] = []
    args: list[object] = []
    if due_before is not None:
        where.append("next_attempt <= ?")
        args.append(due_before)
    if message_id is not None:
        where.append("id = ?")
        args.append(message_id)
    if where:
        query += " WHERE " + " AND ".join(where)
    rows = db.execute(query + " ORDER BY seq", args).fetchall()
    entries = []
    for seq, *fields in rows:
        recipients = {
            address: (RecipientState(state), reply)
            for address, state, reply in db.execute(
                "SELECT address, state, reply FROM recipients WHERE message_seq = ? ORDER BY rowid",
                (seq,),
            )
        }
        entries.append(
            QueueEntry(
                id=fields[0],
                login=fields[1],
                sender=fields[2],
                message_id=fields[3],
                received_at=fields[4],
                next_attempt=fields[5],
                attempts=fields[6],
                last_reply=fields[7],
                is_bounce=bool(fields[8]),
                warned=bool(fields[9]),
                recipients=recipients,
            )
        )
    return entries
