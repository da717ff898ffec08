"""An app's Message-ID that relay cannot use everywhere is replaced on arrival, once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from relay.message import MESSAGE_ID, field_name, field_value, prepare, split_header
from relay.model import User
from tests.harness import running_daemon, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.rawsmtp import RawClient, Relay, Template, cloned_relay, make_template
from tests.test_end_to_end import find_by_subject, postfix_provider

ALICE = User(
    login="alice",
    provider="lab",
    email="alice@example.org",
    upstream_user="alice@example.org",
    local_hash="x",
    sealed_secret=None,
)
NOW = 1_790_000_000.0

UNUSABLE = {
    "esc": "<a\x1b[2Kb@app.example>",
    "u2028": "<a\u2028b@app.example>",
    "u2029": "<a\u2029b@app.example>",
    "nel": "<a\x85b@app.example>",
    "nul": "<a\x00b@app.example>",
    "del": "<a\x7fb@app.example>",
    "space": "<a b@app.example>",
    "field-forgery": "<x@app> login=bob",
    "non-ascii": "<caf\u00e9@app.example>",
    "over-long": "<" + "a" * 300 + "@app.example>",
}


def message_ids(header: bytes) -> list[str]:
    fields, _ = split_header(header + b"\r\n")
    return [field_value(f) for f in fields if field_name(f) == "message-id"]


def mail_with_id(message_id: str, subject: str = "hi") -> bytes:
    return (
        f"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n\r\nHello.\r\n"
    ).encode()


# --- prepare(): what the rest of relay gets ---


@pytest.mark.parametrize("bad", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_unusable_message_id_is_replaced_everywhere_with_one_relay_can_use(bad: str) -> None:
    prepared = prepare(mail_with_id(bad), ALICE, "alice@example.org", NOW)
    assert MESSAGE_ID.fullmatch(prepared.message_id)
    assert prepared.message_id.endswith(".replaced@example.org>")
    assert message_ids(prepared.upstream_header) == [prepared.message_id]
    assert message_ids(prepared.sent_header) == [prepared.message_id]
    assert bad.encode() not in prepared.upstream and bad.encode() not in prepared.sent_copy
    # The same app value gives the same replacement, so a retry is still a duplicate.
    again = prepare(mail_with_id(bad, "again"), ALICE, "alice@example.org", NOW + 5)
    assert again.message_id == prepared.message_id and again.app_message_id


@pytest.mark.parametrize(
    "good", ["<abc.123@app.example>", "abc@host-without-brackets", "<a=b+c/d@[127.0.0.1]>"]
)
def test_usable_message_id_is_kept_as_the_app_wrote_it(good: str) -> None:
    prepared = prepare(mail_with_id(good), ALICE, "alice@example.org", NOW)
    assert prepared.message_id == good and prepared.app_message_id
    assert message_ids(prepared.upstream_header) == [good]
    assert f"\r\nMessage-ID: {good}\r\n".encode() in prepared.upstream


def test_empty_message_id_is_replaced_by_a_fresh_one() -> None:
    prepared = prepare(mail_with_id(""), ALICE, "alice@example.org", NOW)
    assert MESSAGE_ID.fullmatch(prepared.message_id) and not prepared.app_message_id
    assert message_ids(prepared.upstream_header) == [prepared.message_id]


def test_second_message_id_field_is_dropped_and_the_first_kept() -> None:
    raw = b"Message-ID: <one@app>\r\nSubject: s\r\nMessage-Id: <two\x1b@app>\r\n\r\nb\r\n"
    prepared = prepare(raw, ALICE, "alice@example.org", NOW)
    assert prepared.message_id == "<one@app>"
    assert message_ids(prepared.upstream_header) == ["<one@app>"]
    assert b"\x1b" not in prepared.sent_copy


def test_unusable_message_id_behind_a_usable_one_is_not_what_relay_uses() -> None:
    raw = b"Message-ID: <a\xe2\x80\xa8b@app>\r\nMessage-ID: <ok@app>\r\n\r\nb\r\n"
    prepared = prepare(raw, ALICE, "alice@example.org", NOW)
    assert MESSAGE_ID.fullmatch(prepared.message_id) and prepared.message_id != "<ok@app>"
    assert message_ids(prepared.upstream_header) == [prepared.message_id]


# --- Through a running relay in front of a recording upstream ---


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The module's prepared relay directory."""
    return make_template(tmp_path_factory.mktemp("template"))


