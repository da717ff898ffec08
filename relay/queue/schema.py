"""The spool file's schema: creating it, and upgrading a spool written by an older relay."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from relay.errors import StoreError
from relay.queue.sentjobs import SCHEMA as SENT_JOBS_SCHEMA
from relay.queue.sentjobs import TABLE_4 as SENT_JOBS_TABLE_4

SCHEMA_VERSION = 5
BLOB_CHUNK = 1 << 20  # larger data is written in pieces, so SQLite never holds a second copy
CHECKPOINT_WAIT_MS = 200  # how long a WAL checkpoint waits for another process's reader
# As schema 2 made it; schema 5 added the body file columns.
BODIES_TABLE_2 = """
CREATE TABLE IF NOT EXISTS bodies (
    message_seq  INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    data         BLOB NOT NULL
) STRICT
"""
# A large mail's body is a file in bodies/ (relay.queue.bodyfiles): data is then the upstream
# header only, and file and file_size name the rest.
BODIES_TABLE = """
CREATE TABLE IF NOT EXISTS bodies (
    message_seq  INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    data         BLOB NOT NULL,
    file         TEXT,
    file_size    INTEGER,
    -- 0 when no line of the data starts with a dot: DATA then needs no stuffing pass over it.
    file_dot_lines  INTEGER NOT NULL DEFAULT 1
) STRICT
"""
# Schema 4 added what every attempt passes on to the provider: SMTPUTF8 (RFC 6531) and the DSN
# parameters (RFC 3461) RET and ENVID per mail, NOTIFY (comma-separated; '' when not given) and
# ORCPT per recipient.
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    login          TEXT NOT NULL,
    sender         TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    received_at    REAL NOT NULL,
    next_attempt   REAL NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_reply     TEXT NOT NULL DEFAULT '',
    is_bounce      INTEGER NOT NULL DEFAULT 0,
    warned         INTEGER NOT NULL DEFAULT 0,
    body_offset    INTEGER NOT NULL,
    sent_header    BLOB NOT NULL,
    -- Set while an attempt may be under way (from the spooling or claiming transaction until
    -- its outcome is written): after a crash, such mail may already be at the provider.
    claimed_at     REAL,
    resent_in_doubt  INTEGER NOT NULL DEFAULT 0,
    smtputf8       INTEGER NOT NULL DEFAULT 0,
    dsn_ret        TEXT,
    dsn_envid      TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS messages_due ON messages (next_attempt);
"""
    + BODIES_TABLE
    + """;
CREATE TABLE IF NOT EXISTS recipients (
    message_seq  INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL,
    reply        TEXT NOT NULL DEFAULT '',
    notify       TEXT NOT NULL DEFAULT '',
    orcpt        TEXT,
    PRIMARY KEY (message_seq, address)
) STRICT;
CREATE TABLE IF NOT EXISTS attempts (
    message_seq  INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    at           REAL NOT NULL,
    reply        TEXT NOT NULL
) STRICT;
-- Deleting a message finds its attempts through this (ON DELETE CASCADE): without it, every
-- delivered mail's delete read the attempts of all deferred mail. IF NOT EXISTS adds it to a
-- spool made before it at the next start, and a relay that predates it can still open it.
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_seq);
CREATE TABLE IF NOT EXISTS user_status (
    login              TEXT PRIMARY KEY,
    last_delivered_at  REAL,
    last_error         TEXT,
    last_error_at      REAL
) STRICT;
CREATE TABLE IF NOT EXISTS accepted (
    fingerprint  TEXT PRIMARY KEY,
    id           TEXT NOT NULL,
    at           REAL NOT NULL
) STRICT;
"""
)


def open_database(path: Path) -> sqlite3.Connection:
    """Open the spool database with full durability, creating it 0600."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        # A delivered mail's pages are overwritten with zeros when it is deleted, so its text
        # does not linger in free pages (and, after a checkpoint, anywhere in the files).
        db.execute("PRAGMA secure_delete = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(f"spool {path} has schema {version} (made by a newer relay)")
        for to_version, statements in _MIGRATIONS:
            if 1 <= version < to_version:  # 0: a new file, which SCHEMA makes as it is now
                _migrate(db, to_version, statements)
        db.executescript(SCHEMA)
        db.executescript(SENT_JOBS_SCHEMA)
        if version != SCHEMA_VERSION:
            # Only when it changes: `relay status` opens the spool on a full disk too.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as error:
        raise StoreError(f"cannot open spool {path}: {error}") from None
    return db


def checkpoint(db: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it to 0 bytes; False if a reader prevented it."""
    # TRUNCATE rather than PASSIVE: after a PASSIVE checkpoint the log's frames, with the text
    # of mail since delivered, stay on disk until a later write reuses the file (and
    # journal_size_limit trims only what lies past its limit). TRUNCATE empties the file now.
    # It waits for readers in other processes (`relay queue list`), so briefly: the spool's
    # thread must not stall; the next call tries again.
    busy_timeout = db.execute("PRAGMA busy_timeout").fetchone()[0]
    db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        busy: int = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout)}")
    return busy == 0


# Each step from the schema before it: the statements that make the version given.
_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    # 2: each queued message's data moves out of `messages`.
    (
        2,
        (
            BODIES_TABLE_2,
            "INSERT INTO bodies (message_seq, data) SELECT seq, upstream_data FROM messages",
            "ALTER TABLE messages DROP COLUMN upstream_data",
        ),
    ),
    # 3: the columns that mark mail an attempt may have delivered.
    (
        3,
        (
            "ALTER TABLE messages ADD COLUMN claimed_at REAL",
            "ALTER TABLE messages ADD COLUMN resent_in_doubt INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    # 4: the SMTPUTF8 and DSN parameters mail carries from the app to the provider.
    (
        4,
        (
            "ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE messages ADD COLUMN dsn_ret TEXT",
            "ALTER TABLE messages ADD COLUMN dsn_envid TEXT",
            "ALTER TABLE recipients ADD COLUMN notify TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE recipients ADD COLUMN orcpt TEXT",
        ),
    ),
    # 5: large bodies as files beside the spool, named by the message's and the Sent copy's row.
    (
        5,
        (
            SENT_JOBS_TABLE_4,  # a spool older than the Sent copies has none yet
            "ALTER TABLE bodies ADD COLUMN file TEXT",
            "ALTER TABLE bodies ADD COLUMN file_size INTEGER",
            "ALTER TABLE bodies ADD COLUMN file_dot_lines INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE sent_jobs ADD COLUMN file TEXT",
            "ALTER TABLE sent_jobs ADD COLUMN file_size INTEGER",
        ),
    ),
)


def _migrate(db: sqlite3.Connection, to_version: int, statements: tuple[str, ...]) -> None:
    """One step up to to_version, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        # Another relay process may have taken the step while this one waited for the lock.
        if db.execute("PRAGMA user_version").fetchone()[0] < to_version:
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {to_version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
