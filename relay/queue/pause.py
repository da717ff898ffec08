"""When the spool cannot be written: delivery pauses, and what happened waits in memory.

A write the spool refuses (a full disk, an I/O error) must not turn into a loop that sends the
same mail again and again: the outcome of an attempt that could not be written is kept here and
written first when the spool takes writes again, and mail with such an outcome, or with a
backoff that could not be written, is not tried again by this process before its time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.queue.records import AttemptRecord

logger = logging.getLogger("relay.runner")  # the name shows in log lines: kept from 0.1

# New mail stops at the configured reserve; delivery, whose writes are small, only at a quarter
# of it, so the queue keeps draining while the disk fills, but no attempt starts whose outcome
# may have nowhere to go.
DELIVERY_RESERVE_SHARE = 0.25
# How old a reading of the free space may be. statvfs for every mail was 2% of relay's CPU;
# what is accepted between two readings is counted off the last one, so a burst of mail still
# stops at the reserve.
FREE_SPACE_REFRESH = 0.5


class FreeSpace:
    """Free bytes on the spool's file system, read at most every FREE_SPACE_REFRESH seconds."""

    def __init__(self, directory: Path, refresh: float = FREE_SPACE_REFRESH) -> None:
        self._directory = directory
        self._refresh = refresh
        self._free = 0
        self._read_at = -refresh

    def free(self) -> int:
        """Free bytes: the last reading, less what was taken since."""
        now = time.monotonic()
        if now - self._read_at >= self._refresh:
            self._free = shutil.disk_usage(self._directory).free
            self._read_at = now
        return self._free

    def room_for(self, size: int, reserve: int) -> bool:
        """Whether size bytes fit above reserve; if they do, they count as taken."""
        if self.free() - size < reserve:
            return False
        self._free -= size
        return True


@dataclass(frozen=True, slots=True)
class PauseState:
    """Whether delivery is paused, since when and why (for `relay status`)."""

    since: float | None = None
    reason: str = ""


class SpoolPause:
    """The pause switch, the outcomes waiting to be written, and backoffs kept in memory."""

    def __init__(self, spool_dir: Path, on_change: Callable[[PauseState], None]) -> None:
        self._spool_dir = spool_dir
        self.space = FreeSpace(spool_dir)
        self.on_change = on_change
        self.state = PauseState()
        # Outcomes in the order they happened; written before any new attempt once possible.
        self.unwritten: dict[str, AttemptRecord] = {}
        self._held: dict[str, float] = {}  # queue or job id -> not before this time

    @property
    def paused(self) -> bool:
        """Whether delivery is paused now."""
        return self.state.since is not None

    def begin(self, reason: str) -> None:
        """Pause delivery; logged once, however often it is asked while paused."""
        if self.paused:
            return
        self.state = PauseState(time.time(), reason)
        logger.error(
            "queue.paused reason=%s (new mail gets 452 4.3.1 until the spool can be written)",
            reason,
        )
        self.on_change(self.state)

    def end(self) -> None:
        """Resume delivery, with one log line saying for how long it was paused."""
        since = self.state.since
        if since is None:
            return
        self.state = PauseState()
        logger.warning("queue.resumed paused_for=%.0fs", time.time() - since)
        self.on_change(self.state)

    def disk_low(self, min_free_bytes: int) -> str | None:
        """Why delivery should not start an attempt now, or None when the disk has room."""
        reserve = int(min_free_bytes * DELIVERY_RESERVE_SHARE)
        free = self.space.free()
        if free >= reserve:
            return None
        return f"disk low: {free} bytes free on {self._spool_dir}, delivery needs {reserve}"

    def hold(self, item_id: str, until: float) -> None:
        """Keep an item from being tried before until (its backoff could not be written)."""
        self._held[item_id] = until

    def blocks(self, item_id: str, now: float) -> bool:
        """Whether this process must not try the item now."""
        if item_id in self.unwritten:
            return True  # its outcome is known; sending it again could only duplicate it
        until = self._held.get(item_id)
        if until is None:
            return False
        if until <= now:
            del self._held[item_id]
            return False
        return True

    def forget(self, item_id: str) -> None:
        """Drop what is held for an item whose outcome has now been written."""
        self.unwritten.pop(item_id, None)
        self._held.pop(item_id, None)
