"""The pages' brute-force limits: per client address, per login, with bounded memory."""

from __future__ import annotations

import pytest

from relay.web import ratelimit, sessions
from relay.web.ratelimit import AddressLimit
from relay.web.sessions import FREE_FAILURES, Attempts


def test_an_address_may_post_the_limit_then_waits_until_the_oldest_post_ages_out() -> None:
    limit = AddressLimit(3, window=900.0)
    for moment in (0.0, 10.0, 20.0):
        assert limit.wait("192.0.2.1", now=moment) == 0.0
        limit.posted("192.0.2.1", now=moment)
    assert limit.wait("192.0.2.1", now=30.0) == 870.0
    assert limit.wait("192.0.2.2", now=30.0) == 0.0  # another address is not held
    assert limit.wait("192.0.2.1", now=900.5) == 0.0  # the first post left the window


def test_the_address_limit_forgets_the_least_recently_heard_past_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "TRACKED_ADDRESSES", 2)
    limit = AddressLimit(1)
    limit.posted("a", now=0.0)
    limit.posted("b", now=1.0)
    limit.posted("a", now=2.0)  # a heard again: b is now the oldest
    limit.posted("c", now=3.0)
    assert limit.wait("b", now=4.0) == 0.0
    assert limit.wait("a", now=4.0) > 0.0 and limit.wait("c", now=4.0) > 0.0


def test_failures_are_free_at_first_then_each_waits_twice_as_long() -> None:
    attempts = Attempts()
    for _ in range(FREE_FAILURES):
        assert attempts.wait("alice", now=0.0) == 0.0
        attempts.failed("alice", now=0.0)
    assert attempts.wait("alice", now=0.0) == 2.0
    attempts.failed("alice", now=0.0)
    assert attempts.wait("alice", now=0.0) == 4.0
    attempts.passed("alice")
    assert attempts.wait("alice", now=0.0) == 0.0


def test_failure_counts_stay_bounded_when_every_try_names_a_new_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions, "TRACKED_FAILURES", 3)
    attempts = Attempts()
    for _ in range(FREE_FAILURES + 1):
        attempts.failed("signin:alice@example.org", now=0.0)
    held = attempts.wait("signin:alice@example.org", now=0.0)
    assert held > 0.0
    for n in range(2):
        attempts.failed(f"signin:guess{n}@example.org", now=0.0)
    assert attempts.wait("signin:alice@example.org", now=0.0) == held  # still counted
    attempts.failed("signin:guess2@example.org", now=0.0)
    assert attempts.wait("signin:alice@example.org", now=0.0) == 0.0  # the oldest went
