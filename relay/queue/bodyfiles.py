"""Large bodies as files beside the spool (bodies/), as Postfix keeps its queue files.

A streamed mail's body is fsynced and linked here (relay.queue.staging) before the row that
names it commits, so SQLite never copies it, logs it in its WAL, checkpoints it or zeroes it on
delete. A row (bodies, or sent_jobs for its Sent copy) names the file and its size; the file
goes once no row names it (FileLedger.settle). What a crash leaves unnamed by any row, start-up
removes (sweep_orphans); a row whose file is missing or short is spool damage
(relay.queue.integrity), and is never delivered in part (BodyFile.read).

Unlinked, a body's blocks are free space of the filesystem, as Postfix's are: unlike SQLite's
secure_delete, nothing overwrites them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from relay.errors import StoreError
from relay.queue.staging import private_directory_swept

logger = logging.getLogger(__name__)

BODIES = "bodies"  # the directory of body files, next to the spool file
# Every row that names a body file: the message's own, and its pending Sent copy.
_REFERENCES = (
    "SELECT file, file_size FROM bodies WHERE file IS NOT NULL "
    "UNION ALL SELECT file, file_size FROM sent_jobs WHERE file IS NOT NULL"
)
# The names relay gives (StagedBody.persist): a row naming anything else is never followed.
_NAME = re.compile(r"[0-9a-f]{32}")
_RELEASED = "relay_body_file_released"
_TRIGGERS = tuple(
    f"CREATE TEMP TRIGGER IF NOT EXISTS {table}_file_released AFTER DELETE ON main.{table} "
    f"WHEN OLD.file IS NOT NULL BEGIN SELECT {_RELEASED}(OLD.file); END"
    for table in ("bodies", "sent_jobs")
)


def bodies_dir(spool_path: Path) -> Path:
    """Where body files are kept: beside the spool and the staging directory, one filesystem."""
    return spool_path.parent / BODIES


class FileLedger:
    """Which body files a connection's deletes let go of, and unlinking the unreferenced ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._released: set[str] = set()

    def attach(self, db: sqlite3.Connection) -> None:
        """Note every file a deleted row named (cascades included), on this connection only."""
        db.create_function(_RELEASED, 1, self.release)
        for trigger in _TRIGGERS:
            db.execute(trigger)

    def release(self, name: object) -> None:
        """A row naming this file went (or a new one may not have committed)."""
        if isinstance(name, str) and _NAME.fullmatch(name):
            self._released.add(name)

    def settle(self, db: sqlite3.Connection) -> int:
        """Unlink each released file no row names now (after commit or rollback); how many."""
        if not self._released:
            return 0
        names, self._released = self._released, set()
        named = {
            str(row[0])
            for row in db.execute(
                "SELECT file FROM bodies WHERE file IN (SELECT value FROM json_each(?)) UNION "
                "SELECT file FROM sent_jobs WHERE file IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(names)),) * 2,
            )
        }
        removed = 0
        for name in names - named:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
                removed += 1
        return removed


def sweep_orphans(db: sqlite3.Connection, directory: Path) -> int:
    """At start-up: make bodies/ (0700) and remove files no row names (a crash left them)."""
    named = {str(row[0]) for row in db.execute(_REFERENCES)}
    removed = private_directory_swept(directory, named)
    if removed:
        logger.warning("spool.body_files_cleaned files=%d reason=named by no entry", removed)
    return removed


def damaged_files(db: sqlite3.Connection, directory: Path) -> list[str]:
    """What is wrong with the body files rows name: missing, or not the size committed."""
    problems = []
    for name, size in db.execute(_REFERENCES):
        try:
            found = (directory / str(name)).stat().st_size
        except FileNotFoundError:
            problems.append(f"{BODIES}/{name}: missing")
            continue
        if found != size:
            problems.append(f"{BODIES}/{name}: {found} bytes, {size} committed")
    return problems


@dataclass(frozen=True, slots=True)
class BodyFileRow:
    """A body file as a row names it."""

    name: str
    size: int
    dot_lines: bool = True  # whether a line of the whole data may start with a dot


@dataclass(frozen=True, slots=True)
class BodyFile:
    """A stored message (relay.message.SpooledData): a header in the row, then a body file."""

    head: bytes = field(repr=False)
    path: Path
    file_size: int
    executor: Executor = field(repr=False, compare=False)
    dot_lines: bool = True  # False: no line starts with a dot, so DATA sends it as it is

    @property
    def size(self) -> int:
        """Octets in all."""
        return len(self.head) + self.file_size

    async def read(self, offset: int, length: int) -> bytes:
        """Up to length octets from offset; StoreError if the file went or is short."""
        head = self.head[offset : offset + length]
        rest = length - len(head)
        if rest <= 0:
            return head
        start = max(0, offset - len(self.head))
        wanted = min(rest, self.file_size - start)
        if wanted <= 0:
            return head
        loop = asyncio.get_running_loop()
        piece = await loop.run_in_executor(self.executor, _read_file, self.path, start, wanted)
        if len(piece) != wanted:
            # Never a partial mail: a short file is damage, and the attempt stops here.
            raise StoreError(f"body file {self.path.name} is shorter than committed")
        return head + piece if head else piece


def _read_file(path: Path, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StoreError(f"body file {path.name} is gone") from None
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def body_path(directory: Path, name: str) -> Path:
    """The file a row names; StoreError for a name relay would not have given."""
    if not _NAME.fullmatch(name):
        raise StoreError("a spool row names a body file relay did not make")
    return directory / name
