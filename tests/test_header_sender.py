"""The visible sender is bound to the login: From and Sender name the user, Reply-To is free."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.message import (
    _PLAIN_MAILBOX,
    addresses_by_both_parsers,
    mailbox_addresses,
    prepare,
    sender_fields,
)
from relay.model import User
from relay.policy import header_sender_refusal, sender_refusal
from tests.harness import running_daemon
from tests.rawsmtp import Relay, Reply, Template, clone, make_template, rewrite_config
from tests.test_server import provider_for
from tests.upstream import recording_upstream

ALLOWED = "allowed: alice@example.org"


@dataclass(frozen=True)
class Logins:
    """The module's template: alice (own From only) and carol (--rewrite-from)."""

    template: Template
    carol: str


@pytest.fixture(scope="module")
def logins(tmp_path_factory: pytest.TempPathFactory) -> Logins:
    """alice from the shared template, and carol who has --rewrite-from, added once."""
    template = make_template(tmp_path_factory.mktemp("template"))
    carol = template.setup.add_user(
        "carol",
        "lab",
        "carol@example.org",
        "upstream-Pa55",
        "--rewrite-from",
        "--display-name",
        "Carol Example",
        # The recording upstream takes one account: carol sends through alice's.
        "--upstream-user",
        "alice@example.org",
    )
    return Logins(template, carol)


@asynccontextmanager
async def relay_for(logins: Logins, root: Path, **provider: Any) -> AsyncIterator[Relay]:
    """A private relay (a copy of the template) in front of a recording upstream."""
    setup = clone(logins.template, root)
    async with recording_upstream(trustme.CA(), root) as upstream:
        rewrite_config(setup, providers={"lab": provider_for(upstream, **provider)})
        async with running_daemon(setup) as daemon:
            running = Relay(daemon, upstream, logins.template.secret, setup)
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.close()


@pytest_asyncio.fixture
async def relay(logins: Logins, tmp_path: Path) -> AsyncIterator[Relay]:
    """A fresh relay whose provider does not enforce From itself (the default)."""
    async with relay_for(logins, tmp_path) as running:
        yield running


async def send(relay: Relay, header: str, login: bytes = b"alice", secret: str = "") -> Reply:
    """One mail through a real SMTP session; the reply to its end of DATA."""
    client = await relay.client(logged_in=False)
    await client.login(secret or relay.secret, login)
    sender = "carol@example.org" if login == b"carol" else "alice@example.org"
    assert (await client.send(f"MAIL FROM:<{sender}>\r\n".encode())).code == 250
    assert (await client.send(b"RCPT TO:<bob@example.test>\r\n")).code == 250
    assert (await client.send(b"DATA\r\n")).code == 354
    message = f"{header}To: bob@example.test\r\nSubject: hi\r\n\r\nHello Bob.\r\n"
    reply = await client.send(message.encode() + b".\r\n")
    assert (await client.send(b"QUIT\r\n")).code == 221
    return reply


async def assert_refused_and_nothing_upstream(relay: Relay, reply: Reply, header: str) -> None:
    assert reply.code == 553, reply.text
    assert f"553 5.7.1 {header}: header" in reply.text and ALLOWED in reply.text, reply.text
    assert await relay.queued() == 0
    assert relay.upstream.handler.received == []
    assert relay.upstream.handler.connections == 0


def delivered_header(relay: Relay) -> email.message.EmailMessage:
    [mail] = relay.upstream.handler.received
    parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# --- The attack of issue 21 and its neighbours, through a real session ---


