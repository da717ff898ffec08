"""In-memory counters behind the brute-force delay and the per-user sending rate."""

from __future__ import annotations

from collections import OrderedDict, deque

FAILURE_MEMORY = 15 * 60.0  # seconds a failed login keeps counting, as Dovecot's auth penalty
MAX_TRACKED_KEYS = 10_000  # bounded: random logins must not grow memory without end
DAY = 86400.0
MINUTE = 60.0


class FailureCounter:
    """Recent failed logins per key, oldest keys evicted first once capacity is reached."""

    def __init__(self, capacity: int = MAX_TRACKED_KEYS) -> None:
        self._capacity = capacity
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
        while len(self._failures) > self._capacity:
            self._failures.popitem(last=False)
        return count

    def forget(self, key: str) -> None:
        """Clear a key after a successful login."""
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


class SendCounter:
    """Messages accepted per user over the last minute and day, in one-minute buckets."""

    def __init__(self) -> None:
        # Per user: (minute number, count) pairs, oldest first; at most a day's worth.
        self._buckets: dict[str, deque[list[int]]] = {}

    def counts(self, login: str, now: float) -> tuple[int, int]:
        """(last minute, last day) for a user."""
        buckets = self._buckets.get(login)
        if not buckets:
            return 0, 0
        minute = int(now // MINUTE)
        while buckets and minute - buckets[0][0] >= DAY // MINUTE:
            buckets.popleft()
        last_minute = buckets[-1][1] if buckets and buckets[-1][0] == minute else 0
        return last_minute, sum(count for _, count in buckets)

    def record(self, login: str, now: float) -> None:
        """Count one accepted message."""
        minute = int(now // MINUTE)
        buckets = self._buckets.setdefault(login, deque())
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += 1
        else:
            buckets.append([minute, 1])
