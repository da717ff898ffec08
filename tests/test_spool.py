"""The spool file: message data in a table of its own, and upgrades of older spool files."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from relay.config.load import load_config
from relay.errors import StoreError
from relay.queue.records import AttemptRecord, NewMessage, RecipientState
from relay.queue.schema import SCHEMA_VERSION, open_database
from relay.queue.spool import Spool
from relay.queue.statements import select_data, select_user_status
from relay.reply import Reply
from tests.harness import running_daemon, write_config
from tests.test_queue import eventually
from tests.test_server import provider_for
from tests.upstream import recording_upstream

# The spool as relay wrote it before schema 2: the data inside the messages row.
SCHEMA_1 = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, login TEXT NOT NULL,
    sender TEXT NOT NULL, message_id TEXT NOT NULL, received_at REAL NOT NULL,
    next_attempt REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT NOT NULL DEFAULT '', is_bounce INTEGER NOT NULL DEFAULT 0,
    warned INTEGER NOT NULL DEFAULT 0, upstream_data BLOB NOT NULL,
    body_offset INTEGER NOT NULL, sent_header BLOB NOT NULL
) STRICT;
CREATE INDEX messages_due ON messages (next_attempt);
CREATE TABLE recipients (
    message_seq INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    address TEXT NOT NULL, state TEXT NOT NULL, reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_seq, address)
) STRICT;
CREATE TABLE attempts (
    message_seq INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    at REAL NOT NULL, reply TEXT NOT NULL
) STRICT;
CREATE TABLE user_status (
    login TEXT PRIMARY KEY, last_delivered_at REAL, last_error TEXT, last_error_at REAL
) STRICT;
CREATE TABLE accepted (fingerprint TEXT PRIMARY KEY, id TEXT NOT NULL, at REAL NOT NULL) STRICT;
PRAGMA user_version = 1;
"""
HEADER = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: from the old spool\r\n"


