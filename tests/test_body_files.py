"""Large bodies as files beside the spool: durable before 250, shared with Sent, never left."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.message import STREAM_THRESHOLD, whole
from relay.queue.admin import open_queue_admin
from relay.queue.bodyfiles import bodies_dir
from relay.queue.integrity import check_spool
from relay.queue.records import AttemptRecord, NewMessage
from relay.queue.sentjobs import SentJobSpec
from relay.queue.spool import Spool
from relay.queue.staging import incoming_dir
from relay.reply import Reply

HEADER = b"From: alice@example.org\r\nSubject: big\r\n"
SENT_HEADER = HEADER + b"Bcc: carol@example.net\r\n"
MARKER = b"Okapi-Narwhal-41c9 quarterly figures"
BODY = b"\r\n" + (MARKER + b"\r\n") * (3 * STREAM_THRESHOLD // len(MARKER))
DELIVERED = {"bob@example.net": Reply(250, "2.0.0", "ok")}


async def large_message(spool: Spool, queue_id: str, message_id: str = "<big@x>") -> NewMessage:
    """A message whose body was staged as it arrived, as the listener hands it over."""
    staged = spool.stage()
    for start in range(0, len(BODY), 300_000):
        await staged.write(BODY[start : start + 300_000])
    return NewMessage(
        id=queue_id,
        login="alice",
        sender="alice@example.org",
        message_id=message_id,
        recipients=("bob@example.net",),
        upstream_data=HEADER,
        body_offset=len(HEADER),
        sent_header=SENT_HEADER,
        received_at=time.time(),
        fingerprint=f"fp-{message_id}",
        staged=staged.hand_over(),
    )


def body_files(spool: Spool) -> list[str]:
    """The names in bodies/."""
    return sorted(path.name for path in bodies_dir(spool.path).iterdir())


def spool_bytes(spool: Spool) -> bytes:
    """spool.db and its WAL as they are on disk."""
    wal = spool.path.with_name("spool.db-wal")
    return spool.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_a_streamed_body_is_a_file_named_by_its_row_and_not_in_sqlite(spool: Spool) -> None:
    assert await spool.enqueue(await large_message(spool, "a" * 16), 60.0) == "a" * 16
    [name] = body_files(spool)
    assert (bodies_dir(spool.path) / name).read_bytes() == BODY
    assert MARKER not in spool_bytes(spool)  # neither copied into the database nor its log
    assert bodies_dir(spool.path).stat().st_mode & 0o777 == 0o700
    data = await spool.open_data("a" * 16)
    assert data is not None and not isinstance(data, bytes)
    assert await whole(data) == HEADER + BODY
    assert await spool.read_data("a" * 16) == HEADER + BODY  # a DSN with RET=FULL quotes it whole


async def test_the_file_goes_once_the_mail_and_its_sent_copy_are_both_done(spool: Spool) -> None:
    await spool.enqueue(await large_message(spool, "a" * 16), 60.0)
    record = AttemptRecord(DELIVERED, {}, {}, "250 ok", 0.0, sent_job=SentJobSpec("j" * 16, "x"))
    entry = await spool.record("a" * 16, record)
    assert entry is not None and entry.removed
    assert len(body_files(spool)) == 1  # the Sent copy shares it: nothing was copied
    job = await spool.sent_job("j" * 16)
    assert job is not None and not isinstance(job.data, bytes)
    assert await whole(job.data) == SENT_HEADER + BODY
    await spool.sent_job_done("j" * 16)
    assert body_files(spool) == []


async def test_a_duplicate_large_mail_leaves_no_file(spool: Spool) -> None:
    assert await spool.enqueue(await large_message(spool, "a" * 16), 60.0) == "a" * 16
    assert await spool.enqueue(await large_message(spool, "b" * 16), 60.0) is None
    assert len(body_files(spool)) == 1


async def test_a_crash_after_the_file_is_written_but_before_its_row_commits_leaves_nothing(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    try:
        staged = spool.stage()
        await staged.write(BODY)
        await staged.persist(bodies_dir(spool.path))  # durable under its name; no row yet
        staged.close()
        assert len(body_files(spool)) == 1
    finally:
        spool.close()
    Spool.open(tmp_path / "spool.db").close()  # the restart
    assert list(bodies_dir(tmp_path / "spool.db").iterdir()) == []


async def test_a_dropped_large_mail_takes_its_file_with_it(spool: Spool) -> None:
    await spool.enqueue(await large_message(spool, "a" * 16), 60.0)
    with open_queue_admin(spool.path) as queue:  # `relay queue drop`, beside the daemon
        assert queue.drop("a" * 16)
    assert body_files(spool) == []


async def test_a_row_whose_file_is_missing_is_damage_and_never_sent_in_part(
    spool: Spool,
) -> None:
    await spool.enqueue(await large_message(spool, "a" * 16), 60.0)
    [name] = body_files(spool)
    path = bodies_dir(spool.path) / name
    data = await spool.open_data("a" * 16)
    assert data is not None and not isinstance(data, bytes)
    os.truncate(path, STREAM_THRESHOLD // 2)
    with pytest.raises(StoreError, match="shorter"):
        await whole(data)
    damage = check_spool(spool.path)
    assert damage is not None and f"bodies/{name}" in damage.findings[0]
    path.unlink()
    with pytest.raises(StoreError, match="gone"):
        await data.read(len(HEADER), 10)
    damage = check_spool(spool.path)
    assert damage is not None and damage.findings == (f"bodies/{name}: missing",)


async def test_staging_without_o_tmpfile_renames_its_file_and_leaves_no_name_behind(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE")
    message = await large_message(spool, "a" * 16)
    assert len(list(incoming_dir(spool.path).iterdir())) == 1  # named while it arrives
    await spool.enqueue(message, 60.0)
    assert list(incoming_dir(spool.path).iterdir()) == []
    assert len(body_files(spool)) == 1
    data = await spool.open_data("a" * 16)
    assert data is not None and await whole(data) == HEADER + BODY


def test_a_schema_4_spool_gains_the_body_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool.open(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE bodies DROP COLUMN file_dot_lines")
    db.execute("ALTER TABLE bodies DROP COLUMN file_size")
    db.execute("ALTER TABLE bodies DROP COLUMN file")
    db.execute("ALTER TABLE sent_jobs DROP COLUMN file_size")
    db.execute("ALTER TABLE sent_jobs DROP COLUMN file")
    db.execute("PRAGMA user_version = 4")
    db.close()
    Spool.open(path).close()
    db = sqlite3.connect(path)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(sent_jobs)")}
        assert {"file", "file_size"} <= columns
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    finally:
        db.close()
