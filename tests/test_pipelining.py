"""PIPELINING upstream (RFC 2920): the envelope and DATA in one write, every reply read back."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol
from hypothesis import example, given
from hypothesis import strategies as st

from relay.errors import DeliveryInDoubt, PermanentFailure, TemporaryFailure
from relay.message import DOT_ATOM_ADDRESS
from relay.model import Secret
from relay.providers.presets import Endpoint, TlsMode
from relay.tls import TlsContexts
from relay.upstream.account import SendOutcome, UpstreamAccount, UpstreamTimeouts
from relay.upstream.envelope import Upstream as UpstreamEnvelope
from relay.upstream.pipelining import ReplyIntake, envelope_commands
from relay.upstream.pool import PoolSettings, UpstreamPool
from relay.upstream.replyparser import ReplyParser
from tests.peers.mailpeers import MailPeers
from tests.test_client_features_peers import relay_for, tagged, wait_for
from tests.test_end_to_end import message_text
from tests.upstream import Upstream, recording_upstream

MESSAGE = b"From: alice@example.org\r\nSubject: pipelined\r\n\r\nthe body\r\n"
SENDER = "alice@example.org"
# Replies as a server pipelines them back: MAIL, a multi-line RCPT reply, a refusal, DATA.
WIRE = (
    b"250 2.1.0 Ok\r\n"
    b"250-2.1.5 first line\r\n250 2.1.5 second line\r\n"
    b"550 5.1.1 <x@example.net> no such user\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\r\n"
)
EXPECTED = [
    (250, "2.1.0 Ok"),
    (250, "2.1.5 first line\n2.1.5 second line"),
    (550, "5.1.1 <x@example.net> no such user"),
    (354, "End data with <CR><LF>.<CR><LF>"),
]


def parsed(*pieces: bytes) -> list[tuple[int, str]]:
    """Every reply a parser makes of the pieces, fed one after the other."""
    parser, replies = ReplyParser(), []
    for piece in pieces:
        parser.feed(piece)
        while (reply := parser.next_reply()) is not None:
            replies.append((reply.code, reply.message))
    return replies


def test_replies_cut_at_any_two_byte_offsets_read_the_same() -> None:
    for first in range(len(WIRE) + 1):
        for second in range(first, len(WIRE) + 1):
            pieces = (WIRE[:first], WIRE[first:second], WIRE[second:])
            assert parsed(*pieces) == EXPECTED, (first, second)


def test_replies_fed_a_byte_at_a_time_read_the_same() -> None:
    assert parsed(*(WIRE[i : i + 1] for i in range(len(WIRE)))) == EXPECTED


async def test_a_reply_reads_as_aiosmtplibs_own_reader_reads_it() -> None:
    protocol = SMTPProtocol()
    protocol._buffer.extend(b"250-2.1.5 first line\r\n250 2.1.5 second line\r\n")
    theirs = protocol._read_response_from_buffer()
    assert theirs is not None and parsed(b"250-2.1.5 first line\r\n250 2.1.5 second line\r\n") == [
        (theirs.code, theirs.message)
    ]


@pytest.mark.parametrize(
    "wire",
    [
        b"hello\r\n",  # no code
        b"250-first\r\n550 second\r\n",  # RFC 5321 §4.2.1: one code for all lines
        b"25 short\r\n",
    ],
)
def test_a_malformed_reply_is_refused(wire: bytes) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed"):
        ReplyParser().feed(wire)


def test_an_endless_reply_is_refused_at_aiosmtplibs_bound() -> None:
    parser = ReplyParser()
    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        for _ in range(100):
            parser.feed(b"250-" + b"x" * 1000 + b"\r\n")
    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        ReplyParser().feed(b"250 " + b"y" * 9000)


async def test_the_intake_wakes_for_each_reply_however_the_segments_fall() -> None:
    for cut in range(len(WIRE) + 1):
        intake = ReplyIntake(SMTPProtocol())
        intake.data_received(WIRE[:cut])
        replies = [await _reply_fed(intake, WIRE[cut:])]
        replies += [await intake.reply(1.0) for _ in EXPECTED[1:]]
        assert [(r.code, r.message) for r in replies] == EXPECTED, cut


async def _reply_fed(intake: ReplyIntake, rest: bytes) -> aiosmtplib.SMTPResponse:
    """The next reply, waited for before the rest arrives."""
    waiting = asyncio.ensure_future(intake.reply(1.0))
    await asyncio.sleep(0)
    intake.data_received(rest)
    return await waiting


async def test_a_connection_lost_while_replies_are_awaited_is_a_disconnect() -> None:
    intake = ReplyIntake(SMTPProtocol())
    intake.data_received(b"250 2.1.0 Ok\r\n250 2.1")
    assert (await intake.reply(1.0)).code == 250
    intake.connection_lost(None)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await intake.reply(1.0)


async def test_a_silent_server_times_out_as_one_commands_reply_does() -> None:
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await ReplyIntake(SMTPProtocol()).reply(0.05)


@asynccontextmanager
async def pool_to(tmp_path: Path, *, pipelining: bool = True) -> AsyncIterator[_Scene]:
    """An UpstreamPool and a recording upstream that announces PIPELINING or not."""
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        upstream.handler.pipelining = pipelining
        settings = PoolSettings("relay.test", UpstreamTimeouts(5.0, 5.0), 2, 30.0)
        pool = UpstreamPool(settings, TlsContexts())
        try:
            yield _Scene(pool, upstream)
        finally:
            await pool.close_all()


class _Scene:
    def __init__(self, pool: UpstreamPool, upstream: Upstream) -> None:
        self.pool, self.upstream, self.handler = pool, upstream, upstream.handler
        endpoint = Endpoint(upstream.host, upstream.port, TlsMode.STARTTLS)
        self.account = UpstreamAccount(
            endpoint, upstream.handler.login, Secret(upstream.handler.password), upstream.ca_file
        )

    async def send(self, *recipients: str, data: bytes = MESSAGE) -> SendOutcome:
        return await self.pool.send("alice|lab", self.account, SENDER, list(recipients), data)

    def mail_chunks(self) -> list[bytes]:
        """What arrived in each read from the MAIL command on, of the last mail sent."""
        chunks = self.handler.chunks
        start = max(i for i, chunk in enumerate(chunks) if chunk.startswith(b"MAIL FROM"))
        return chunks[start:]


async def test_mail_every_rcpt_and_data_arrive_in_one_write_and_the_body_in_a_second(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:
        outcome = await scene.send("b@example.net", "c@example.net", "d@example.net")
        envelope, body = scene.mail_chunks()[:2]
    assert envelope == (
        b"MAIL FROM:<alice@example.org> SIZE=57\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nRCPT TO:<d@example.net>\r\n"
        b"DATA\r\n"
    )
    assert body == MESSAGE + b".\r\n"
    assert sorted(outcome.delivered) == ["b@example.net", "c@example.net", "d@example.net"]
    [received] = scene.handler.received
    assert received.recipients == ["b@example.net", "c@example.net", "d@example.net"]
    assert received.data == MESSAGE


PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@given(st.from_regex(DOT_ATOM_ADDRESS, fullmatch=True) | st.text(PRINTABLE_ASCII, max_size=40))
@example('"quoted local"@example.org')
@example("Name <a@example.org>")
@example("")
def test_every_address_is_written_as_aiosmtplib_would_quote_it(address: str) -> None:
    expected = b"MAIL FROM:" + quote_address(address).encode() + b"\r\nDATA\r\n"
    assert envelope_commands(address, [], UpstreamEnvelope(), []) == expected


async def test_refused_recipients_among_accepted_ones_are_sorted_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:
        scene.handler.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
        scene.handler.rcpt_replies["busy@example.net"] = "450 4.2.1 try again later"
        outcome = await scene.send("b@example.net", "gone@example.net", "busy@example.net")
    assert list(outcome.delivered) == ["b@example.net"]
    assert outcome.failed["gone@example.net"].line == "550 5.1.1 no such user"
    assert outcome.deferred["busy@example.net"].line == "450 4.2.1 try again later"
    assert [mail.recipients for mail in scene.handler.received] == [["b@example.net"]]


async def test_every_recipient_refused_sends_no_body_and_resets_the_session_for_the_next(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:
        scene.handler.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
        outcome = await scene.send("gone@example.net")
        after = b"".join(scene.mail_chunks())
        assert outcome.reply is None and list(outcome.failed) == ["gone@example.net"]
        # RFC 2920 §3.1: DATA got 503 from the server, so RSET follows and no body.
        assert after.endswith(b"DATA\r\nRSET\r\n")
        assert b"the body" not in scene.handler.raw
        delivered = await scene.send("b@example.net")
    assert list(delivered.delivered) == ["b@example.net"]
    assert scene.pool.connections_opened == 1  # the reset session carried the next mail


async def test_data_taken_though_every_recipient_was_refused_gets_a_lone_dot_not_the_body(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:

        async def refuse_but_keep(
            server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
        ) -> str:
            envelope.rcpt_tos.append(address)  # so this server answers DATA with 354 anyway
            return "550 5.1.1 no such user"

        scene.handler.handle_RCPT = refuse_but_keep  # type: ignore[method-assign]  # this server
        outcome = await scene.send("gone@example.net")
        after = b"".join(scene.mail_chunks())
    # RFC 2920 §3.1: the client must check DATA's reply; on 354 it sends a single dot.
    assert outcome.reply is None and list(outcome.failed) == ["gone@example.net"]
    assert after.endswith(b"DATA\r\n.\r\nRSET\r\n")
    assert b"the body" not in scene.handler.raw


async def test_a_refused_mail_from_fails_the_mail_with_the_providers_words(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:
        scene.handler.mail_replies.append("553 5.7.1 sender not yours")
        with pytest.raises(PermanentFailure, match="553 5.7.1 sender not yours"):
            await scene.send("b@example.net")
    assert scene.handler.received == [] and b"the body" not in scene.handler.raw


async def test_a_421_to_a_reused_sessions_mail_retries_on_a_fresh_session(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:
        await scene.send("b@example.net")
        scene.handler.mail_replies.append("421 4.4.2 idle too long")
        outcome = await scene.send("c@example.net")
    assert list(outcome.delivered) == ["c@example.net"]
    assert scene.pool.connections_opened == 2
    assert [mail.recipients for mail in scene.handler.received] == [
        ["b@example.net"],
        ["c@example.net"],
    ]


@pytest.mark.parametrize(
    "reply", ["421 4.7.0 closing channel", "550 5.4.5 Daily user sending limit exceeded"]
)
async def test_a_421_or_a_quota_reply_mid_pipeline_defers_the_whole_mail(
    tmp_path: Path, reply: str
) -> None:
    async with pool_to(tmp_path) as scene:
        scene.handler.rcpt_replies["c@example.net"] = reply
        with pytest.raises(TemporaryFailure):
            await scene.send("b@example.net", "c@example.net", "d@example.net")
        assert scene.handler.received == [] and b"the body" not in scene.handler.raw
        # The session with replies left unread is closed, never reused.
        del scene.handler.rcpt_replies["c@example.net"]
        await scene.send("b@example.net")
    assert scene.pool.connections_opened == 2


async def test_a_connection_lost_mid_pipeline_is_an_ordinary_upstream_error(
    tmp_path: Path,
) -> None:
    async with pool_to(tmp_path) as scene:

        async def drop(
            server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
        ) -> str:
            assert server.transport is not None
            server.transport.close()
            return "250 OK"

        scene.handler.handle_RCPT = drop  # type: ignore[method-assign]  # this test's server
        with pytest.raises(TemporaryFailure) as lost:
            await scene.send("b@example.net")
    assert not isinstance(lost.value, DeliveryInDoubt)
    assert scene.handler.received == []


async def test_a_server_without_pipelining_gets_one_command_a_write(tmp_path: Path) -> None:
    async with pool_to(tmp_path, pipelining=False) as scene:
        outcome = await scene.send("b@example.net", "c@example.net")
        chunks = scene.mail_chunks()
    assert chunks[:4] == [
        b"MAIL FROM:<alice@example.org> SIZE=57\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"RCPT TO:<c@example.net>\r\n",
        b"DATA\r\n",
    ]
    assert sorted(outcome.delivered) == ["b@example.net", "c@example.net"]


@pytest.mark.peers
def test_through_postfix_a_mail_to_three_with_one_unknown_reaches_the_other_two(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    # The real Postfix announces PIPELINING: relay's envelope goes to it in one write.
    alice, bob, carol = (mail_peers.accounts[name] for name in ("alice", "bob", "carol"))
    subject = tagged("pipelined to three")
    recipients = [bob.address, "nobody@example.org", carol.address]
    with relay_for(mail_peers, tmp_path) as (process, secret):
        with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
            client.login("alice", secret)
            client.sendmail(alice.address, recipients, message_text(alice.address, "", subject))
        for account in (bob, carol):
            wait_for(mail_peers, account, subject.encode())
        log = process.log()
    assert "User unknown" in mail_peers.postfix_log()
    assert "nobody@example.org" in log
