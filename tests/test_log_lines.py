"""What a relayed mail leaves in the log: one INFO line with what ops need, the rest at DEBUG."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.test_pace import relay_for
from tests.test_queue import eventually, send

PER_MAIL_FIELDS = ("id", "user", "msg_id", "to", "size", "delivered", "reply", "seconds")


def relay_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """relay's own records at exactly this level (not aiosmtpd's, not the test's)."""
    return [r for r in caplog.records if r.name.startswith("relay") and r.levelno == level]


async def test_a_relayed_mail_logs_one_info_line_with_what_ops_need(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with relay_for(tmp_path, listen_reply="verdict") as (_, daemon, upstream, secret):
        caplog.clear()
        caplog.set_level(logging.INFO)
        reply = await send(daemon, secret, ["bob@example.net", "carol@example.net"])
        await eventually(lambda: len(upstream.handler.received) == 1)
        [line] = [r.getMessage() for r in relay_records(caplog, logging.INFO)]
    fields = dict(re.findall(r"(\w+)=('[^']*'|\S+)", line))
    assert reply.startswith("250 ")
    assert line.startswith("delivery.attempt ")
    assert all(name in fields for name in PER_MAIL_FIELDS), line
    assert fields["user"] == "alice" and fields["delivered"] == "2"
    assert fields["to"] == "bob@example.net,carol@example.net"
    assert int(fields["size"]) > 0 and "250" in fields["reply"]


async def test_at_debug_the_session_and_command_lines_are_there_and_no_secret_in_any(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with relay_for(tmp_path, listen_reply="verdict") as (_, daemon, upstream, secret):
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        await send(daemon, secret, ["bob@example.net"])
        await eventually(lambda: len(upstream.handler.received) == 1)
        await eventually(lambda: "session.end" in caplog.text)
    events = {r.getMessage().split(" ", 1)[0] for r in relay_records(caplog, logging.DEBUG)}
    assert {"session.start", "auth.ok", "queue.accepted", "message.reply", "session.end"} <= events
    for record in caplog.records:
        text = record.getMessage()
        assert secret not in text and "upstream-Pa55" not in text, text
