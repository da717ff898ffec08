"""A large mail's body on its way in: a nameless file in the state dir until the spool adopts it.

The body is written here while DATA arrives, so the mail is never held whole in memory. The file
has no name (O_TMPFILE) until enqueue fsyncs it and links it into the spool's body files
(relay.queue.bodyfiles), so whatever happens before (a refused mail, a dropped connection,
kill -9) nothing of it outlives the process, and the runner can never see it: only a committed
spool entry is deliverable. Where O_TMPFILE is not supported, the file is made with a name in
incoming/ and renamed on adoption; what a crash leaves there, start-up removes (clean_incoming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Collection
from concurrent.futures import Executor
from pathlib import Path

logger = logging.getLogger(__name__)

INCOMING = "incoming"  # the staging directory, next to the spool file


class StagedBody:
    """The body of one mail being received, in an unlinked file of its own (mode 0600)."""

    def __init__(self, directory: Path, executor: Executor) -> None:
        self._executor = executor
        self._fd, self._path = _make_file(directory)
        self.size = 0
        self.name: str | None = None  # its name among the body files, once persisted
        self.dot_lines = True  # False once the reader saw no line start with a dot
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

    async def persist(self, bodies: Path) -> str:
        """Make the body durable under a new name in bodies (file and directory fsynced)."""
        loop = asyncio.get_running_loop()
        name = secrets.token_hex(16)
        await loop.run_in_executor(self._executor, self._link, bodies, name)
        self.name = name
        return name

    def _link(self, bodies: Path, name: str) -> None:
        os.fsync(self._fd)
        directory = os.open(bodies, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if self._path is None:
                # linkat(AT_SYMLINK_FOLLOW) through /proc names the O_TMPFILE file: passing
                # dir fds makes os.link call linkat rather than link, which would not follow.
                os.link(
                    f"/proc/self/fd/{self._fd}",
                    name,
                    src_dir_fd=directory,
                    dst_dir_fd=directory,
                    follow_symlinks=True,
                )
            else:
                os.rename(self._path, bodies / name)
                self._path = None
            os.fsync(directory)  # the new name is durable before the row that refers to it
        finally:
            os.close(directory)

    def close(self) -> None:
        """Free the file; once called, the body is gone unless persisted. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        os.close(self._fd)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):  # clean_incoming got there first
                self._path.unlink()

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


def _make_file(directory: Path) -> tuple[int, Path | None]:
    """A new file in directory (0600): nameless where O_TMPFILE works, else its path."""
    with contextlib.suppress(OSError, AttributeError):  # EOPNOTSUPP, EISDIR: not on this fs
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), None
    path = directory / secrets.token_hex(8)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path


def incoming_dir(spool_path: Path) -> Path:
    """Where bodies are staged: beside the spool, so adopting one never crosses a filesystem."""
    return spool_path.parent / INCOMING


def clean_incoming(spool_path: Path) -> int:
    """At start-up: make the staging directory (0700) and remove what a crash left; how many."""
    removed = private_directory_swept(incoming_dir(spool_path))
    if removed:
        logger.warning("spool.staging_cleaned files=%d reason=left by a crash", removed)
    return removed


def private_directory_swept(directory: Path, keep: Collection[str] = ()) -> int:
    """Make directory (0700) and remove each file in it not named in keep; how many went."""
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)  # mail text: for relay's user only, whatever the umask or an old mode
    removed = 0
    for left in directory.iterdir():
        if left.name not in keep and left.is_file():
            with contextlib.suppress(FileNotFoundError):
                left.unlink()
                removed += 1
    return removed
