"""How many sessions one user holds at a provider: as many as their mail needs, up to a ceiling.

Postfix's destination concurrency, per user: relay starts with a few sessions, opens one more
for each mail that goes through while other mail waits (slow start), never more than the
ceiling, and one fewer than it had when the provider pushes back ("too many connections", a
login rate limit); after that it grows again only slowly.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import QuotaExceeded, UpstreamError

START = 4  # sessions a user may open at once before any has delivered
RECOVERY = 60.0  # after a pushback, one more session per this many seconds of clean sending
# Replies that mean "fewer at once, please", not "this mail is wrong": 421 closes the channel
# (RFC 5321 §3.8), X.4.5 is congestion and X.3.2 "not accepting messages" (RFC 3463); a
# 4.7.x names a rate or concurrency limit in its text (Gmail's 454 4.7.0 "Too many login
# attempts", Microsoft's 4.7.500 "Server busy").
_CONGESTION = ("4.4.5", "4.3.2")
_LOAD_WORDS = re.compile(r"too many|rate|throttl|concurren|busy|limit", re.IGNORECASE)


def is_pushback(error: UpstreamError) -> bool:
    """Whether a provider's reply asks relay to open fewer sessions."""
    if isinstance(error, QuotaExceeded):
        return False  # fewer sessions would not help: the day's quota is used up
    if error.code == 421:
        return True
    if not 400 <= error.code < 500:
        return False
    if error.enhanced in _CONGESTION:
        return True
    return error.enhanced.startswith("4.7.") and bool(_LOAD_WORDS.search(error.text))


@dataclass(frozen=True, slots=True)
class SessionUse:
    """A user's sessions at one provider as `relay status` shows them."""

    in_use: int
    limit: int
    ceiling: int
    waiting: int
    pushed_back: bool  # the limit is below the ceiling because the provider pushed back


class SessionLimit:
    """A semaphore whose size follows demand between 1 and a ceiling."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self.limit = min(START, ceiling)
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._pushed_at: float | None = None
        self._grown_at = 0.0

    @property
    def waiting(self) -> int:
        """Sends waiting for a session."""
        return sum(not waiter.done() for waiter in self._waiters)

    def use(self) -> SessionUse:
        """The figures for status and metrics."""
        return SessionUse(
            self.in_use, self.limit, self.ceiling, self.waiting, self._pushed_at is not None
        )

    def set_ceiling(self, ceiling: int) -> None:
        """A reload may change the ceiling; the limit never stays above it."""
        self.ceiling = ceiling
        self.limit = min(self.limit, ceiling)
        self._wake()

    async def acquire(self) -> None:
        """Wait for a session slot."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake()  # the waiters ahead may all have given up
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: hand the slot on
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.in_use -= 1
        self._wake()

    def delivered(self) -> None:
        """A mail went through: with mail waiting, allow one more session."""
        if not self.waiting or self.limit >= self.ceiling:
            return
        now = self._clock()
        if self._pushed_at is not None and now - max(self._pushed_at, self._grown_at) < RECOVERY:
            return
        self.limit += 1
        self._grown_at = now
        if self.limit >= self.ceiling:
            self._pushed_at = None
        self._wake()

    def pushed_back(self) -> None:
        """The provider refused a session or mail for load: one fewer than were open."""
        # The refused send still holds its slot: the others are what the provider allowed.
        self.limit = max(1, min(self.limit, self.in_use) - 1)
        self._pushed_at = self._clock()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.in_use += 1
            waiter.set_result(None)
