"""SMTPUTF8, DSN parameters, size limits and relay's wording, without the real peers (issue 22)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosmtplib
import pytest

from relay.errors import PermanentFailure
from relay.listener.params import mail_dsn, rcpt_dsn
from relay.listener.reworded import AIOSMTPD_REPLIES, reworded
from relay.model import EnvelopeParams, Notify, RecipientNotice, xtext_decode
from relay.policy import message_size_limit, size_refusal, utf8_address_refusal
from relay.queue.dsn import build_dsn
from relay.queue.records import NewMessage
from relay.queue.schema import SCHEMA_VERSION, open_database
from relay.queue.spool import Spool
from relay.reply import Reply
from relay.upstream.envelope import upstream_envelope
from tests.test_server import MESSAGE, Scene, start_scene

MEMORY = 256 * 1024 * 1024


def test_dsn_parameters_are_taken_out_of_mail_and_rcpt_with_their_case_kept() -> None:
    assert mail_dsn("FROM:<a@example.org> SIZE=10 RET=hdrs ENVID=Ab+2Bc") == (
        "FROM:<a@example.org> SIZE=10",
        "HDRS",
        "Ab+2Bc",
    )
    notice = RecipientNotice(frozenset({Notify.SUCCESS, Notify.DELAY}), "rfc822;B@Example.org")
    assert rcpt_dsn("TO:<b@example.org> NOTIFY=success,Delay ORCPT=rfc822;B@Example.org") == (
        "TO:<b@example.org>",
        notice,
    )
    # A quoted local part with a space and a ">" is still one address.
    never = RecipientNotice(frozenset({Notify.NEVER}))
    assert rcpt_dsn('TO:<"a >b"@example.org> NOTIFY=NEVER') == ('TO:<"a >b"@example.org>', never)


@pytest.mark.parametrize(
    "arg",
    [
        "TO:<b@example.org> NOTIFY=NEVER,SUCCESS",
        "TO:<b@example.org> NOTIFY=SOMETIMES",
        "TO:<b@example.org> NOTIFY=",
        "TO:<b@example.org> ORCPT=b@example.org",
        "TO:<b@example.org> NOTIFY=FAILURE NOTIFY=DELAY",
    ],
)
def test_a_malformed_rcpt_dsn_parameter_gets_501_5_5_4(arg: str) -> None:
    refused = rcpt_dsn(arg)
    assert isinstance(refused, Reply)
    assert (refused.code, refused.enhanced) == (501, "5.5.4")


def test_ret_other_than_full_or_hdrs_and_an_overlong_envid_are_refused() -> None:
    for arg in ("FROM:<a@example.org> RET=ALL", f"FROM:<a@example.org> ENVID={'x' * 101}"):
        refused = mail_dsn(arg)
        assert isinstance(refused, Reply) and refused.line.startswith("501 5.5.4 ")


def test_every_aiosmtpd_reply_relay_rewords_has_an_enhanced_code_and_no_error_prefix() -> None:
    for said, reply in AIOSMTPD_REPLIES.items():
        line = reworded(said)
        assert line == reply.line
        assert reply.enhanced and reply.enhanced[0] == str(reply.code)[0], said
        assert "Error" not in line
    assert reworded('500 Error: command "FROB" not recognized') == (
        "500 5.5.1 command 'FROB' not recognized"
    )
    assert reworded("500 Error: (ValueError) boom").startswith("451 4.3.0 ")
    # The greeting, EHLO's lines and HELO's answer take no enhanced code (RFC 2034 §3).
    for line in ("220 relay.test relay", "250-PIPELINING", "250 relay.test", "354 End data"):
        assert reworded(line) == line


def test_the_limit_follows_the_provider_and_an_explicit_limit_caps_it() -> None:
    gmail = 35882577
    learned = message_size_limit("agency", 41943040, gmail, None, MEMORY)
    assert learned.octets == 41943040 and "announces" in learned.whose
    documented = message_size_limit("agency", None, gmail, None, MEMORY)
    assert documented.octets == gmail and "documented" in documented.whose
    capped = message_size_limit("agency", None, gmail, 10_000_000, MEMORY)
    assert (capped.octets, capped.whose) == (10_000_000, "relay's limits.max_message_bytes")
    unknown = message_size_limit("lab", None, None, None, MEMORY)
    assert unknown.octets == MEMORY and "'lab' not asked yet" in unknown.whose
    refusal = size_refusal(40 * 1_000_000, documented)
    assert refusal is not None
    assert refusal.reply.line == (
        "552 5.3.4 message too big: the limit is 35 MB (35882577 bytes), the documented "
        "limit of provider 'agency'"
    )
    assert size_refusal(gmail, documented) is None


def test_a_utf8_address_needs_smtputf8_and_a_provider_that_offers_it() -> None:
    assert utf8_address_refusal("bob@example.org", False, "agency", False) is None
    assert utf8_address_refusal("jörg@example.org", True, "agency", None) is None
    without = utf8_address_refusal("jörg@example.org", False, "agency", True)
    lacking = utf8_address_refusal("jörg@example.org", True, "agency", False)
    assert without is not None and without.reply.line.startswith("553 5.6.7 ")
    assert lacking is not None and lacking.reply.line.startswith("553 5.6.7 provider 'agency' ")
    broken = utf8_address_refusal("j\udcf6rg@example.org", True, "agency", True)
    assert broken is not None and broken.reply.line.startswith("553 5.1.3 ")


def test_dsn_parameters_go_upstream_only_to_a_server_that_offers_dsn() -> None:
    params = EnvelopeParams(
        False, "HDRS", "id1", (("b@example.org", RecipientNotice(frozenset({Notify.NEVER}))),)
    )
    plain = upstream_envelope({"size": "100"}, "mx:587", "a@example.org", ["b@example.org"], params)
    assert (plain.mail, plain.rcpt, plain.dsn_passed) == ([], {}, False)
    dsn = upstream_envelope({"dsn": ""}, "mx:587", "a@example.org", ["b@example.org"], params)
    assert dsn.mail == ["RET=HDRS", "ENVID=id1"]
    assert dsn.rcpt == {"b@example.org": ["NOTIFY=NEVER"]}


def test_a_utf8_address_for_a_server_without_smtputf8_fails_for_good_naming_it() -> None:
    with pytest.raises(PermanentFailure) as failed:
        upstream_envelope({}, "mx:587", "a@example.org", ["jörg@example.org"], EnvelopeParams(True))
    assert failed.value.reply.line.startswith("553 5.6.7 mx:587 offers no SMTPUTF8")
    utf8 = upstream_envelope(
        {"smtputf8": ""}, "mx:587", "a@example.org", ["jörg@example.org"], EnvelopeParams(True)
    )
    assert (utf8.mail, utf8.encoding) == (["SMTPUTF8"], "utf-8")


def test_relays_own_dsn_returns_the_whole_mail_for_ret_full_and_names_envid_and_orcpt() -> None:
    notice = RecipientNotice(frozenset({Notify.FAILURE}), "rfc822;B+2Bx@example.org")
    params = EnvelopeParams(False, "FULL", "env-1", (("b@example.org", notice),))
    original = b"Subject: hi\r\n\r\nthe whole body\r\n"
    report = build_dsn(
        reporting_host="relay.test",
        user_email="a@example.org",
        original_sender="a@example.org",
        original_header=b"Subject: hi\r\n",
        received_at=0.0,
        now=1.0,
        remote="mx",
        failed={"b@example.org": Reply(550, "5.1.1", "no such user")},
        params=params,
        original=original,
    )
    assert b"Content-Type: message/rfc822\r\n\r\n" + original in report
    assert b"Original-Envelope-Id: env-1\r\n" in report
    assert b"Original-Recipient: rfc822; B+x@example.org\r\n" in report
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"


async def test_envelope_parameters_survive_the_spool(tmp_path: Path) -> None:
    params = EnvelopeParams(
        True, "HDRS", "e1", (("jörg@example.org", RecipientNotice(frozenset({Notify.SUCCESS}))),)
    )
    spool = Spool.open(tmp_path / "spool.db")
    try:
        message = NewMessage(
            id="q1",
            login="alice",
            sender="a@example.org",
            message_id="<m@x>",
            recipients=("jörg@example.org", "b@example.org"),
            upstream_data=MESSAGE,
            body_offset=0,
            sent_header=b"",
            received_at=1.0,
            params=params,
        )
        await spool.enqueue(message, 0.0)
        entry = await spool.entry("q1")
    finally:
        spool.close()
    assert entry is not None and entry.params == params
    assert entry.params.notice("b@example.org").wants(Notify.FAILURE)


def test_a_schema_3_spool_gains_the_envelope_columns(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    open_database(path).close()
    with sqlite3.connect(path) as db:
        for table, column in (("messages", "smtputf8"), ("messages", "dsn_ret")):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("ALTER TABLE messages DROP COLUMN dsn_envid")
        db.execute("ALTER TABLE recipients DROP COLUMN notify")
        db.execute("ALTER TABLE recipients DROP COLUMN orcpt")
        # Schema 5's body file columns came later still.
        for table, column in (
            ("bodies", "file_dot_lines"),
            ("bodies", "file_size"),
            ("bodies", "file"),
            ("sent_jobs", "file_size"),
            ("sent_jobs", "file"),
        ):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 3")
    db = open_database(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = {row[1] for row in db.execute("PRAGMA table_info(recipients)")}
        assert {"notify", "orcpt"} <= columns
    finally:
        db.close()


async def test_a_utf8_recipient_for_a_provider_without_smtputf8_gets_553_naming_it(
    tmp_path: Path,
) -> None:
    # The recording upstream (aiosmtpd) offers no SMTPUTF8; relay learns that at its first
    # session and from then on refuses such an address at RCPT.
    async for scene in start_scene(tmp_path):
        await send_one(scene)
        client = await scene.client()
        try:
            await client.mail("alice@example.org", options=["SMTPUTF8"])
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("jörg@example.net", encoding="utf-8")
        finally:
            client.close()
        assert refused.value.code == 553
        assert refused.value.message.startswith("5.6.7 provider 'lab' does not take")


async def test_the_size_in_ehlo_after_auth_is_the_users_provider_limit(tmp_path: Path) -> None:
    async for scene in start_scene(tmp_path, limits={"max_message_bytes": 5_000_000}):
        client = await scene.client()
        try:
            await client.ehlo()
            assert client.esmtp_extensions["size"] == "5000000"
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.mail("alice@example.org", options=["SIZE=6000000"])
        finally:
            client.close()
        assert refused.value.code == 552
        assert "5 MB (5000000 bytes), relay's limits.max_message_bytes" in refused.value.message


async def send_one(scene: Scene) -> None:
    """One plain mail, so relay has had a session with the upstream."""
    client = await scene.client()
    try:
        await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    finally:
        await client.quit()
