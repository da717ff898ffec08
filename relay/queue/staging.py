"""A large mail's body on its way in: a nameless file in the state dir until the spool adopts it.

The body is written here while DATA arrives, so the mail is never held whole in memory; the
enqueue transaction copies it into the spool (relay.queue.statements.insert_message) in pieces.
The file is unlinked as soon as it is made, so whatever happens (a refused mail, a dropped
connection, kill -9) nothing of it outlives the process, and the runner can never see it: only a
committed spool entry is deliverable. A crash in the instant between making and unlinking it
leaves an empty file, which start-up removes (clean_incoming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from concurrent.futures import Executor
from pathlib import Path

logger = logging.getLogger(__name__)

INCOMING = "incoming"  # the staging directory, next to the spool file


class StagedBody:
    """The body of one mail being received, in an unlinked file of its own (mode 0600)."""

    def __init__(self, directory: Path, executor: Executor) -> None:
        self._executor = executor
        path = directory / secrets.token_hex(8)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Nameless from here on: the kernel frees it when the last descriptor closes.
        with contextlib.suppress(FileNotFoundError):  # clean_incoming got there first
            path.unlink()
        self.size = 0
        self.closed = False
        self.handed_over = False  # to a spool write, which closes it when it has run
        self._lock = threading.Lock()  # the spool's thread or the staging thread closes it

    async def write(self, data: bytes | bytearray) -> None:
        """Append data; the write runs on the staging thread, not the event loop."""
        if not data:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._append, data, self.size)
        self.size += len(data)

    def _append(self, data: bytes | bytearray, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to length octets from offset, read on the calling (spool) thread."""
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        """Free the file; once called, the body is gone. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        os.close(self._fd)

    def hand_over(self) -> StagedBody:
        """Mark it as the spool's from now on (enqueue adopts it); the receiver lets go."""
        self.handed_over = True
        return self

    def discard(self) -> None:
        """Free it unless the spool has it: on the staging thread, after any write under way."""
        if not self.closed and not self.handed_over:
            self._executor.submit(self.close)

    def __del__(self) -> None:
        # A body handed to a spool write that never ran (its batch failed first) is freed here.
        if not getattr(self, "closed", True):
            self.close()


def incoming_dir(spool_path: Path) -> Path:
    """Where bodies are staged: beside the spool, so adopting one never crosses a filesystem."""
    return spool_path.parent / INCOMING


def clean_incoming(spool_path: Path) -> int:
    """At start-up: make the staging directory (0700) and remove what a crash left; how many."""
    directory = incoming_dir(spool_path)
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)  # mail text: for relay's user only, whatever the umask or an old mode
    removed = 0
    for left in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            left.unlink()
            removed += 1
    if removed:
        logger.warning("spool.staging_cleaned files=%d reason=left by a crash", removed)
    return removed
