"""The spool's message bodies: written whole or named as a file, read whole or in pieces.

A streamed mail's body is a file of its own (relay.queue.bodyfiles), its row holding the header.
Large bodies in rows (written by relay before spool schema 5, or held in memory) go through
incremental blob handles a piece (BLOB_CHUNK) at a time, so neither the spool's thread nor
SQLite ever holds a second copy of one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from relay.message import has_dot_line
from relay.queue.bodyfiles import BodyFileRow
from relay.queue.schema import BLOB_CHUNK
from relay.queue.staging import StagedBody


def select_data(db: sqlite3.Connection, message_id: str) -> bytes | None:
    """The stored upstream bytes."""
    row = db.execute(
        "SELECT data FROM bodies WHERE message_seq = (SELECT seq FROM messages WHERE id = ?)",
        (message_id,),
    ).fetchone()
    return None if row is None else bytes(row[0])


def insert_body(db: sqlite3.Connection, seq: int | None, data: bytes) -> None:
    """The bodies row of a mail held in memory."""
    if len(data) <= BLOB_CHUNK or seq is None:
        db.execute("INSERT INTO bodies (message_seq, data) VALUES (?, ?)", (seq, data))
        return
    # Bound as one value, SQLite would copy all of it first, and again to build the record.
    db.execute("INSERT INTO bodies (message_seq, data) VALUES (?, zeroblob(?))", (seq, len(data)))
    view = memoryview(data)
    with db.blobopen("bodies", "data", seq) as blob:
        for start in range(0, len(data), BLOB_CHUNK):
            blob.write(view[start : start + BLOB_CHUNK])


def insert_body_file(
    db: sqlite3.Connection, seq: int | None, header: bytes, body: StagedBody
) -> None:
    """The bodies row of a mail staged while it arrived: its header, naming its body file."""
    if body.name is None or seq is None:
        raise sqlite3.OperationalError("staged body not persisted, or no message row for it")
    db.execute(
        "INSERT INTO bodies (message_seq, data, file, file_size, file_dot_lines) "
        "VALUES (?, ?, ?, ?, ?)",
        (seq, header, body.name, body.size, int(body.dot_lines or has_dot_line(header))),
    )


def select_body(db: sqlite3.Connection, message_id: str, whole_below: int) -> BodyRow | None:
    """A message's body: whole if shorter than whole_below, else where to read it in pieces."""
    row = db.execute(
        "SELECT message_seq, length(data), CASE WHEN file IS NOT NULL OR length(data) < ? "
        "THEN data END, file, file_size, file_dot_lines FROM bodies "
        "WHERE message_seq = (SELECT seq FROM messages WHERE id = ?)",
        (whole_below, message_id),
    ).fetchone()
    if row is None:
        return None
    seq, size, data, file, file_size, dot_lines = row
    named = None if file is None else BodyFileRow(str(file), int(file_size), bool(dot_lines))
    return BodyRow(int(seq), int(size), None if data is None else bytes(data), named)


@dataclass(frozen=True, slots=True)
class BodyRow:
    """Where a stored body is (rowid of its table), its size, and its bytes if read whole."""

    rowid: int
    size: int
    data: bytes | None  # with file: the header, the rest being the file's
    file: BodyFileRow | None = None


def read_blob(db: sqlite3.Connection, table: str, rowid: int, offset: int, length: int) -> bytes:
    """Octets of a stored body (bodies or sent_jobs), read through an incremental blob handle."""
    with db.blobopen(table, "data", rowid, readonly=True) as blob:
        blob.seek(offset)
        return blob.read(length)
