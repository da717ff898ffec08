"""The spool's start-up check: a damaged write-ahead log or database is reported, not ignored.

SQLite reads a WAL only up to its last frame that checks out and silently ignores the rest, so
a log cut short or overwritten after a crash would lose the mail in it without a word. Before
the spool is opened (opening would reset such a log), this reads the log's header and frames
(https://sqlite.org/fileformat.html#the_write_ahead_log) and compares them with what the
wal-index says was committed; then SQLite's quick_check runs on the database itself, and each
body file a row names (relay.queue.bodyfiles) must be there at the size committed.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from relay.errors import SpoolDamaged
from relay.queue.bodyfiles import bodies_dir, damaged_files

logger = logging.getLogger("relay.daemon")  # where the start-up lines have always come from

WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit says the checksums' byte order
WAL_VERSION = 3007000
WAL_HEADER = 32
FRAME_HEADER = 24
INDEX_HEADER = 48  # the wal-index (-shm) starts with two copies of a 48-byte header
INDEX_VERSION = 3007000


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """What the start-up check found wrong with the spool, and what is still readable."""

    findings: tuple[str, ...]
    readable_entries: int | None  # None when the database could not be read at all

    def report(self, path: Path) -> str:
        """The operator's message: what was found, how much is readable, what to do."""
        readable = (
            "the database cannot be read"
            if self.readable_entries is None
            else f"{self.readable_entries} queued entries are readable"
        )
        return (
            f"spool {path} is damaged: {'; '.join(self.findings)}; {readable}. Keep a copy of "
            f"{path.name}, {path.name}-wal and {path.name}-shm before anything else; then "
            "`relay serve --accept-damaged-spool` starts with what is readable (the damaged "
            "log is kept beside it)."
        )


@dataclass(frozen=True, slots=True)
class _WalScan:
    committed: int  # frames that check out, up to and including the last commit frame
    salts: tuple[int, int]


def check_spool(path: Path) -> SpoolDamage | None:
    """None for a sound spool (or none yet); else what is wrong with it."""
    if not path.exists():
        return None
    findings = _wal_findings(path)
    if findings:
        # Any connection rewrites the wal-index to match the damaged log, which would hide
        # the damage from the next check: look at a copy of the files instead.
        with tempfile.TemporaryDirectory(prefix="relay-spool-check-") as scratch:
            copy = Path(scratch) / path.name
            for suffix in ("", "-wal"):
                shutil.copyfile(_sibling(path, suffix), _sibling(copy, suffix))
            readable, problems = _database_findings(copy, bodies_dir(path))
    else:
        readable, problems = _database_findings(path, bodies_dir(path))
    findings += problems
    return SpoolDamage(tuple(findings), readable) if findings else None


