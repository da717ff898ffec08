"""The durable queue against an in-process upstream: retries, partial recipients, bounces, reuse."""

from __future__ import annotations

import asyncio
import email
import email.policy
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from relay.config.load import load_config
from relay.daemon import Daemon
from relay.queue.records import NewMessage, RecipientState
from relay.queue.spool import Spool
from tests.harness import RelaySetup, running_daemon, write_config
from tests.test_server import MESSAGE, provider_for
from tests.upstream import Upstream, recording_upstream

FAST_RETRIES = {"min_backoff": 0.2, "max_backoff": 0.5, "first_attempt_timeout": 5}


@asynccontextmanager
async def relay_and_upstream(
    tmp_path: Path, **queue: Any
) -> AsyncIterator[tuple[RelaySetup, Daemon, Upstream, str]]:
    """A relay with fast retries before a recording upstream: (setup, daemon, upstream, secret)."""
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(
            tmp_path / "relay", {"lab": provider_for(upstream)}, queue={**FAST_RETRIES, **queue}
        )
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            yield setup, daemon, upstream, secret


async def send(
    daemon: Daemon,
    secret: str,
    recipients: list[str],
    message: bytes = MESSAGE,
    *,
    login: str = "alice",
) -> str:
    """Send one mail as login (alice) from login@example.org; the reply the app sees."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.addresses[0][1], start_tls=False)
    await client.connect()
    await client.login(login, secret)
    try:
        _, reply = await client.sendmail(f"{login}@example.org", recipients, message)
        return f"250 {reply}"
    except aiosmtplib.SMTPResponseException as refused:
        return f"{refused.code} {refused.message}"
    finally:
        await client.quit()


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    """Wait until condition() is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def queue_ids(setup: RelaySetup) -> list[str]:
    """Queue ids as `relay queue list` shows them."""
    listing = setup.cli("queue", "list").out.splitlines()[1:-1]
    return [line.split()[0] for line in listing if not line.startswith(" ")]


async def test_temporary_failure_is_queued_and_delivered_once_the_provider_recovers(
    tmp_path: Path,
) -> None:
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.data_reply = "451 4.3.0 try again later"
        reply = await send(daemon, secret, ["bob@example.net"])
        assert reply.startswith("250 2.0.0 queued as ") and "try again later" in reply
        assert len(queue_ids(setup)) == 1
        upstream.handler.data_reply = None
        await eventually(lambda: len(upstream.handler.received) == 1)
        await eventually(lambda: queue_ids(setup) == [], timeout=5)


async def test_permanent_failure_on_first_attempt_reaches_the_app_and_nothing_stays_queued(
    tmp_path: Path,
) -> None:
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.data_reply = "554 5.7.1 rejected by policy"
        reply = await send(daemon, secret, ["bob@example.net"])
        assert reply.startswith("554 5.7.1") and "rejected by policy" in reply
        assert queue_ids(setup) == []
        await asyncio.sleep(0.5)
        # Only the mail itself was tried: no DSN to the sender either, since the app heard it.
        assert upstream.handler.tried == [("alice@example.org", "bob@example.net")]