def write_schema_1_spool(path: Path, message_id: str, data: bytes) -> None:
    """A schema-1 spool file holding one queued, due message for alice."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        db.executescript(SCHEMA_1)
        with db:
            db.execute(
                "INSERT INTO messages (id, login, sender, message_id, received_at, next_attempt, "
                "attempts, upstream_data, body_offset, sent_header) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    message_id,
                    "alice",
                    "alice@example.org",
                    "<old@example.org>",
                    time.time(),
                    time.time(),
                    1,
                    data,
                    len(HEADER),
                    HEADER,
                ),
            )
            db.execute(
                "INSERT INTO recipients (message_seq, address, state) VALUES (1, ?, 'pending')",
                ("bob@example.net",),
            )
    finally:
        db.close()
    path.chmod(0o600)


def message(message_id: str, data: bytes) -> NewMessage:
    """A message for alice to bob."""
    return NewMessage(
        id=message_id,
        login="alice",
        sender="alice@example.org",
        message_id=f"<{message_id}@example.org>",
        recipients=("bob@example.net",),
        upstream_data=data,
        body_offset=0,
        sent_header=b"",
        received_at=time.time(),
    )


async def test_mail_queued_in_a_schema_1_spool_is_delivered_after_the_upgrade(
    tmp_path: Path,
) -> None:
    data = HEADER + b"\r\nQueued before the upgrade.\r\n"
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(tmp_path / "relay", {"lab": provider_for(upstream)})
        setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        spool_path = load_config(setup.config_path).spool_path
        write_schema_1_spool(spool_path, "0123456789abcdef", data)
        async with running_daemon(setup):
            await eventually(lambda: len(upstream.handler.received) == 1)
        [mail] = upstream.handler.received
        assert mail.data == data
        assert mail.recipients == ["bob@example.net"]
    db = open_database(spool_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM bodies").fetchone()[0] == 0
    finally:
        db.close()


def test_upgrade_moves_the_data_out_of_the_messages_table(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    write_schema_1_spool(path, "0123456789abcdef", HEADER + b"\r\nbody\r\n")
    db = open_database(path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
        assert "upstream_data" not in columns
        assert select_data(db, "0123456789abcdef") == HEADER + b"\r\nbody\r\n"
    finally:
        db.close()


def test_a_spool_from_a_newer_relay_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}").connection.close()
    with pytest.raises(StoreError, match="newer relay"):
        open_database(path)


@pytest.mark.parametrize("size", [2_000, 3 * 2**20 + 7])
async def test_data_of_any_size_reads_back_as_written_and_goes_with_its_message(
    tmp_path: Path, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    spool = Spool.open(tmp_path / "spool.sqlite")
    try:
        assert await spool.enqueue(message("a" * 16, data), 0.0) == "a" * 16
        assert await spool.read_data("a" * 16) == data
        await spool.remove("a" * 16)
        assert await spool.read_data("a" * 16) is None
    finally:
        spool.close()
    db = open_database(tmp_path / "spool.sqlite")
    try:
        assert db.execute("SELECT count(*) FROM bodies").fetchone()[0] == 0
    finally:
        db.close()


async def test_a_deferred_attempt_keeps_the_data_for_the_retry(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.sqlite")
    try:
        await spool.enqueue(message("b" * 16, b"Subject: s\r\n\r\nbody\r\n"), 0.0)
        deferred = {"bob@example.net": Reply(451, "4.3.0", "later")}
        attempt = AttemptRecord({}, {}, deferred, "451 4.3.0 later", time.time() + 60)
        entry = await spool.record("b" * 16, attempt)
        assert entry is not None and entry.attempts == 1 and entry.pending == ["bob@example.net"]
        assert await spool.read_data("b" * 16) == b"Subject: s\r\n\r\nbody\r\n"
    finally:
        spool.close()


def test_a_fresh_message_knows_its_queue_entry_before_any_attempt() -> None:
    fresh = message("c" * 16, b"x\r\n")
    entry = fresh.entry()
    assert (entry.id, entry.attempts, entry.pending) == ("c" * 16, 0, ["bob@example.net"])
    assert entry.next_attempt == fresh.received_at


TWO = ("bob@example.net", "carol@example.net")
LATER = Reply(451, "4.3.0", "later")
TAKEN = Reply(250, "2.0.0", "taken")


async def test_an_attempt_that_delivers_to_one_and_defers_the_other_keeps_the_mail_for_the_other(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.sqlite")
    try:
        await spool.enqueue(replace(message("d" * 16, b"x\r\n"), recipients=TWO), 0.0)
        retry_at = time.time() + 60
        attempt = AttemptRecord(
            {"bob@example.net": TAKEN}, {}, {"carol@example.net": LATER}, LATER.line, retry_at
        )
        returned = await spool.record("d" * 16, attempt)
        stored = await spool.entry("d" * 16)
    finally:
        spool.close()
    assert returned is not None and not returned.removed
    assert returned == stored  # what the attempt returns is what the spool now holds
    assert returned.recipients == {
        "bob@example.net": (RecipientState.DELIVERED, TAKEN.line),
        "carol@example.net": (RecipientState.PENDING, LATER.line),
    }
    assert (returned.attempts, returned.next_attempt, returned.last_reply) == (
        1,
        retry_at,
        LATER.line,
    )


async def test_a_mail_delivered_to_all_is_gone_and_the_users_last_delivery_and_error_are_kept(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.sqlite")
    try:
        await spool.enqueue(replace(message("e" * 16, b"x\r\n"), recipients=TWO), 0.0)
        await spool.enqueue(message("f" * 16, b"x\r\n"), 0.0)
        delivered = dict.fromkeys(TWO, TAKEN)
        before = time.time()
        done = await spool.record("e" * 16, AttemptRecord(delivered, {}, {}, TAKEN.line, 0.0))
        deferred = {"bob@example.net": LATER}
        await spool.record("f" * 16, AttemptRecord({}, {}, deferred, LATER.line, time.time() + 60))
        gone = await spool.entry("e" * 16)
    finally:
        spool.close()
    assert done is not None and done.removed and gone is None
    db = open_database(tmp_path / "spool.sqlite")
    try:
        status = select_user_status(db)["alice"]
        rows = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    finally:
        db.close()
    assert status.last_delivered_at is not None and status.last_delivered_at >= before
    assert status.last_error == LATER.line
    assert rows == 1  # the deferred mail's attempt; the delivered one's went with its mail