def keep_damaged_log(path: Path) -> Path | None:
    """Copy the WAL aside (0600) before SQLite resets it; where the copy is, if there was one."""
    wal = _sibling(path, "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return None
    kept = wal.with_name(f"{wal.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copyfile(wal, kept)
    kept.chmod(0o600)
    return kept


def _wal_findings(path: Path) -> list[str]:
    wal = _sibling(path, "-wal")
    try:
        log = wal.read_bytes()
    except FileNotFoundError:
        return []
    if len(log) <= WAL_HEADER:
        return []  # reset after a checkpoint, or begun and never written to: nothing in it
    scan = _scan_wal(log)
    if scan is None:
        return [f"{wal.name}: its header is damaged, so SQLite would ignore all {len(log)} bytes"]
    # A tail that does not check out is normal (a transaction cut short by a crash was never
    # committed, and a reset log keeps an older generation's frames after its own); what is
    # not normal is fewer readable frames than the wal-index says were committed.
    committed = _index_committed(_sibling(path, "-shm"), scan.salts)
    if committed is not None and committed > scan.committed:
        return [
            f"{wal.name}: the wal-index says {committed} frames were committed, but only "
            f"{scan.committed} can be read (the log was cut or overwritten)"
        ]
    return []


def _scan_wal(log: bytes) -> _WalScan | None:
    """The frames of a WAL that check out, or None when its header does not."""
    if len(log) < WAL_HEADER:
        return None
    magic, version, page_size, _, salt1, salt2, sum1, sum2 = struct.unpack(">8I", log[:32])
    if magic not in WAL_MAGIC or version != WAL_VERSION or not _valid_page_size(page_size):
        return None
    big_endian = magic & 1 == 1
    sums = _checksum(log[:24], (0, 0), big_endian)
    if sums != (sum1, sum2):
        return None
    frames = committed = 0
    offset = WAL_HEADER
    size = FRAME_HEADER + page_size
    while offset + size <= len(log):
        page, db_size, f_salt1, f_salt2, f_sum1, f_sum2 = struct.unpack(
            ">6I", log[offset : offset + FRAME_HEADER]
        )
        if (f_salt1, f_salt2) != (salt1, salt2) or page == 0:
            break
        sums = _checksum(log[offset : offset + 8], sums, big_endian)
        sums = _checksum(log[offset + FRAME_HEADER : offset + size], sums, big_endian)
        if sums != (f_sum1, f_sum2):
            break
        frames += 1
        if db_size:
            committed = frames
        offset += size
    return _WalScan(committed, (salt1, salt2))


def _checksum(data: bytes, sums: tuple[int, int], big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum, continued from sums over data (a multiple of 8 bytes)."""
    s0, s1 = sums
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for index in range(0, len(words), 2):
        s0 = (s0 + words[index] + s1) & mask
        s1 = (s1 + words[index + 1] + s0) & mask
    return s0, s1


def _index_committed(shm: Path, salts: tuple[int, int]) -> int | None:
    """The committed frame count the wal-index (-shm) records for this log, if it has one."""
    try:
        with shm.open("rb") as handle:
            header = handle.read(2 * INDEX_HEADER)
    except FileNotFoundError:
        return None
    if len(header) < 2 * INDEX_HEADER or header[:INDEX_HEADER] != header[INDEX_HEADER:]:
        return None  # being rewritten, or never written: nothing to compare with
    # The wal-index is in the machine's own byte order (it is shared memory, never copied).
    order = "<" if sys.byteorder == "little" else ">"
    version, _, _, is_init, _, _, max_frame = struct.unpack(f"{order}IIIBBHI", header[:20])
    index_salts = struct.unpack(f"{order}2I", header[32:40])
    if version != INDEX_VERSION or not is_init:
        return None
    # The index keeps the salts as the log header's bytes, read as native words.
    log_salts = struct.unpack(f"{order}2I", struct.pack(">2I", *salts))
    if index_salts != log_salts:
        return None  # it describes an older generation of the log
    return int(max_frame)


def _database_findings(path: Path, bodies: Path) -> tuple[int | None, list[str]]:
    """(readable entries, problems) from SQLite's quick_check on a read-only connection."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as error:
        return None, [f"{path.name}: cannot be opened: {error}"]
    try:
        rows = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        problems = [] if rows == ["ok"] else [f"{path.name}: quick_check: {r}" for r in rows[:5]]
        problems += _body_file_findings(db, bodies)
        try:
            readable = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            readable = None
        return readable, problems
    except sqlite3.Error as error:
        return None, [f"{path.name}: {error}"]
    finally:
        db.close()


def _body_file_findings(db: sqlite3.Connection, directory: Path) -> list[str]:
    """Entries whose body file is missing or short: never delivered in part, so reported."""
    try:
        found = damaged_files(db, directory)
    except sqlite3.OperationalError:
        return []  # a spool older than schema 5 names no body files
    if len(found) > 5:
        found = [*found[:5], f"and {len(found) - 5} more body files"]
    return found


def _valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def verify_spool(path: Path, accept_damaged: bool) -> None:
    """Refuse to start on a damaged spool, unless told to; then keep its log aside first."""
    damage = check_spool(path)
    if damage is None:
        return
    if not accept_damaged:
        raise SpoolDamaged(damage.report(path))
    kept = keep_damaged_log(path)
    logger.error(
        "spool.damaged %s (starting anyway, as told; damaged log kept at %s)",
        "; ".join(damage.findings),
        kept or "-",
    )
