"""Sent-copy jobs in the spool: filed after the provider took the mail, retried on their own."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent_jobs (
    id            TEXT PRIMARY KEY,
    login         TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    sent_at       REAL NOT NULL,
    plan          TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    last_error    TEXT NOT NULL DEFAULT '',
    data          BLOB NOT NULL
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
    data: bytes = field(repr=False)


def insert_from_message(db: sqlite3.Connection, seq: int, spec: SentJobSpec, now: float) -> None:
    """Create a job from a spooled message: its Sent header (with Bcc) and its body."""
    row = db.execute(
        "SELECT login, message_id, sent_header, data, body_offset FROM messages "
        "JOIN bodies ON message_seq = seq WHERE seq = ?",
        (seq,),
    ).fetchone()
    login, message_id, sent_header, upstream, offset = row
    db.execute(
        "INSERT OR IGNORE INTO sent_jobs (id, login, message_id, sent_at, plan, next_attempt, "
        "data) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (spec.id, login, message_id, now, spec.plan, now, bytes(sent_header) + upstream[offset:]),
    )


def select_due_jobs(db: sqlite3.Connection, now: float) -> list[str]:
    """Ids of jobs due for an attempt."""
    rows = db.execute(
        "SELECT id FROM sent_jobs WHERE next_attempt <= ? ORDER BY sent_at", (now,)
    ).fetchall()
    return [str(row[0]) for row in rows]


def select_job(db: sqlite3.Connection, job_id: str) -> SentJob | None:
    """One job with its data."""
    row = db.execute(
        "SELECT id, login, message_id, sent_at, plan, attempts, last_error, data "
        "FROM sent_jobs WHERE id = ?",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    job_id, login, message_id, sent_at, plan, attempts, last_error, data = row
    return SentJob(job_id, login, message_id, sent_at, plan, attempts, last_error, bytes(data))


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