async def test_alice_sending_from_bob_gets_553_naming_from_and_nothing_reaches_upstream(
    relay: Relay,
) -> None:
    reply = await send(relay, "From: Bob Builder <bob@example.test>\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "From")
    assert "<bob@example.test> is not yours to send as" in reply.text


async def test_alice_with_her_own_from_but_bobs_sender_gets_553_naming_sender(
    relay: Relay,
) -> None:
    reply = await send(relay, "From: alice@example.org\r\nSender: bob@example.test\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "Sender")
    assert "<bob@example.test>" in reply.text


async def test_mail_with_her_own_from_and_sender_passes_unchanged(relay: Relay) -> None:
    header = "From: Alice Example <Alice@Example.ORG>\r\nSender: alice@example.org\r\n"
    reply = await send(relay, header)
    assert reply.code == 250, reply.text
    parsed = delivered_header(relay)
    assert parsed["From"] == "Alice Example <Alice@Example.ORG>"
    assert parsed["Sender"] == "alice@example.org"


async def test_reply_to_anyone_passes(relay: Relay) -> None:
    header = "From: alice@example.org\r\nReply-To: Anyone <attacker@evil.test>\r\n"
    reply = await send(relay, header)
    assert reply.code == 250, reply.text
    assert delivered_header(relay)["Reply-To"] == "Anyone <attacker@evil.test>"


async def test_mail_without_from_passes_as_before(relay: Relay) -> None:
    assert (await send(relay, "")).code == 250


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.org <bob@example.test>",
        "<bob@example.test>alice@example.org",
        "bob@example.test <alice@example.org>",
        "alice@example.org, bob@example.test",
        "group: alice@example.org, bob@example.test;",
        '"alice@example.org"@example.test',
        "=?utf-8?q?bob=40example.test?=",
        "bob@example.test\x1b",
    ],
    ids=[
        "addr-then-angle",
        "angle-then-addr",
        "foreign-first",
        "list",
        "group",
        "quoted-local",
        "encoded-word",
        "esc",
    ],
)
async def test_from_that_either_parser_reads_as_someone_else_gets_553(
    relay: Relay, value: str
) -> None:
    reply = await send(relay, f"From: {value}\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "From")


LONG_BUT_OWN = "\r\n ".join(["Alice"] + ["x" * 400] * 3 + ["<alice@example.org>"])


@pytest.mark.parametrize(
    "value",
    ["Undisclosed:;", "", "MyApp", "(" * 900, LONG_BUT_OWN],
    ids=["empty-group", "empty", "no-address", "nested-comments", "over-long-even-if-own"],
)
async def test_from_without_a_readable_address_gets_553(relay: Relay, value: str) -> None:
    reply = await send(relay, f"From: {value}\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "From")


async def test_a_second_from_field_naming_bob_is_refused_too(relay: Relay) -> None:
    reply = await send(relay, "From: alice@example.org\r\nfrom: bob@example.test\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "From")


async def test_folded_from_naming_bob_is_refused(relay: Relay) -> None:
    reply = await send(relay, "From: Bob\r\n Builder\r\n <bob@example.test>\r\n")
    await assert_refused_and_nothing_upstream(relay, reply, "From")


async def test_rewrite_from_user_gets_both_from_and_sender_rewritten(
    relay: Relay, logins: Logins
) -> None:
    header = "From: Shop <noreply@shop.example>\r\nSender: bob@example.test\r\n"
    reply = await send(relay, header, login=b"carol", secret=logins.carol)
    assert reply.code == 250, reply.text
    parsed = delivered_header(relay)
    assert parsed["From"] == "Carol Example <carol@example.org>"
    assert parsed["Sender"] == "Carol Example <carol@example.org>"
    [mail] = relay.upstream.handler.received
    assert b"bob@example.test\r\nTo" not in mail.data and b"shop.example" not in mail.data


async def test_provider_that_enforces_from_itself_may_allow_a_foreign_from_but_not_sender(
    logins: Logins, tmp_path: Path
) -> None:
    async with relay_for(logins, tmp_path, allow_foreign_from=True) as relay:
        reply = await send(relay, "From: Alice as Support <support@example.net>\r\n")
        assert reply.code == 250, reply.text
        assert delivered_header(relay)["From"] == "Alice as Support <support@example.net>"
        reply = await send(relay, "From: support@example.net\r\nSender: bob@example.test\r\n")
        assert reply.code == 553 and "5.7.1 Sender: header" in reply.text, reply.text
        assert len(relay.upstream.handler.received) == 1


# --- The pure pieces ---

ALICE = User(
    login="alice",
    provider="agency",
    email="alice@gmail.com",
    upstream_user="alice@gmail.com",
    local_hash="x",
    sealed_secret=None,
    aliases=("help@example.org",),
)


@pytest.mark.parametrize(
    "value", ["A.L.I.C.E+news@gmail.com", "Alice <alice@googlemail.com>", "help@EXAMPLE.org"]
)
def test_gmail_aware_comparison_is_the_envelope_checks(value: str) -> None:
    fields = [("From", mailbox_addresses(value))]
    assert header_sender_refusal(fields, ALICE, "gmail") is None
    assert sender_refusal(mailbox_addresses(value)[0], ALICE, "gmail") is None


def test_gmail_spelling_of_the_address_counts_only_at_gmail() -> None:
    fields = [("From", ("a.lice+x@gmail.com",))]
    assert header_sender_refusal(fields, ALICE, "gmail") is None
    assert header_sender_refusal(fields, ALICE, None) is not None


def test_refusal_lists_every_allowed_address() -> None:
    refusal = header_sender_refusal([("Sender", ("bob@example.test",))], ALICE, "gmail")
    assert refusal is not None
    assert refusal.reply.line == (
        "553 5.7.1 Sender: header <bob@example.test> is not yours to send as; "
        "allowed: alice@gmail.com, help@example.org"
    )


@settings(max_examples=400, deadline=None)
@given(st.from_regex(_PLAIN_MAILBOX, fullmatch=True))
def test_plain_from_forms_read_as_both_parsers_read_them(value: str) -> None:
    # The fast path skips the parsers only where they could not disagree with it.
    assert mailbox_addresses(value) == addresses_by_both_parsers(value.strip())


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.org (bob@evil.test)",
        "Alice <alice@example.org>, bob@evil.test",
        '"bob@evil.test" <alice@example.org>',
        "=?utf-8?q?bob@evil.test?= <alice@example.org>",
        "alice@example.org <bob@evil.test>",
    ],
)
def test_other_forms_still_get_both_parsers(value: str) -> None:
    assert _PLAIN_MAILBOX.fullmatch(value) is None
    assert mailbox_addresses(value) == addresses_by_both_parsers(value)


def test_sender_fields_reads_from_and_sender_only() -> None:
    header = b"From: a@x.org\r\nReply-To: r@y.org\r\nSENDER: s@z.org\r\nTo: t@w.org\r\n"
    assert sender_fields(header) == [("From", ("a@x.org",)), ("Sender", ("s@z.org",))]


def test_rewrite_from_rewrites_sender_and_adds_no_sender_of_its_own() -> None:
    carol = replace(ALICE, rewrite_from=True, display_name="Carol")
    with_sender = prepare(b"Sender: x@y.org\r\n\r\nb\r\n", carol, "x@y.org", 0.0)
    assert sender_fields(with_sender.upstream_header) == [
        ("Sender", ("alice@gmail.com",)),
        ("From", ("alice@gmail.com",)),
    ]
    without = prepare(b"Subject: s\r\n\r\nb\r\n", carol, "x@y.org", 0.0)
    assert [name for name, _ in sender_fields(without.upstream_header)] == ["From"]
