"""Nothing loops and nothing doubles: crashed attempts back off, a full spool pauses delivery."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtplib.protocol import SMTPProtocol

from relay.queue import sentcopies
from relay.queue.dsn import build_dsn
from relay.queue.statements import apply_attempt
from relay.reply import Reply
from tests.harness import running_daemon, write_config
from tests.test_queue import eventually, relay_and_upstream, send
from tests.test_server import provider_for
from tests.upstream import recording_upstream

SLOW_RETRIES = {"min_backoff": 60, "max_backoff": 120, "first_attempt_timeout": 5}


def crashes(caplog: pytest.LogCaptureFixture, event: str) -> int:
    """How many times an event was logged."""
    return sum(event in record.getMessage() for record in caplog.records)


async def test_an_exception_inside_the_data_write_is_one_attempt_then_the_normal_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_drain(self: SMTPProtocol) -> None:
        raise RuntimeError("aiosmtplib changed under relay")

    async with relay_and_upstream(tmp_path, **SLOW_RETRIES) as (setup, daemon, upstream, secret):
        monkeypatch.setattr(SMTPProtocol, "_drain_helper", broken_drain)
        reply = await send(daemon, secret, ["bob@example.net"])
        await asyncio.sleep(3 * 1.0)  # three scheduler ticks: a loop would have retried by now
        [entry] = await daemon.parts.spool.entries()
    assert reply.startswith("250 2.0.0 queued as ")
    assert len(upstream.handler.tried) == 1  # one transaction reached the upstream
    assert len(upstream.handler.received) <= 1
    assert entry.attempts == 1 and entry.next_attempt - time.time() > 45
    assert crashes(caplog, "queue.attempt_crashed") == 1


async def test_a_crashing_sent_copy_job_is_retried_on_the_backoff_not_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def crashing_append(*args: Any, **kwargs: Any) -> None:
        calls.append(str(args[2]))
        raise ValueError("a bug in filing")

    monkeypatch.setattr(sentcopies, "append_sent_copy", crashing_append)
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        provider = {
            **provider_for(upstream),
            "imap": {"host": "127.0.0.1", "port": 9, "tls": "implicit"},
        }
        setup = write_config(tmp_path / "relay", {"lab": provider}, queue=SLOW_RETRIES)
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            reply = await send(daemon, secret, ["bob@example.net"])
            await eventually(lambda: calls)
            await asyncio.sleep(3 * 1.0)
            db = sqlite3.connect(setup.state_dir / "spool.db")
            attempts, next_attempt = db.execute(
                "SELECT attempts, next_attempt FROM sent_jobs"
            ).fetchone()
            db.close()
    assert reply.startswith("250 ")
    assert len(calls) == 1
    assert attempts == 1 and next_attempt - time.time() > 45
    assert crashes(caplog, "sent.crashed") == 1


async def test_an_unwritable_spool_after_delivery_never_sends_the_mail_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_full = True

    def apply_or_fail(db: sqlite3.Connection, **kwargs: Any) -> Any:
        if disk_full:
            raise sqlite3.OperationalError("database or disk is full")
        return apply_attempt(db, **kwargs)

    monkeypatch.setattr("relay.queue.spool.apply_attempt", apply_or_fail)
    queue = {"min_backoff": 0.2, "max_backoff": 0.5, "first_attempt_timeout": 5}
    async with relay_and_upstream(tmp_path, **queue) as (setup, daemon, upstream, secret):
        first = await send(daemon, secret, ["bob@example.net"])
        await asyncio.sleep(3 * 1.0)
        during = len(upstream.handler.received)
        refused = await send(daemon, secret, ["carol@example.net"])
        status = setup.cli("status").out
        disk_full = False
        await eventually(lambda: not daemon.services.runner.pause.paused, timeout=5)
        left = await daemon.parts.spool.entries()
    assert first.startswith("250 2.0.0 queued as ")
    assert during == 1 and len(upstream.handler.received) == 1
    assert refused.startswith("452 4.3.1")
    assert "DELIVERY PAUSED" in status and "database or disk is full" in status
    assert left == []  # the remembered outcome was written: delivered, gone from the queue
    assert crashes(caplog, "queue.paused") == 1 and crashes(caplog, "queue.resumed") == 1


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of its own at path: a disk the test can fill and empty."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        problem = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if os.environ.get("RELAY_REQUIRE_PEERS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the disk with one file; delete the file to free them."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, free - leave))
    return filler


async def test_a_full_disk_pauses_delivery_and_every_queued_mail_then_goes_exactly_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = {"min_backoff": 0.2, "max_backoff": 0.5, "min_free_bytes": 4 << 20}
    with small_disk(tmp_path / "disk", "48m") as disk:
        async with recording_upstream(trustme.CA(), tmp_path) as upstream:
            setup = write_config(disk / "relay", {"lab": provider_for(upstream)}, queue=queue)
            secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
            async with running_daemon(setup) as daemon:
                upstream.handler.data_reply = "451 4.3.0 try again later"
                for n in range(5):
                    assert (await send(daemon, secret, [f"r{n}@example.net"])).startswith("250")
                filler = fill(disk, leave=512 << 10)  # below the delivery reserve of 1 MiB
                upstream.handler.data_reply = None
                await asyncio.sleep(3 * 1.0)
                during = len(upstream.handler.received)
                status = setup.cli("status").out
                refused = await send(daemon, secret, ["late@example.net"])
                filler.unlink()
                await eventually(lambda: len(upstream.handler.received) >= 5, timeout=20)
                await asyncio.sleep(1.5)  # and nothing more arrives
    assert during == 0
    assert "DELIVERY PAUSED" in status and "disk low" in status
    assert refused.startswith("452 4.3.1")
    recipients = sorted(r for mail in upstream.handler.received for r in mail.recipients)
    assert recipients == [f"r{n}@example.net" for n in range(5)]  # each exactly once
    assert crashes(caplog, "queue.paused") == 1 and crashes(caplog, "queue.resumed") == 1
    assert crashes(caplog, "attempt_crashed") == 0


def test_a_bounce_for_mail_sent_again_after_a_lost_answer_says_it_may_have_arrived_twice() -> None:
    report = build_dsn(
        reporting_host="relay.test",
        user_email="alice@example.org",
        original_sender="alice@example.org",
        original_header=b"Subject: x\r\n",
        received_at=time.time(),
        now=time.time(),
        remote="mail.example.net",
        failed={"bob@example.net": Reply(550, "5.1.1", "no such user")},
        resent_in_doubt=1,
    )
    assert b"relay sent this message once more" in report
    assert b"may have received it twice" in report