async def test_only_the_deferred_recipient_is_retried(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["later@example.net"] = "450 4.2.0 mailbox busy"
        reply = await send(daemon, secret, ["now@example.net", "later@example.net"])
        assert reply.startswith("250 2.0.0 queued as ")
        assert [m.recipients for m in upstream.handler.received] == [["now@example.net"]]
        del upstream.handler.rcpt_replies["later@example.net"]
        await eventually(lambda: len(upstream.handler.received) == 2)
        assert upstream.handler.received[1].recipients == ["later@example.net"]
        await eventually(lambda: queue_ids(setup) == [], timeout=5)


async def test_permanent_failure_on_a_retry_sends_a_dsn_naming_recipient_and_reply(
    tmp_path: Path,
) -> None:
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["gone@example.net"] = "450 4.2.1 try later"
        await send(daemon, secret, ["gone@example.net"])
        upstream.handler.rcpt_replies["gone@example.net"] = (
            "550 5.1.1 <gone@example.net>: no such user"
        )
        await eventually(lambda: len(upstream.handler.received) == 1)
        [dsn] = upstream.handler.received
        assert dsn.recipients == ["alice@example.org"]
        report = email.message_from_bytes(dsn.data, policy=email.policy.default)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        text = dsn.data.decode()
        assert "Final-Recipient: rfc822; gone@example.net" in text
        assert "Action: failed" in text and "Status: 5.1.1" in text and "no such user" in text
        await eventually(lambda: queue_ids(setup) == [], timeout=5)


async def test_the_dsn_is_on_disk_the_moment_the_failure_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash right after the failure is recorded must not lose the DSN. A DSN queued in a
    # second write would never be written here: any such write hangs, as if relay died there.
    enqueue = Spool.enqueue

    async def dies_before_a_bounce(spool: Spool, message: NewMessage, window: float) -> Any:
        if message.is_bounce:
            await asyncio.Event().wait()
        return await enqueue(spool, message, window)

    monkeypatch.setattr(Spool, "enqueue", dies_before_a_bounce)
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["gone@example.net"] = "450 4.2.1 try later"
        upstream.handler.rcpt_replies["alice@example.org"] = "450 4.2.1 sender busy"
        await send(daemon, secret, ["gone@example.net"])
        upstream.handler.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
        spool_path = load_config(setup.config_path).spool_path

        def on_disk() -> tuple[list[str], list[str]]:
            with closing(sqlite3.connect(spool_path)) as db, db:  # one read: one snapshot
                failed = db.execute(
                    "SELECT address FROM recipients WHERE state = ?", (RecipientState.FAILED.value,)
                ).fetchall()
                dsns = db.execute(
                    "SELECT r.address FROM messages m JOIN recipients r ON r.message_seq = m.seq "
                    "WHERE m.is_bounce = 1"
                ).fetchall()
            return [row[0] for row in failed], [row[0] for row in dsns]

        # The first read that shows the failure (or its mail already gone) shows the DSN too.
        await eventually(lambda: on_disk() != ([], []))
        failed, dsns = on_disk()
        assert dsns == ["alice@example.org"]
        assert failed in ([], ["gone@example.net"])


async def test_a_bounce_that_fails_is_never_bounced_again(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["gone@example.net"] = "450 4.2.1 try later"
        upstream.handler.rcpt_replies["alice@example.org"] = "550 5.1.1 sender mailbox gone"
        await send(daemon, secret, ["gone@example.net"])
        upstream.handler.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
        await eventually(
            lambda: ("alice@example.org", "alice@example.org") in upstream.handler.tried
        )
        await eventually(lambda: queue_ids(setup) == [], timeout=10)
        await asyncio.sleep(0.5)
        # The DSN to alice was tried once and refused; no DSN about the DSN followed it.
        dsns = [t for t in upstream.handler.tried if t[1] == "alice@example.org"]
        assert dsns == [("alice@example.org", "alice@example.org")]
        assert upstream.handler.received == []


async def test_expired_mail_is_bounced_and_removed(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path, lifetime=1.0) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["bob@example.net"] = "450 4.2.0 mailbox busy"
        reply = await send(daemon, secret, ["bob@example.net"])
        assert reply.startswith("250 2.0.0 queued as ")
        await eventually(lambda: len(upstream.handler.received) == 1)
        [dsn] = upstream.handler.received
        assert dsn.recipients == ["alice@example.org"]
        assert (
            b"expired after" in dsn.data and b"Final-Recipient: rfc822; bob@example.net" in dsn.data
        )
        assert b"mailbox busy" in dsn.data
        await eventually(lambda: queue_ids(setup) == [], timeout=5)


async def test_fifty_mails_for_one_user_reuse_a_few_upstream_connections(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path) as (_, daemon, upstream, secret):
        for _ in range(50):
            assert (await send(daemon, secret, ["bob@example.net"])).startswith("250 2.0.0 <")
        assert len(upstream.handler.received) == 50
        assert upstream.handler.connections <= 2


async def test_low_disk_space_gets_452_and_nothing_is_spooled(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path, min_free_bytes=2**62) as (
        setup,
        daemon,
        upstream,
        secret,
    ):
        reply = await send(daemon, secret, ["bob@example.net"])
        assert reply.startswith("452 4.3.1")
        assert queue_ids(setup) == [] and upstream.handler.received == []


async def test_an_app_resending_the_same_mail_is_acknowledged_but_not_sent_twice(
    tmp_path: Path,
) -> None:
    message = MESSAGE.replace(b"Subject:", b"Message-ID: <once@app.example>\r\nSubject:")
    async with relay_and_upstream(tmp_path) as (_, daemon, upstream, secret):
        first = await send(daemon, secret, ["bob@example.net"], message)
        again = await send(daemon, secret, ["bob@example.net"], message)
        assert first.startswith("250 ") and again.startswith("250 ")
        assert "not sent twice" in again
        assert len(upstream.handler.received) == 1


async def test_queue_retry_and_drop_from_the_command_line(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path, min_backoff=3600, max_backoff=3600) as (
        setup,
        daemon,
        upstream,
        secret,
    ):
        upstream.handler.data_reply = "451 4.3.0 later"
        await send(daemon, secret, ["bob@example.net"])
        await send(daemon, secret, ["carol@example.net"])
        first, second = queue_ids(setup)
        listing = setup.cli("queue", "list").out
        assert (
            "alice" in listing and "451 4.3.0 later" in listing and "-> bob@example.net" in listing
        )
        dropped = setup.cli("queue", "drop", second)
        assert dropped.status == 0 and f"queue.dropped id={second}" in dropped.err
        upstream.handler.data_reply = None
        assert setup.cli("queue", "retry", first).status == 0
        await eventually(lambda: len(upstream.handler.received) == 1)
        assert upstream.handler.received[0].recipients == ["bob@example.net"]
        assert setup.cli("queue", "drop", "nope").status == 1


async def test_a_pooled_session_the_provider_closed_is_replaced_without_queueing(
    tmp_path: Path,
) -> None:
    async with relay_and_upstream(tmp_path) as (_, daemon, upstream, secret):
        assert (await send(daemon, secret, ["bob@example.net"])).startswith("250 2.0.0 <")
        upstream.handler.drop_connections()
        await asyncio.sleep(0.1)
        assert (await send(daemon, secret, ["bob@example.net"])).startswith("250 2.0.0 <")
        assert len(upstream.handler.received) == 2
        assert upstream.handler.connections == 2


async def test_a_delay_warning_tells_the_sender_and_keeps_trying(tmp_path: Path) -> None:
    async with relay_and_upstream(tmp_path, delay_warning=0.5) as (setup, daemon, upstream, secret):
        upstream.handler.rcpt_replies["bob@example.net"] = "450 4.2.0 mailbox busy"
        await send(daemon, secret, ["bob@example.net"])
        await eventually(lambda: len(upstream.handler.received) == 1)
        [warning] = upstream.handler.received
        assert warning.recipients == ["alice@example.org"]
        assert b"Action: delayed" in warning.data and b"mailbox busy" in warning.data
        await eventually(lambda: len(queue_ids(setup)) == 1)  # the warning is done, the mail not
        del upstream.handler.rcpt_replies["bob@example.net"]
        await eventually(lambda: len(upstream.handler.received) == 2)
        assert upstream.handler.received[1].recipients == ["bob@example.net"]
