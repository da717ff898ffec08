"""DATA read in pieces: where it ends, what is kept, and the limits, however the bytes arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from relay.listener.dataread import DataBudget, DataProblem, DataReader, read_data
from tests.harness import running_daemon, write_config
from tests.rawsmtp import RawClient
from tests.test_queue import eventually, relay_and_upstream, send
from tests.test_server import MESSAGE, provider_for
from tests.upstream import recording_upstream

ROOMY = 10**9


def feed_in_pieces(wire: bytes, size: int, budget: DataBudget | None = None) -> DataReader:
    """A reader fed wire in pieces of size octets; it must see the end at the last octet."""
    reader = DataReader(None, budget or DataBudget(ROOMY))
    pieces = [wire[i : i + size] for i in range(0, len(wire), size)]
    ends = [reader.feed(piece) for piece in pieces]
    assert ends == [False] * (len(pieces) - 1) + [True]
    return reader


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...x\r\n..\r\n.\r\n", b"..x\r\n.\r\n"),
        (b"a.\r\nb\r\n.\r\n", b"a.\r\nb\r\n"),
        # RFC 5321 §4.1.1.4: a dot line after a bare LF or CR is content, not the end.
        (b"a\n.\r\nb\r.\r\n\r\n.\r\n", b"a\n.\r\nb\r.\r\n\r\n"),
        (b"a\r\n.\n.\r\r\n.\r\n", b"a\r\n\n.\r\r\n"),
    ],
)
def test_the_data_ends_only_at_crlf_dot_crlf_and_loses_its_stuffing_dots(
    wire: bytes, content: bytes, size: int
) -> None:
    reader = feed_in_pieces(wire, size)
    assert reader.problem is None
    assert reader.content() == content


@pytest.mark.parametrize("size", [1, 100, 5000])
def test_a_line_of_1001_octets_is_taken_and_one_of_1002_is_refused_with_500(size: int) -> None:
    longest = b"." + b"x" * 998 + b"\r\n"  # 1001 with its stuffing dot and CRLF
    taken = feed_in_pieces(b"a\r\n" + longest + b".\r\n", size)
    assert taken.problem is None and taken.content() == b"a\r\n" + longest[1:]
    refused = feed_in_pieces(b"a\r\n" + b"y" + longest + b"b\r\n.\r\n", size)
    assert refused.problem is DataProblem.TOO_LONG
    assert refused.problem.value.code == 500


def test_an_endless_line_is_refused_and_the_end_line_after_it_still_ends_the_data() -> None:
    reader = feed_in_pieces(b"z" * 100_000 + b"\r\n.\r\n", 4096)
    assert reader.problem is DataProblem.TOO_LONG and reader.content() == b""


def test_data_over_the_size_limit_is_refused_with_552() -> None:
    reader = DataReader(10, DataBudget(ROOMY))
    assert reader.feed(b"0123456789\r\n.\r\n")
    assert reader.problem is DataProblem.TOO_MUCH
    assert reader.problem.value.line.startswith("552 5.3.4 ")


def test_data_past_the_shared_budget_is_refused_with_452_and_frees_its_share() -> None:
    budget = DataBudget(100)
    first = DataReader(None, budget)
    assert not first.feed(b"x" * 60 + b"\r\n")
    second = feed_in_pieces(b"y" * 60 + b"\r\n.\r\n", 10, budget)
    assert second.problem is DataProblem.NO_ROOM
    assert second.problem.value.line.startswith("452 4.3.1 ")
    assert budget.held == 62
    first.release()
    assert budget.held == 0


async def test_what_follows_the_end_line_is_left_for_the_next_command() -> None:
    stream = asyncio.StreamReader(limit=1001)
    lines = b"x" * 98 + b"\r\n"
    stream.feed_data(lines * 50 + b".\r\nQUIT\r\n")
    reader = DataReader(None, DataBudget(ROOMY))
    await read_data(stream, reader)
    assert reader.content() == lines * 50
    assert await stream.readline() == b"QUIT\r\n"


async def test_mail_arriving_while_the_data_budget_is_spent_gets_452_and_later_goes_through(
    tmp_path: Path,
) -> None:
    async with relay_and_upstream(tmp_path) as (_, daemon, upstream, secret):
        budget = daemon.tracker.data_budget
        budget.held = budget.limit  # as if other sessions held it all
        reply = await send(daemon, secret, ["bob@example.net"])
        assert reply.startswith("452 4.3.1 "), reply
        assert upstream.handler.received == []
        budget.held = 0
        assert (await send(daemon, secret, ["bob@example.net"], MESSAGE)).startswith("250 ")
        assert len(upstream.handler.received) == 1
        assert budget.held == 0


async def test_the_configured_memory_budget_is_shared_by_all_sessions_sending_at_once(
    tmp_path: Path,
) -> None:
    budget = 64 * 1024
    forty_kb = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 40
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        setup = write_config(
            tmp_path / "relay",
            {"lab": provider_for(upstream)},
            limits={"max_message_bytes": budget, "max_data_in_memory": budget},
        )
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            first = await RawClient.connect(daemon.addresses[0][1])
            try:
                await first.login(secret)
                assert (await first.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
                assert (await first.send(b"RCPT TO:<bob@example.net>\r\n")).code == 250
                assert (await first.send(b"DATA\r\n")).code == 354
                first.writer.write(forty_kb)  # the first app is still sending its mail
                # Once relay holds this much of it, another 40 KB no longer fit.
                room_left = budget - len(forty_kb)
                await eventually(lambda: daemon.tracker.data_budget.held > room_left)
                second = await send(daemon, secret, ["carol@example.net"], forty_kb)
                assert second.startswith("452 4.3.1 "), second
                assert (await first.send(b".\r\n")).code == 250
            finally:
                await first.close()
            again = await send(daemon, secret, ["carol@example.net"], forty_kb)
            assert again.startswith("250 "), again
    assert [mail.recipients for mail in upstream.handler.received] == [
        ["bob@example.net"],
        ["carol@example.net"],
    ]
