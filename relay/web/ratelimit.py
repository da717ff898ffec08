"""Password forms posted per client address: a fixed number per sliding window."""

from __future__ import annotations

import time
from collections import deque

LIMIT_WINDOW = 15 * 60.0  # seconds the count of one address looks back
TRACKED_ADDRESSES = 10_000  # past it the address heard from least recently is forgotten


class AddressLimit:
    """At most `limit` password posts per client address within LIMIT_WINDOW seconds."""

    def __init__(self, limit: int, window: float = LIMIT_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._posts: dict[str, deque[float]] = {}

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds until address may post again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        posts = self._recent(address, now)
        if len(posts) < self._limit:
            return 0.0
        return max(posts[0] + self._window - now, 1.0)

    def posted(self, address: str, now: float | None = None) -> None:
        """Count one password post from address."""
        now = time.monotonic() if now is None else now
        posts = self._recent(address, now)
        posts.append(now)
        self._posts.pop(address, None)
        self._posts[address] = posts  # most recently heard last: the first to go is the oldest
        while len(self._posts) > TRACKED_ADDRESSES:
            del self._posts[next(iter(self._posts))]

    def _recent(self, address: str, now: float) -> deque[float]:
        posts = self._posts.get(address, deque())
        while posts and posts[0] <= now - self._window:
            posts.popleft()
        return posts