@pytest_asyncio.fixture
async def relay(template: Template, tmp_path: Path) -> AsyncIterator[Relay]:
    """A fresh relay and upstream for one test."""
    async with cloned_relay(template, tmp_path) as running:
        yield running


async def send_raw(client: RawClient, data: bytes) -> str:
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    assert (await client.send(b"RCPT TO:<bob@example.org>\r\n")).code == 250
    assert (await client.send(b"DATA\r\n")).code == 354
    reply = await client.send(data + b".\r\n")
    assert reply.code == 250, reply.text
    return reply.text


async def test_retry_of_a_mail_with_an_esc_message_id_is_still_recognised_as_a_duplicate(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    client = await relay.client()
    data = mail_with_id("<retry\x1b]0;owned\x07@app>")
    first = await send_raw(client, data)
    second = await send_raw(client, data)
    assert "sent" in first and "already accepted" in second, (first, second)
    [mail] = relay.upstream.handler.received
    assert b"\x1b" not in mail.data and b"\x07" not in mail.data
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in logged and "\x07" not in logged


# --- The crash loop of issue 21: a real Dovecot files the Sent copy ---


def sent_copies(peers: MailPeers, account: MailAccount, subject: str) -> list[bytes]:
    return [m for m in peers.mailbox_messages(account, "Sent") if subject.encode() in m]


async def wait_for_copies(
    peers: MailPeers, account: MailAccount, subject: str, timeout: float
) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(sent_copies, peers, account, subject)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@pytest.mark.peers
@pytest.mark.parametrize("bad", ["<esc\x1b[2K@app.example>", "<sep\u2028@app.example>"])
async def test_mail_with_esc_or_u2028_in_its_message_id_is_delivered_and_filed_once(
    mail_peers: MailPeers, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = write_config(
        tmp_path, {"agency": postfix_provider(mail_peers, "starttls")}, queue={"min_backoff": 1}
    )
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    subject = f"bad message id {uuid.uuid4().hex}"
    data = (
        f"From: {alice.address}\r\nTo: {bob.address}\r\nSubject: {subject}\r\n"
        f"Message-ID: {bad}\r\n\r\nHello Bob.\r\n"
    ).encode()
    caplog.set_level(logging.INFO)
    async with running_daemon(setup) as daemon:
        client = await RawClient.connect(daemon.addresses[0][1])
        try:
            await client.login(secret)
            assert (await client.send(f"MAIL FROM:<{alice.address}>\r\n".encode())).code == 250
            assert (await client.send(f"RCPT TO:<{bob.address}>\r\n".encode())).code == 250
            assert (await client.send(b"DATA\r\n")).code == 354
            reply = await client.send(data + b".\r\n")
            assert reply.code == 250 and "sent" in reply.text, reply.text
        finally:
            await client.close()
        [copy] = await wait_for_copies(mail_peers, alice, subject, timeout=20)
        await asyncio.sleep(2.0)  # a retried job would have filed a second copy by now
        assert len(await asyncio.to_thread(sent_copies, mail_peers, alice, subject)) == 1
        pending = await daemon.parts.spool.stats(time.time())
        assert pending.sent_copies == 0 and pending.queued == 0
    filed = email.message_from_bytes(copy, policy=email.policy.default)
    assert MESSAGE_ID.fullmatch(str(filed["Message-ID"]))
    assert "\x1b" not in str(filed["Message-ID"]) and "\u2028" not in str(filed["Message-ID"])
    [delivered] = await asyncio.to_thread(find_by_subject, mail_peers, bob, subject)
    assert b"\x1b" not in delivered and "\u2028".encode() not in delivered
    problems = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("relay")
    ]
    assert problems == [], [r.getMessage() for r in problems]
