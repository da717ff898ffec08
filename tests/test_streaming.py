"""Large mail streamed: staged while DATA arrives, adopted by the spool, read back in pieces."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import trustme

from relay.listener.dataread import DataBudget, DataProblem, DataReader, read_data
from relay.listener.params import RelayEnvelope
from relay.message import STREAM_THRESHOLD, end_of_data, prepare, stuffed, whole, wire_pieces
from relay.model import User
from relay.queue.records import AttemptRecord, NewMessage
from relay.queue.sentjobs import SentJobSpec
from relay.queue.spool import Spool
from relay.queue.staging import INCOMING, incoming_dir
from relay.reply import Reply
from tests.harness import running_daemon, write_config
from tests.test_queue import FAST_RETRIES, eventually, send
from tests.test_server import provider_for
from tests.upstream import recording_upstream

ALICE = User("alice", "lab", "alice@example.org", "alice@example.org", "", None)
# A header with what relay fixes (no Date, a Bcc, bare line feeds) and a body of dot lines.
HEAD = b"From: alice@example.org\nTo: bob@example.net\r\nBcc: carol@example.net\nSubject: big\n\n"
BODY_LINE = b".a dot line\n..two\r\nplain text line\r\n"


def large_raw(size: int) -> bytes:
    """A mail of about size octets as an old app writes it (bare LF here and there)."""
    return HEAD + BODY_LINE * (size // len(BODY_LINE))


def on_the_wire(raw: bytes) -> bytes:
    """DATA as the client sends it: dot-stuffed after each CRLF, and the end line."""
    return b"".join(wire_pieces(raw))


def staged_files(pid: int = os.getpid()) -> int:
    """Staged (unlinked) body files this process has open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += f"/{INCOMING}/" in os.readlink(fd)
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return count


async def streamed(spool: Spool, wire: bytes, limit: int | None = None) -> DataReader:
    """A reader that read wire from a stream, staging through spool."""
    stream = asyncio.StreamReader()
    stream.feed_data(wire)
    reader = DataReader(limit, DataBudget(10**9), spool.stage)
    await read_data(stream, reader)
    return reader


async def test_a_large_mail_is_staged_and_prepares_exactly_as_if_held_whole(spool: Spool) -> None:
    raw = large_raw(3 * STREAM_THRESHOLD)
    reader = await streamed(spool, on_the_wire(raw))
    assert reader.problem is None and reader.staged is not None
    head = reader.content()
    assert len(head) < 200  # only the header is in memory
    staged = reader.staged.read_at(0, reader.staged.size)
    now = time.time()
    held = prepare(raw, ALICE, "alice@example.org", now)
    parts = prepare(head, ALICE, "alice@example.org", now)
    # Date and Message-ID are made up in both; everything else is the same, octet for octet.
    assert parts.upstream.split(b"\r\nDate:")[0] == held.upstream_header.split(b"\r\nDate:")[0]
    assert b"Bcc:" not in parts.upstream and b"Bcc: carol" in parts.sent_header
    assert staged == held.body
    reader.release()


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
def test_dot_stuffing_in_pieces_matches_stuffing_the_whole(cut: int) -> None:
    data = b".a\r\n.b\r\nc.\r\n\r\n.\r\n"
    first, second = data[:cut], data[cut:]
    before = b"\r\n"
    wire = stuffed(first, before)
    before = (before + first)[-2:]
    wire += stuffed(second, before) + end_of_data((before + second)[-2:])
    assert wire == b"".join(wire_pieces(data))


