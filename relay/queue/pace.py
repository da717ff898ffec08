"""Pacing: each user's mail goes no faster than their provider allows, so it never throttles.

The windows slide, as providers count (Exchange Online: messages in the last minute; Google:
a rolling 24 hours). A daily quota reply from the provider closes a user's window until it
should have reopened. The windows live in memory: after a restart relay counts afresh, and a
provider's quota reply then still defers the mail rather than bouncing it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.providers.presets import Pace

MINUTE = 60.0
DAY = 86400.0
# After a provider's daily-quota reply: its window rolls, so an hour later some of the day's
# sends have left it. Trying sooner would only collect the same reply.
QUOTA_PAUSE = 3600.0


@dataclass(frozen=True, slots=True)
class Wait:
    """How long until a user may send again, and why, in the words `relay status` shows."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class UserPace:
    """One user's delivery as `relay status` and the metrics show it."""

    login: str
    provider: str
    sessions: int  # upstream sessions in use now
    limit: int  # sessions they may open now (lower than the ceiling after a pushback)
    ceiling: int
    waiting_sends: int  # attempts waiting for a session
    pace: str  # the rates in force, and whose they are
    waiting: str | None  # why their mail waits now (pace or quota), or None


@dataclass
class _Window:
    sends: deque[tuple[float, int]] = field(default_factory=deque)  # (when, recipients)
    closed_until: float = 0.0  # a quota reply from the provider
    closed_by: str = ""


class Pacer:
    """Per-user sliding windows; `take` reserves a send or says how long to wait."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def take(self, login: str, pace: Pace, recipients: int) -> Wait | None:
        """Reserve one send of `recipients` now, or the wait before one fits (nothing taken)."""
        now = self._clock()
        window = self._windows.setdefault(login, _Window())
        _forget_before(window.sends, now - DAY)
        if window.closed_until > now:
            return Wait(window.closed_until - now, f"quota: {window.closed_by}")
        wait = pace_wait(window.sends, pace, recipients, now)
        if wait is not None:
            return wait
        if pace.per_minute or pace.per_day or pace.recipients_per_day:
            window.sends.append((now, recipients))
        return None

    def close(self, login: str, seconds: float, reply: str) -> None:
        """The provider said the user's quota is used up: no sends for `seconds`."""
        window = self._windows.setdefault(login, _Window())
        window.closed_until = self._clock() + seconds
        window.closed_by = reply

    def logins(self) -> set[str]:
        """Users with sends counted or a quota closed."""
        return set(self._windows)

    def waiting_reason(self, login: str, pace: Pace) -> str | None:
        """Why a user's mail waits now, or None (for `relay status`)."""
        wait = self.peek(login, pace, 1)
        return None if wait is None else f"{wait.reason}, next in {wait.seconds:.0f} s"

    def peek(self, login: str, pace: Pace, recipients: int) -> Wait | None:
        """What take would say, without reserving anything."""
        now = self._clock()
        window = self._windows.get(login)
        if window is None:
            return None
        if window.closed_until > now:
            return Wait(window.closed_until - now, f"quota: {window.closed_by}")
        return pace_wait(window.sends, pace, recipients, now)


def pace_wait(
    sends: deque[tuple[float, int]], pace: Pace, recipients: int, now: float
) -> Wait | None:
    """The wait before a send of `recipients` fits in the windows, or None if it fits now."""
    waits: list[Wait] = []
    if pace.per_minute is not None:
        recent = [at for at, _ in sends if at > now - MINUTE]
        if len(recent) >= pace.per_minute:
            at = recent[len(recent) - pace.per_minute]
            waits.append(Wait(at + MINUTE - now, f"paced: {pace.per_minute}/min"))
    if pace.per_day is not None and len(sends) >= pace.per_day:
        at = sends[len(sends) - pace.per_day][0]
        waits.append(Wait(at + DAY - now, f"paced: {pace.per_day}/day"))
    if pace.recipients_per_day is not None:
        wait = _recipients_wait(sends, pace.recipients_per_day, recipients, now)
        if wait is not None:
            waits.append(Wait(wait, f"paced: {pace.recipients_per_day} recipients/day"))
    return max(waits, key=lambda w: w.seconds) if waits else None


def _recipients_wait(
    sends: deque[tuple[float, int]], allowed: int, recipients: int, now: float
) -> float | None:
    total = sum(count for _, count in sends)
    if total + recipients <= allowed or not sends:
        return None  # a mail with more recipients than a whole day's may go into an empty day
    for at, count in sends:  # oldest first: when enough of them have left the window
        total -= count
        if total + recipients <= allowed:
            return at + DAY - now
    return sends[-1][0] + DAY - now  # a day's worth on its own: once the window is empty


def _forget_before(sends: deque[tuple[float, int]], cutoff: float) -> None:
    while sends and sends[0][0] <= cutoff:
        sends.popleft()
