"""Sent-copy jobs in the spool: filed after the provider took the mail, retried on their own."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from relay.message import STREAM_THRESHOLD, MessageData
from relay.queue.bodyfiles import BodyFileRow

_COLUMNS = """
    id            TEXT PRIMARY KEY,
    login         TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    sent_at       REAL NOT NULL,
    plan          TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    last_error    TEXT NOT NULL DEFAULT '',
    data          BLOB NOT NULL"""
# As it was up to spool schema 4, for the step that adds the body file (relay.queue.schema).
TABLE_4 = f"CREATE TABLE IF NOT EXISTS sent_jobs ({_COLUMNS}\n) STRICT"
# A large copy's data is its Sent header, and file (relay.queue.bodyfiles) the body it shares
# with its message.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sent_jobs ({_COLUMNS},
    file          TEXT,
    file_size     INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS sent_jobs_due ON sent_jobs (next_attempt);
"""


@dataclass(frozen=True, slots=True)
class SentJobSpec:
    """Ask apply_attempt to file a Sent copy if this attempt is the first to deliver."""

    id: str
    plan: str


@dataclass(frozen=True, slots=True)
class SentJob:
    """One pending Sent copy."""

    id: str
    login: str
    message_id: str
    sent_at: float
    plan: str
    attempts: int
    last_error: str
    data: MessageData = field(repr=False)  # a large copy is read from the spool in pieces


@dataclass(frozen=True, slots=True)
class SentJobRow:
    """A job as stored: its data whole when small, else where to read it (rowid or file, size)."""

    job: SentJob
    rowid: int
    size: int
    file: BodyFileRow | None = None  # a body file: data is then the header


def insert_from_message(db: sqlite3.Connection, seq: int, spec: SentJobSpec, now: float) -> None:
    """Create a job from a spooled message: its Sent header (with Bcc) and its body."""
    row = db.execute(
        "SELECT login, message_id, sent_header, body_offset, length(data), file, file_size "
        "FROM messages JOIN bodies ON message_seq = seq WHERE seq = ?",
        (seq,),
    ).fetchone()
    login, message_id, sent_header, offset, size, file, file_size = row
    header = bytes(sent_header)
    values = (spec.id, login, message_id, now, spec.plan, now)
    insert = (
        "INSERT OR IGNORE INTO sent_jobs (id, login, message_id, sent_at, plan, next_attempt, "
        "data, file, file_size) VALUES (?, ?, ?, ?, ?, ?, "
    )
    if size <= STREAM_THRESHOLD:
        [upstream] = db.execute("SELECT data FROM bodies WHERE message_seq = ?", (seq,)).fetchone()
        # A body file is shared, not copied: the job names it too, and it stays until both go.
        db.execute(insert + "?, ?, ?)", (*values, header + upstream[offset:], file, file_size))
        return
    # A large body is copied a piece at a time, from blob to blob: never whole in memory.
    cursor = db.execute(insert + "zeroblob(?), NULL, NULL)", (*values, len(header) + size - offset))
    if cursor.rowcount == 0 or cursor.lastrowid is None:
        return
    with (
        db.blobopen("bodies", "data", seq, readonly=True) as source,
        db.blobopen("sent_jobs", "data", cursor.lastrowid) as copy,
    ):
        copy.write(header)
        for start in range(offset, size, STREAM_THRESHOLD):
            source.seek(start)
            copy.write(source.read(min(STREAM_THRESHOLD, size - start)))


def select_due_jobs(db: sqlite3.Connection, now: float) -> list[str]:
    """Ids of jobs due for an attempt."""
    rows = db.execute(
        "SELECT id FROM sent_jobs WHERE next_attempt <= ? ORDER BY sent_at", (now,)
    ).fetchall()
    return [str(row[0]) for row in rows]


def select_job(db: sqlite3.Connection, job_id: str) -> SentJobRow | None:
    """One job, with its data if it is small (else b"": read it by rowid in pieces)."""
    row = db.execute(
        "SELECT id, login, message_id, sent_at, plan, attempts, last_error, rowid, length(data), "
        "CASE WHEN file IS NOT NULL OR length(data) <= ? THEN data END, file, file_size "
        "FROM sent_jobs WHERE id = ?",
        (STREAM_THRESHOLD, job_id),
    ).fetchone()
    if row is None:
        return None
    job_id, login, message_id, sent_at, plan, attempts, last_error, rowid, size, data, *file = row
    job = SentJob(
        job_id, login, message_id, sent_at, plan, attempts, last_error, bytes(data or b"")
    )
    named = None if file[0] is None else BodyFileRow(str(file[0]), int(file[1]))
    return SentJobRow(job, rowid, size, named)


def count_jobs(db: sqlite3.Connection) -> int:
    """How many Sent copies are pending."""
    return int(db.execute("SELECT count(*) FROM sent_jobs").fetchone()[0])


def record_job_failure(
    db: sqlite3.Connection, job_id: str, error: str, next_attempt: float
) -> None:
    """Count a failed attempt and schedule the next."""
    db.execute(
        "UPDATE sent_jobs SET attempts = attempts + 1, last_error = ?, next_attempt = ? "
        "WHERE id = ?",
        (error, next_attempt, job_id),
    )


def delete_job(db: sqlite3.Connection, job_id: str) -> None:
    """Forget a finished or hopeless job."""
    db.execute("DELETE FROM sent_jobs WHERE id = ?", (job_id,))
