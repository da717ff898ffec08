"""Keeping pace: spool mode, sessions that follow demand, provider pacing and daily quotas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config.load import parse_config
from relay.daemon import Daemon
from relay.errors import ConfigError
from relay.providers.presets import Pace
from relay.queue.pace import MINUTE, Pacer
from tests.harness import RelaySetup, running_daemon, write_config
from tests.test_queue import eventually, send
from tests.test_server import provider_for
from tests.upstream import Upstream, recording_upstream

FAST_RETRIES = {"min_backoff": 0.2, "max_backoff": 0.5, "first_attempt_timeout": 5}


class Gate:
    """Holds the upstream's replies to the end of DATA: let through one by one, or all."""

    def __init__(self) -> None:
        self.turns = asyncio.Semaphore(0)
        self.opened = False
        self.active = 0
        self.peak = 0

    async def hold(self) -> None:
        """Wait at the end of DATA for a turn (none once the gate is open)."""
        if self.opened:
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.turns.acquire()
        finally:
            self.active -= 1

    def let_one_through(self) -> None:
        """One held reply goes out."""
        self.turns.release()

    def open(self) -> None:
        """Every held reply goes out, and none is held from now on."""
        self.opened = True
        for _ in range(self.active):
            self.turns.release()


def hold_data(upstream: Upstream, gate: Gate) -> None:
    """Make the upstream wait at the end of DATA until the gate opens, then record the mail."""
    record = upstream.handler.handle_DATA

    async def held(server: SMTP, session: Session, envelope: Envelope) -> str:
        await gate.hold()
        return await record(server, session, envelope)

    upstream.handler.handle_DATA = held  # type: ignore[method-assign]  # a slow provider


@asynccontextmanager
async def relay_for(
    tmp_path: Path, listen_reply: str = "spool", **settings: Any
) -> AsyncIterator[tuple[RelaySetup, Daemon, Upstream, str]]:
    """relay (spool mode unless told) before a recording upstream: (setup, daemon, up, secret)."""
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        provider = provider_for(upstream, **settings.pop("provider", {}))
        setup = write_config(
            tmp_path / "relay",
            {"lab": provider},
            listen=[{"address": "127.0.0.1", "port": 0, "reply": listen_reply}],
            queue={**FAST_RETRIES, **settings.pop("queue", {})},
            **settings,
        )
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            yield setup, daemon, upstream, secret


