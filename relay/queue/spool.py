"""The durable queue: every accepted message is committed here before the app hears 250.

SQLite in WAL mode with synchronous=FULL: a commit returns only after the write-ahead log is
fsynced, so a crash at any instant keeps every message whose commit returned. One file holds
envelope, state and data together, so there is no window where a message file exists without
its envelope (or the reverse), and concurrent enqueues share one fsync (group commit). The data
has a table of its own: updating a message's state then never rewrites its body. A streamed
(large) mail's body is a file beside it instead (relay.queue.bodyfiles), fsynced with its
directory before the row naming it commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import cast

from relay.errors import StoreError
from relay.message import STREAM_THRESHOLD, MessageData, whole
from relay.queue.bodies import read_blob, select_body
from relay.queue.bodyfiles import (
    BodyFile,
    BodyFileRow,
    FileLedger,
    bodies_dir,
    body_path,
    sweep_orphans,
)
from relay.queue.records import AttemptRecord, NewMessage, QueueEntry, QueueStats
from relay.queue.schema import checkpoint, open_database
from relay.queue.sentjobs import (
    SentJob,
    count_jobs,
    delete_job,
    record_job_failure,
    select_due_jobs,
    select_job,
)
from relay.queue.staging import StagedBody, clean_incoming, incoming_dir
from relay.queue.statements import (
    R,
    Write,
    apply_attempt,
    claim_messages,
    defer_message,
    delete_accepted_before,
    delete_message,
    expire_message,
    insert_message,
    make_due,
    postpone_user,
    run_batch,
    select_deferred_logins,
    select_due,
    select_entries,
    select_sent_header,
    select_stats,
    warn_message,
)


def fingerprint(login: str, message_id: str, sender: str, recipients: Iterable[str]) -> str:
    """What makes two submissions the same mail sent twice by a retrying app."""
    key = "\0".join([login, message_id, sender.lower(), *sorted(r.lower() for r in recipients)])
    return hashlib.sha256(key.encode()).hexdigest()


class Spool:
    """The queue database; every call runs on one writer thread that owns the connection."""

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, db: sqlite3.Connection, files: FileLedger
    ) -> None:
        self.path = path
        self._executor = executor
        self._db = db
        self._files = files
        self._pending: list[tuple[Write[object], asyncio.Future[object], str | None]] = []
        self._flushing: asyncio.Task[None] | None = None
        # Writes of staged bodies: off the event loop, and never queued behind a group commit.
        self._staging = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging")
        # Reads of body files: never behind a group commit's fsync or a staged body's.
        self._reading = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bodies")

    @classmethod
    def open(cls, path: Path) -> Spool:
        """Open (creating, 0600) the spool database; remove what a crash left unnamed."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        db = executor.submit(open_database, path).result()
        files = FileLedger(bodies_dir(path))
        executor.submit(files.attach, db).result()
        executor.submit(sweep_orphans, db, files.directory).result()
        clean_incoming(path)
        return cls(path, executor, db, files)

    def close(self) -> None:
        """Close the database; waits for the writer thread."""
        self._staging.shutdown(wait=True)
        self._reading.shutdown(wait=True)
        self._executor.submit(self._db.close).result()
        self._executor.shutdown(wait=True)

    def stage(self) -> StagedBody:
        """A new staged body for a large mail arriving; enqueue adopts it, close discards it."""
        try:
            return StagedBody(incoming_dir(self.path), self._staging)
        except OSError as error:
            raise StoreError(f"cannot stage mail data: {error}") from None

    async def _run(self, function: Callable[..., R], *args: object) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._settled, function, args, None)
        except sqlite3.Error as error:
            raise StoreError(f"spool access failed: {error}") from None

    def _settled(
        self, function: Callable[..., R], args: tuple[object, ...], files: list[str] | None
    ) -> R:
        """Run function on the spool's thread, then unlink the body files no row names now."""
        try:
            return function(*args)
        finally:
            for name in files or ():
                self._files.release(name)  # committed (kept), or a duplicate or rolled back
            self._files.settle(self._db)

    async def enqueue(self, message: NewMessage, window: float) -> str | None:
        """Commit a message durably; return None if it duplicates one accepted within window."""
        name = None
        if message.staged is not None:
            try:
                name = await message.staged.persist(self._files.directory)
            except OSError as error:
                # A name linked before the failure is left for start-up's sweep: it is in no row.
                message.staged.close()
                raise StoreError(f"cannot keep mail data: {error}") from None
        return await self._commit(partial(insert_message, message=message, window=window), name)

    async def _commit(self, write: Write[R], file: str | None = None) -> R:
        """Run write in the next group transaction; return its result once that is fsynced."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future, file))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return cast(R, await future)

    async def _flush(self) -> None:
        # Group commit: every write (a new message, an attempt's outcome) that arrived while the
        # previous fsync ran shares the next one, and one trip to the spool's thread.
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            writes = [write for write, _, _ in batch]
            files = [file for _, _, file in batch if file is not None]
            try:
                results = await loop.run_in_executor(
                    self._executor, self._settled, run_batch, (self._db, writes), files
                )
            except Exception as error:  # noqa: BLE001  every waiter must hear of a failed commit
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"spool write failed: {error}"))
                continue
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def read_data(self, message_id: str) -> bytes | None:
        """The upstream bytes of a queued message, whole, or None if it is gone."""
        data = await self.open_data(message_id)
        return None if data is None else await whole(data)

    async def open_data(self, message_id: str) -> MessageData | None:
        """A queued message's upstream data: whole if small, else read in pieces; None if gone."""
        row = await self._run(select_body, self._db, message_id, STREAM_THRESHOLD)
        if row is None:
            return None
        if row.file is not None:
            return self._body_file(row.data or b"", row.file)
        return row.data if row.data is not None else SpoolBlob(self, "bodies", row.rowid, row.size)

    def _body_file(self, head: bytes, file: BodyFileRow) -> BodyFile:
        path = body_path(self._files.directory, file.name)
        return BodyFile(head, path, file.size, self._reading, file.dot_lines)

    async def read_blob(self, table: str, rowid: int, offset: int, length: int) -> bytes:
        """Octets of a stored body, read on the spool's thread."""
        return await self._run(read_blob, self._db, table, rowid, offset, length)

    async def read_sent_header(self, message_id: str) -> bytes | None:
        """The header block kept for the Sent copy (with Bcc)."""
        return await self._run(select_sent_header, self._db, message_id)

    async def record(self, message_id: str, attempt: AttemptRecord) -> QueueEntry | None:
        """Write an attempt's outcome; return the entry as it now stands (None once gone)."""
        now = time.time()
        return await self._commit(
            partial(apply_attempt, message_id=message_id, attempt=attempt, now=now)
        )

    async def claim(self, message_ids: list[str]) -> list[QueueEntry]:
        """Mark messages as under attempt, in one transaction; the entries as they stood."""
        now = time.time()
        return await self._commit(partial(claim_messages, message_ids=message_ids, now=now))

    async def remove(self, message_id: str) -> None:
        """Delete a message and everything about it."""
        await self._run(delete_message, self._db, message_id)

    async def expire(self, message_id: str, bounce: NewMessage | None) -> None:
        """Drop a message past its lifetime; its DSN is queued in the same transaction."""
        await self._commit(partial(expire_message, message_id=message_id, bounce=bounce))

    async def warn(self, message_id: str, warning: NewMessage | None) -> None:
        """Queue a delay warning and remember it went out, in one transaction."""
        await self._commit(partial(warn_message, message_id=message_id, warning=warning))

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

    async def defer(self, message_id: str, until: float) -> None:
        """A message not tried after all (paced) is due again at until."""
        await self._commit(partial(defer_message, message_id=message_id, until=until))

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
        """One Sent-copy job with its data (a large one's to be read in pieces)."""
        row = await self._run(select_job, self._db, job_id)
        if row is None:
            return None
        if row.file is not None:
            return replace(row.job, data=self._body_file(cast(bytes, row.job.data), row.file))
        if row.size <= STREAM_THRESHOLD:
            return row.job
        return replace(row.job, data=SpoolBlob(self, "sent_jobs", row.rowid, row.size))

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

    async def checkpoint(self) -> bool:
        """Fold the WAL into the database and empty it; False if a reader held it (try later)."""
        # With secure_delete, this leaves no copy of delivered mail in spool.db or spool.db-wal.
        return await self._run(checkpoint, self._db)


@dataclass(frozen=True, slots=True)
class SpoolBlob:
    """A large stored body (relay.message.SpooledData): read a piece at a time, on demand."""

    spool: Spool = field(repr=False)
    table: str  # bodies, or sent_jobs
    rowid: int
    size: int
    dot_lines: bool = True  # not known: DATA stuffs it as it goes

    async def read(self, offset: int, length: int) -> bytes:
        """Up to length octets from offset; StoreError if the row has gone meanwhile."""
        return await self.spool.read_blob(self.table, self.rowid, offset, length)
