"""In-doubt mail against real Postfix and Dovecot: the provider's 250 is lost on the way back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.daemon import Daemon
from tests.harness import running_daemon, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.replycut import ReplyCutter, reply_cutter
from tests.test_end_to_end import message_text

pytestmark = pytest.mark.peers
FAST_RETRIES = {"min_backoff": 0.5, "max_backoff": 2, "first_attempt_timeout": 10}


@asynccontextmanager
async def relay_behind_cutter(
    peers: MailPeers, root: Path, login: str, **provider: Any
) -> AsyncIterator[tuple[Daemon, ReplyCutter, str]]:
    """relay for one peer user, whose provider is Postfix behind a proxy that loses one 250."""
    tls = peers.workdir / "tls"
    async with reply_cutter(
        peers.host, peers.submissions_port, peers.ca_file, tls / "server.pem", tls / "server.key"
    ) as (cutter, port):
        setup = write_config(
            root,
            {
                "agency": {
                    "smtp": {"host": peers.host, "port": port, "tls": "implicit"},
                    "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
                    "ca_file": str(peers.ca_file),
                    **provider,
                }
            },
            queue=FAST_RETRIES,
        )
        account = peers.accounts[login]
        secret = setup.add_user(login, "agency", account.address, account.password)
        async with running_daemon(setup) as daemon:
            yield daemon, cutter, secret


async def send(daemon: Daemon, login: str, secret: str, sender: str, rcpt: str, tag: str) -> str:
    """Send one mail as a legacy app; relay's reply to DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.addresses[0][1], start_tls=False)
    await client.connect()
    await client.login(login, secret)
    extra = f"Message-ID: <{tag}@app.example>\r\n"
    _, reply = await client.sendmail(sender, [rcpt], message_text(sender, rcpt, tag, extra))
    await client.quit()
    return reply


async def copies_in(peers: MailPeers, account: MailAccount, tag: str, mailbox: str) -> int:
    """How many mails with this tag's Message-ID the mailbox holds."""
    messages = await asyncio.to_thread(peers.mailbox_messages, account, mailbox)
    return sum(f"<{tag}@app.example>".encode() in message for message in messages)


async def until_queue_empty(daemon: Daemon, timeout: float = 40.0) -> None:
    """Wait until relay has nothing queued any more."""
    async with asyncio.timeout(timeout):
        while await daemon.parts.spool.entries():
            await asyncio.sleep(0.2)


async def test_lost_250_from_a_provider_that_files_sent_is_found_there_and_not_sent_again(
    mail_peers: MailPeers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    erin, bob = mail_peers.accounts["erin"], mail_peers.accounts["bob"]
    tag = uuid.uuid4().hex
    async with relay_behind_cutter(mail_peers, tmp_path, "erin", files_sent_itself=True) as (
        daemon,
        cutter,
        secret,
    ):
        reply = await send(daemon, "erin", secret, erin.address, bob.address, tag)
        assert reply.startswith("2.0.0 queued as ")
        await until_queue_empty(daemon)
    assert cutter.swallowed == 1
    assert cutter.data_ends == 1, "relay sent the mail again"
    assert await copies_in(mail_peers, bob, tag, "INBOX") == 1
    assert await copies_in(mail_peers, erin, tag, "Sent") == 1  # the provider's, not relay's
    assert "found_in_sent=yes" in caplog.text


async def test_lost_250_elsewhere_is_sent_once_more_and_logged_as_a_possible_duplicate(
    mail_peers: MailPeers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    tag = uuid.uuid4().hex
    async with relay_behind_cutter(mail_peers, tmp_path, "alice") as (daemon, cutter, secret):
        reply = await send(daemon, "alice", secret, alice.address, bob.address, tag)
        assert reply.startswith("2.0.0 queued as ")
        await until_queue_empty(daemon)
    assert (cutter.swallowed, cutter.data_ends) == (1, 2)
    assert await copies_in(mail_peers, bob, tag, "INBOX") == 2
    duplicates = [r for r in caplog.records if "delivery.maybe_duplicate" in r.getMessage()]
    assert len(duplicates) == 1 and tag in duplicates[0].getMessage()