async def test_in_spool_mode_the_app_hears_250_before_the_provider_has_answered(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with relay_for(tmp_path) as (_, daemon, upstream, secret):
        hold_data(upstream, gate)
        reply = await asyncio.wait_for(send(daemon, secret, ["bob@example.net"]), timeout=5)
        await eventually(lambda: gate.active == 1)
        held = len(upstream.handler.received)
        gate.open()
        await eventually(lambda: len(upstream.handler.received) == 1)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    assert held == 0  # the app had its 250 while the provider still held its answer


async def test_twenty_waiting_mails_open_more_than_four_sessions_and_no_more_than_the_ceiling(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with relay_for(tmp_path, provider={"max_connections": 8}) as (_, daemon, up, secret):
        hold_data(up, gate)
        replies = await asyncio.gather(*(send(daemon, secret, [f"r{n}@x.test"]) for n in range(20)))

        while len(up.handler.received) < 20:
            # Each mail that goes through while others wait lets relay open one more session.
            done = len(up.handler.received)
            await eventually(lambda: gate.active >= 1)
            gate.let_one_through()
            await eventually(lambda: len(up.handler.received) > done)  # noqa: B023
        use = daemon.parts.pool.usage()["alice"]
    assert all(reply.startswith("250 ") for reply in replies)
    assert 4 < gate.peak <= 8
    assert use.ceiling == 8


async def test_a_421_too_many_connections_lowers_the_users_session_count(tmp_path: Path) -> None:
    gate = Gate()
    allowed = 3  # the provider's own limit: a MAIL on a fourth busy session gets 421
    async with relay_for(tmp_path) as (_, daemon, upstream, secret):
        hold_data(upstream, gate)

        async def busy_provider(
            server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
        ) -> str:
            if gate.active >= allowed:
                return "421 4.7.0 Too many concurrent SMTP connections from this user"
            envelope.mail_from = address
            return "250 OK"

        upstream.handler.handle_MAIL = busy_provider  # type: ignore[method-assign]  # this test's provider
        await asyncio.gather(*(send(daemon, secret, [f"r{n}@x.test"]) for n in range(8)))
        await eventually(lambda: gate.active == 4)  # relay's first four sessions, all busy
        gate.let_one_through()  # its session takes the next mail, and the provider says 421
        await eventually(lambda: daemon.parts.pool.usage()["alice"].pushed_back)
        lowered = daemon.parts.pool.usage()["alice"].limit
        gate.open()
        await eventually(lambda: len(upstream.handler.received) == 8, timeout=20)
    assert lowered < 4


async def test_a_daily_quota_reply_defers_that_users_mail_and_others_still_flow(
    tmp_path: Path,
) -> None:
    async with relay_for(tmp_path, listen_reply="verdict") as (setup, daemon, upstream, secret):
        bob = setup.add_user(
            "bob", "lab", "bob@example.org", "upstream-Pa55", "--upstream-user", "alice@example.org"
        )
        record = upstream.handler.handle_DATA

        async def quota_for_alice(server: SMTP, session: Session, envelope: Envelope) -> str:
            if envelope.mail_from == "alice@example.org":
                return "550 5.4.5 Daily user sending limit exceeded. Learn more"
            return await record(server, session, envelope)

        upstream.handler.handle_DATA = quota_for_alice  # type: ignore[method-assign]
        first = await send(daemon, secret, ["one@x.test"])
        tried = len(upstream.handler.tried)
        second = await send(daemon, secret, ["two@x.test"])
        tried_after = len(upstream.handler.tried)
        from_bob = b"From: bob@example.org\r\n\r\nhi\r\n"
        as_bob = await send(daemon, bob, ["three@x.test"], from_bob, login="bob")
        entries = await daemon.parts.spool.entries()
    assert first.startswith("250 2.0.0 queued as ") and "5.4.5" in first
    assert second.startswith("250 2.0.0 queued as ") and "quota" in second
    assert tried_after == tried  # the second was not even offered to the provider
    assert as_bob.startswith("250 2.0.0 <") and " sent" in as_bob
    assert sorted(e.login for e in entries) == ["alice", "alice"]
    assert all(e.next_attempt - time.time() > 3000 for e in entries)  # deferred, not bounced


async def test_a_pace_of_two_a_minute_queues_the_third_mail_with_the_reason(tmp_path: Path) -> None:
    provider = {"pace": {"per_minute": 2}}
    async with relay_for(tmp_path, "verdict", provider=provider) as (setup, daemon, up, secret):
        replies = [await send(daemon, secret, [f"r{n}@x.test"]) for n in range(3)]
        daemon.publish_delivery()
        status = setup.cli("status").out
    assert [" sent" in reply for reply in replies] == [True, True, False]
    assert "paced: 2/min at lab, next in " in replies[2]
    assert len(up.handler.received) == 2
    [line] = [line for line in status.splitlines() if line.startswith("alice ") and "/min" in line]
    assert "2/min (lab)" in line and "paced: 2/min" in line


def test_a_burst_of_three_minutes_worth_goes_out_at_the_providers_rate_and_is_never_refused() -> (
    None
):
    per_minute = 30  # Exchange Online's documented rate
    clock = [1_000_000.0]
    pacer = Pacer(clock=lambda: clock[0])
    pace = Pace(per_minute=per_minute)
    accepted: list[float] = []  # what a provider enforcing 30 a minute saw
    refused = 0
    for _ in range(3 * per_minute):
        while (wait := pacer.take("alice", pace, 1)) is not None:
            clock[0] += wait.seconds  # the test's clock: no real waiting
        in_last_minute = [at for at in accepted if at > clock[0] - MINUTE]
        if len(in_last_minute) >= per_minute:
            refused += 1
        accepted.append(clock[0])
    elapsed = accepted[-1] - accepted[0]
    assert refused == 0 and len(accepted) == 90
    assert 2 * MINUTE <= elapsed <= 3 * MINUTE


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ({"providers": {"lab": {"pace": {"per_minute": 0}}}}, "providers.lab.pace.per_minute"),
        ({"providers": {"lab": {"pace": {"per_day": -5}}}}, "providers.lab.pace.per_day"),
        ({"providers": {"lab": {"max_connections": 0}}}, "providers.lab.max_connections"),
        ({"listen": [{"address": "127.0.0.1", "reply": "later"}]}, "listen[0].reply"),
        ({"users": {"alice": {"reply": "asap"}}}, "users.alice.reply"),
        ({"users": {"alice": {"max_connections": 0}}}, "users.alice.max_connections"),
    ],
)
def test_bad_pace_ceiling_or_reply_mode_is_a_config_error_naming_the_key(
    tmp_path: Path, setting: dict[str, Any], path: str
) -> None:
    document: dict[str, Any] = {
        "providers": {"lab": {"smtp": {"host": "mail.example.org", "tls": "starttls"}}}
    }
    for key, value in setting.items():
        if key == "providers":
            document["providers"]["lab"].update(value["lab"])
        else:
            document[key] = value
    with pytest.raises(ConfigError) as refused:
        parse_config(document, "relay.yaml", tmp_path)
    assert path in [where for where, _ in refused.value.problems], refused.value.problems
