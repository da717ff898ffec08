"""In-memory counters behind the brute-force delay and the per-user sending rate."""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import takewhile

FAILURE_MEMORY = 15 * 60.0  # seconds a failed login keeps counting, as Dovecot's auth penalty
MAX_TRACKED_KEYS = 10_000  # bounded: random logins must not grow memory without end
DAY = 86400.0
MINUTE = 60.0


class FailureCounter:
    """Recent failed logins per key (client address, login name), oldest keys evicted first."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def count(self, key: str, now: float) -> int:
        """Failures of this key within the memory window."""
        entry = self._failures.get(key)
        if entry is None or now - entry[1] > FAILURE_MEMORY:
            return 0
        return entry[0]

    def failed(self, key: str, now: float) -> int:
        """Record one failure; the new count."""
        count = self.count(key, now) + 1
        self._failures[key] = (count, now)
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)
        return count

    def forget(self, key: str) -> None:
        """Clear a key after a successful login."""
        self._failures.pop(key, None)


class SendCounter:
    """Messages accepted per user over the last minute and day."""

    def __init__(self) -> None:
        self._sent: dict[str, deque[float]] = {}

    def counts(self, login: str, now: float) -> tuple[int, int]:
        """(last minute, last day) for a user."""
        times = self._sent.get(login)
        if not times:
            return 0, 0
        while times and now - times[0] > DAY:
            times.popleft()
        last_minute = sum(1 for _ in takewhile(lambda t: now - t <= MINUTE, reversed(times)))
        return last_minute, len(times)

    def record(self, login: str, now: float) -> None:
        """Count one accepted message."""
        self._sent.setdefault(login, deque()).append(now)
