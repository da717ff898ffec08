"""Brute force and floods: failed logins slow down, connections and sending rates are capped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from relay.daemon import Daemon
from relay.listener.throttle import FailureCounter, SendCounter
from relay.policy import auth_delay
from tests.harness import running_daemon, write_config
from tests.test_server import MESSAGE, provider_for
from tests.upstream import Upstream, recording_upstream


@asynccontextmanager
async def limited_relay(
    tmp_path: Path, **limits: Any
) -> AsyncIterator[tuple[Daemon, Upstream, str]]:
    """A relay with the given limits before a recording upstream: (daemon, upstream, secret)."""
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(tmp_path / "relay", {"lab": provider_for(upstream)}, limits=limits)
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            yield daemon, upstream, secret


async def connect(daemon: Daemon) -> aiosmtplib.SMTP:
    """A connected client that has said EHLO."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.addresses[0][1], start_tls=False)
    await client.connect()
    await client.ehlo()
    return client


def test_login_delay_doubles_per_failure_up_to_the_cap() -> None:
    assert [auth_delay(n, 2.0, 15.0) for n in range(6)] == [0.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_failures_are_forgotten_after_a_success_and_memory_is_bounded() -> None:
    counter = FailureCounter()
    assert counter.failed("ip:127.0.0.1", 0.0) == 1
    assert counter.failed("ip:127.0.0.1", 1.0) == 2
    counter.forget("ip:127.0.0.1")
    assert counter.count("ip:127.0.0.1", 2.0) == 0
    for index in range(20_000):
        counter.failed(f"login:random{index}", 3.0)
    assert counter.count("login:random0", 3.0) == 0  # evicted, not kept forever
    assert counter.count("login:random19999", 3.0) == 1


def test_send_counter_counts_this_clock_minute_and_the_last_day() -> None:
    counter = SendCounter()
    for at in (0.0, 100.0, 86_410.0, 86_430.0):
        counter.record("alice", at)
    # Minute 1440 holds two; minute 0 is a day old and forgotten; minute 1 still counts.
    assert counter.counts("alice", 86_440.0) == (2, 3)
    assert counter.counts("bob", 86_440.0) == (0, 0)


def test_send_counter_keeps_at_most_a_days_worth_of_buckets() -> None:
    counter = SendCounter()
    for second in range(0, 3 * 86_400, 30):
        counter.record("alice", float(second))
    # Two a minute over the 1,439 minutes before this one; older buckets are gone.
    assert counter.counts("alice", 3 * 86_400.0) == (0, 2 * 1439)


async def test_repeated_failed_logins_are_logged_as_a_lockout_and_still_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.server")
    async with limited_relay(tmp_path, auth_failure_delay=0.01, auth_failure_max_delay=0.05) as (
        daemon,
        upstream,
        secret,
    ):
        client = await connect(daemon)
        for _ in range(6):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await client.login("alice", "guess")
        await client.quit()
        lockouts = [r.getMessage() for r in caplog.records if "auth.lockout" in r.getMessage()]
        assert any("key='login:alice'" in line for line in lockouts)
        # Loopback is shared by every local app: it gets no address count (issue 21).
        assert not any("key='ip:" in line for line in lockouts)
        assert all("guess" not in r.getMessage() for r in caplog.records)
        client = await connect(daemon)
        await client.login("alice", secret)  # the right secret still works
        await client.quit()


async def test_connections_beyond_the_per_address_limit_get_421(tmp_path: Path) -> None:
    limits = {"max_connections_per_ip": 2, "per_ip_exempt": []}  # count loopback clients too
    async with limited_relay(tmp_path, **limits) as (daemon, _, _secret):
        first, second = await connect(daemon), await connect(daemon)
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.addresses[0][1])
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert line.startswith(b"421 4.7.0 too many connections from your address")
        for client in (first, second):
            await client.quit()
        third = await connect(daemon)  # a slot is free again
        await third.quit()


async def test_logged_in_local_apps_on_loopback_are_not_held_to_the_per_address_limit(
    tmp_path: Path,
) -> None:
    # They all come from 127.0.0.1, as Postfix's $mynetworks clients are exempt there. Before
    # AUTH the limit does count loopback sessions (tests/test_auth_defence.py).
    async with limited_relay(tmp_path, max_connections_per_ip=2) as (daemon, _, secret):
        clients = []
        for _ in range(5):
            client = await connect(daemon)
            await client.login("alice", secret)
            clients.append(client)
        for client in clients:
            await client.quit()


async def test_the_total_limit_still_holds_for_logged_in_loopback_clients(tmp_path: Path) -> None:
    # A session not yet logged in would give way to the newcomer instead (the oldest such).
    async with limited_relay(tmp_path, max_connections=2) as (daemon, _, secret):
        first = await connect(daemon)
        await first.login("alice", secret)
        second = await connect(daemon)
        await second.login("alice", secret)
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.addresses[0][1])
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert line.startswith(b"421 4.7.0 too many connections (2)")
        for client in (first, second):
            await client.quit()


async def test_sending_beyond_the_per_minute_rate_gets_450(tmp_path: Path) -> None:
    async with limited_relay(tmp_path, messages_per_minute=2) as (daemon, upstream, secret):
        client = await connect(daemon)
        await client.login("alice", secret)
        for _ in range(2):
            await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        await client.quit()
        assert (refused.value.code, refused.value.message[:5]) == (450, "4.7.1")
        assert "2 messages a minute" in refused.value.message
        assert len(upstream.handler.received) == 2
