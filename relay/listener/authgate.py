"""The guard around local AUTH's slow check: one attempt per login, a cap, failure penalties.

Why it is shaped so (issue 21): a delay keyed on the client address punishes every local app,
which all share 127.0.0.1, and a delay before verifying punishes the real user whose login is
being guessed. Here only guessing pays. A right secret that a cheap check proves (a generated
secret's SHA-256, or a chosen secret that verified since relay started) never reaches the gate.
Anything else is verified in its login's single slot. While one attempt is in flight, others
on the same login wait for it (one app's connections at start-up, then proven by its success),
unless the login has recent failures; while a failure's penalty runs, every unproven attempt on
it gets 454 4.7.0 at once. So parallel connections buy no extra guesses: a login takes at most
one per penalty. A failure's reply is held for its penalty, and the penalty lives here, not in
the failed session, so disconnecting does not end it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.config.model import LimitsConfig
from relay.listener.throttle import MAX_TRACKED_KEYS, FailureCounter
from relay.policy import Admission, auth_admission, auth_delay

# Names no user has, kept apart so that random names never evict a real login's count.
MAX_UNKNOWN_KEYS = 10_000


class AuthBusy(Exception):
    """An unproven AUTH attempt refused at once (454 4.7.0) rather than verified."""


@dataclass(slots=True)
class GateStats:
    """What the gate did since start: for tests and the operator's eye."""

    verified: int = 0  # attempts that ran the full verification
    waited: int = 0  # times an attempt waited for another on the same login
    busy: int = 0  # attempts answered 454 at once
    penalised: int = 0  # failed attempts whose reply was held back


@dataclass(frozen=True, slots=True)
class Attempt:
    """One AUTH attempt as the gate sees it."""

    name: str  # the login as given
    known: bool  # whether a user has this login
    address: str | None  # the client's address, None where it is exempt (loopback)


class AuthGate:
    """Per-login slots, penalties and failure counts; shared by all sessions of a listener."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.logins = FailureCounter(MAX_TRACKED_KEYS)  # known logins: bounded by the users
        self.unknown = FailureCounter(MAX_UNKNOWN_KEYS)
        self.addresses = FailureCounter(MAX_TRACKED_KEYS)
        self._in_flight: dict[str, asyncio.Event] = {}  # login -> set when its check ends
        # Logins and addresses whose last failure's penalty runs -> set when it is over. The
        # failed session waits on the same event, so its 535 comes only once the hold is off.
        self._penalised: dict[str, asyncio.Event] = {}
        self._verifying = 0  # full checks running now
        self.stats = GateStats()

    def _bucket(self, attempt: Attempt) -> FailureCounter:
        return self.logins if attempt.known else self.unknown

    async def verify(
        self,
        attempt: Attempt,
        limits: LimitsConfig,
        proven: Callable[[], bool],
        check: Callable[[], Awaitable[bool]],
    ) -> bool:
        """Run check() in the login's one slot; raise AuthBusy when refused.

        proven() is asked again after waiting for another attempt on the same login: that one
        may have been the same app's, its success now in the verifier's cache.
        """
        while True:
            admission = self._admission(attempt, limits)
            if admission is Admission.VERIFY:
                break
            if admission is Admission.BUSY:
                self.stats.busy += 1
                raise AuthBusy(attempt.name)
            self.stats.waited += 1
            await self._in_flight[attempt.name].wait()
            if proven():
                return True
        done = asyncio.Event()
        self._in_flight[attempt.name] = done
        self._verifying += 1
        self.stats.verified += 1
        task = asyncio.ensure_future(check())

        def release(_: object = None) -> None:
            self._verifying -= 1
            del self._in_flight[attempt.name]
            done.set()

        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                release()
            else:
                # The client left mid-check: the slot stays taken until the check (a scrypt in
                # a thread, which cannot be stopped) ends, so hanging up cannot outrun the cap.
                task.add_done_callback(release)

    def _admission(self, attempt: Attempt, limits: LimitsConfig) -> Admission:
        penalised = _login_key(attempt.name) in self._penalised or (
            attempt.address is not None and _address_key(attempt.address) in self._penalised
        )
        return auth_admission(
            penalised,
            attempt.name in self._in_flight,
            self._bucket(attempt).count(attempt.name, self._clock()),
            self._verifying,
            limits.max_concurrent_auth,
        )

    def failed(self, attempt: Attempt, limits: LimitsConfig) -> Penalty:
        """Count a failure against its login and (unless exempt) its address; start its penalty."""
        now = self._clock()
        count = self._bucket(attempt).failed(attempt.name, now)
        here = 0 if attempt.address is None else self.addresses.failed(attempt.address, now)
        delay = auth_delay(
            max(count, here), limits.auth_failure_delay, limits.auth_failure_max_delay
        )
        address_key = "" if attempt.address is None else _address_key(attempt.address)
        penalty = Penalty(count, here, address_key, delay, asyncio.Event())
        if not delay:
            penalty.over.set()
            return penalty
        self.stats.penalised += 1
        keys = [key for key in (_login_key(attempt.name), address_key) if key]
        for key in keys:
            self._penalised[key] = penalty.over
        # A timer, not the session's own sleep: hanging up does not end a penalty.
        asyncio.get_running_loop().call_later(delay, self._lift, keys, penalty.over)
        return penalty

    def _lift(self, keys: list[str], over: asyncio.Event) -> None:
        for key in keys:
            if self._penalised.get(key) is over:
                del self._penalised[key]
        over.set()

    def succeeded(self, attempt: Attempt) -> None:
        """Clear the login's own count; an address's count stays, it may be guessing others."""
        # Only a success of the full check comes here (the count governs nothing else): an
        # app's routine logins, proven by the cheap check, must not reset a guesser's backoff.
        self._bucket(attempt).forget(attempt.name)


def _login_key(name: str) -> str:
    return "login:" + name


def _address_key(address: str) -> str:
    return "ip:" + address


@dataclass(frozen=True, slots=True)
class Penalty:
    """What one failure cost: the counts it raised, and its penalty (over when the event is set)."""

    login_failures: int
    address_failures: int  # 0 for an exempt (loopback) address, which has no count
    address_key: str  # "" for an exempt address
    delay: float
    over: asyncio.Event