async def test_the_spool_adopts_a_staged_body_and_gives_it_back_in_pieces(
    spool: Spool, tmp_path: Path
) -> None:
    header = b"Subject: big\r\n"
    body = b"\r\n" + bytes(range(256)) * (5 * STREAM_THRESHOLD // 256)
    staged = spool.stage()
    for start in range(0, len(body), 300_000):
        await staged.write(body[start : start + 300_000])
    assert staged_files() == 1 and list(incoming_dir(tmp_path / "spool.db").iterdir()) == []
    message = NewMessage(
        id="a" * 16,
        login="alice",
        sender="alice@example.org",
        message_id="<big@example.org>",
        recipients=("bob@example.net",),
        upstream_data=header,
        body_offset=len(header),
        sent_header=header + b"Bcc: carol@example.net\r\n",
        received_at=time.time(),
        staged=staged.hand_over(),
    )
    assert await spool.enqueue(message, 0.0) == "a" * 16
    assert staged.closed and staged_files() == 0
    data = await spool.open_data("a" * 16)
    assert data is not None and not isinstance(data, bytes)
    assert data.size == len(header) + len(body)
    assert await whole(data) == header + body
    # Delivered: the Sent copy is made from it in pieces, and read back in pieces.
    delivered = {"bob@example.net": Reply(250, "2.0.0", "ok")}
    record = AttemptRecord(
        delivered, {}, {}, "250 ok", 0.0, sent_job=SentJobSpec("j" * 16, "append")
    )
    await spool.record("a" * 16, record)
    assert await spool.open_data("a" * 16) is None
    job = await spool.sent_job("j" * 16)
    assert job is not None and not isinstance(job.data, bytes)
    assert await whole(job.data) == message.sent_header + body


async def test_small_mail_reads_back_whole_as_before(spool: Spool) -> None:
    message = NewMessage(
        "b" * 16, "alice", "a@example.org", "<s@x>", ("b@x",), b"S: s\r\n\r\nhi\r\n", 6, b"", 0.0
    )
    await spool.enqueue(message, 0.0)
    assert await spool.open_data("b" * 16) == b"S: s\r\n\r\nhi\r\n"


async def test_a_large_mail_refused_for_its_size_leaves_no_staged_file(spool: Spool) -> None:
    raw = large_raw(3 * STREAM_THRESHOLD)
    reader = await streamed(spool, on_the_wire(raw), limit=2 * STREAM_THRESHOLD)
    assert reader.problem is DataProblem.TOO_MUCH
    await eventually(lambda: staged_files() == 0)


async def test_a_staged_body_not_taken_by_the_spool_is_freed_on_release(spool: Spool) -> None:
    reader = await streamed(spool, on_the_wire(large_raw(2 * STREAM_THRESHOLD)))
    assert reader.staged is not None and staged_files() == 1
    reader.release()
    await eventually(lambda: staged_files() == 0)


@pytest.mark.parametrize(
    ("body", "dot_lines"),
    [
        (b"a line.\r\n" * 200_000, False),
        (b"a line.\r\n" * 200_000 + b".. a dot line\r\n", True),
        (b"a line.\r\n" * 200_000 + b"bare\n. after a bare LF\r\n", True),
    ],
    ids=["no dot line", "a stuffed dot line", "a dot after a bare LF"],
)
async def test_the_reader_tells_the_spool_whether_any_line_starts_with_a_dot(
    spool: Spool, body: bytes, dot_lines: bool
) -> None:
    reader = await streamed(
        spool, b"From: alice@example.org\r\nSubject: s\r\n\r\n" + body + b".\r\n"
    )
    envelope = RelayEnvelope()
    reader.fill(envelope)
    assert envelope.staged is not None and envelope.staged.dot_lines is dot_lines
    reader.release()


def test_start_up_removes_what_a_crash_left_in_staging(tmp_path: Path) -> None:
    incoming = incoming_dir(tmp_path / "spool.db")
    incoming.mkdir()
    (incoming / "0123456789abcdef").write_bytes(b"")
    Spool.open(tmp_path / "spool.db").close()
    assert list(incoming.iterdir()) == []
    assert incoming.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "body_line",
    [BODY_LINE, b"plain text line, no dot starts it.\r\n"],
    ids=["dot lines: stuffed on the way out", "no dot line: sent with no stuffing pass"],
)
async def test_a_large_mail_reaches_the_provider_octet_for_octet(
    tmp_path: Path, body_line: bytes
) -> None:
    raw = HEAD + body_line * (3 * STREAM_THRESHOLD // len(body_line))
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(
            tmp_path / "relay", {"lab": provider_for(upstream)}, queue=FAST_RETRIES
        )
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            reply = await send(daemon, secret, ["bob@example.net"], raw)
            assert reply.startswith("250"), reply
            await eventually(lambda: len(upstream.handler.received) == 1)
    [mail] = upstream.handler.received
    expected = prepare(raw, ALICE, "alice@example.org", 0.0)
    assert mail.data.endswith(expected.body)
    assert b"Bcc:" not in mail.data
