"""Browser sessions (cookie, CSRF token, pending sign-in) and the failed-attempt delays."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from relay.model import Secret
from relay.oauth.client import Pkce
from relay.oauth.devicepoll import DevicePoll
from relay.web.outcome import Outcome

SESSION_IDLE = 30 * 60.0  # seconds without a request before a session ends
SESSION_LIFETIME = 4 * 3600.0
SESSION_LIMIT = 10_000  # past it the oldest sessions go first: memory stays bounded
SIGN_IN_LIFETIME = 10 * 60.0  # RFC 6749 §4.1.2 recommends codes of ten minutes at most
FREE_FAILURES = 3  # failed tests per login before each next one waits
MAX_DELAY = 300.0
TRACKED_FAILURES = 10_000  # keys counted at once; sign-in keys are typed addresses, so bounded


@dataclass(slots=True)
class PendingSignIn:
    """An OAuth2 authorization request this browser started: its state and PKCE verifier."""

    state: Secret = field(repr=False)
    pkce: Pkce
    redirect_uri: str
    started: float
    provider: str | None = None  # a returning user's sign-in at this provider; None: enrolling


@dataclass(slots=True)
class BrowserSession:
    """One browser's visit; bound to a login once a link was redeemed or the mailbox proven."""

    csrf: Secret = field(repr=False)
    created: float
    seen: float
    login: str | None = None
    sign_in: PendingSignIn | None = None
    notice: tuple[str, dict[str, str]] | None = None  # a catalogue key shown once, and fields
    outcome: Outcome | None = None  # the last Test's, until the next page shows it once
    device: DevicePoll | None = None  # a sign-in with a code this browser waits for

    def csrf_matches(self, offered: str) -> bool:
        """Whether a form carried this session's CSRF token (compared in constant time)."""
        return hmac.compare_digest(offered.encode(), self.csrf.reveal().encode())


class Sessions:
    """The open sessions, by the SHA-256 of their cookie: a memory dump holds no cookie."""

    def __init__(self, idle: float = SESSION_IDLE, lifetime: float = SESSION_LIFETIME) -> None:
        self._idle = idle
        self._lifetime = lifetime
        self._open: dict[str, BrowserSession] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, cookie: str | None, now: float | None = None) -> BrowserSession | None:
        """The live session of a cookie value, its last use now; None if there is none."""
        if not cookie:
            return None
        now = time.time() if now is None else now
        key = _key(cookie)
        session = self._open.get(key)
        if session is None:
            return None
        if now - session.seen > self._idle or now - session.created > self._lifetime:
            del self._open[key]
            return None
        session.seen = now
        return session

    def new(self, now: float | None = None) -> tuple[Secret, BrowserSession]:
        """A fresh anonymous session and its cookie value."""
        now = time.time() if now is None else now
        self._expire(now)
        cookie = Secret(secrets.token_urlsafe(32))
        session = BrowserSession(Secret(secrets.token_urlsafe(32)), now, now)
        self._open[_key(cookie.reveal())] = session
        return cookie, session

    def rotate(self, cookie: str, session: BrowserSession) -> Secret:
        """A new cookie and CSRF token for session, whose old cookie stops working."""
        # Done when the session gains a login, so a cookie planted before cannot ride on it.
        self._open.pop(_key(cookie), None)
        fresh = Secret(secrets.token_urlsafe(32))
        session.csrf = Secret(secrets.token_urlsafe(32))
        self._open[_key(fresh.reveal())] = session
        return fresh

    def _expire(self, now: float) -> None:
        stale = [
            key
            for key, s in self._open.items()
            if now - s.seen > self._idle or now - s.created > self._lifetime
        ]
        for key in stale:
            del self._open[key]
        while len(self._open) >= SESSION_LIMIT:
            del self._open[min(self._open, key=lambda k: self._open[k].seen)]


class Attempts:
    """Failed tests per login: the first few are free, then each waits twice as long."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}

    def wait(self, login: str, now: float | None = None) -> float:
        """Seconds before login may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        count, last = self._failures.get(login, (0, 0.0))
        if count < FREE_FAILURES:
            return 0.0
        delay = min(2.0 ** (count - FREE_FAILURES + 1), MAX_DELAY)
        return max(0.0, last + delay - now)

    def failed(self, login: str, now: float | None = None) -> None:
        """Count a failed test of login."""
        now = time.monotonic() if now is None else now
        count, _ = self._failures.pop(login, (0, 0.0))
        self._failures[login] = (count + 1, now)  # latest last: the first to go is the oldest
        while len(self._failures) > TRACKED_FAILURES:
            del self._failures[next(iter(self._failures))]

    def passed(self, login: str) -> None:
        """A passing test starts the count afresh."""
        self._failures.pop(login, None)


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()
