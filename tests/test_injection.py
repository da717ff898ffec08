"""Command, header and reply injection: CR, LF, NUL and over-long lines never get through.

Each test attacks one way a hostile or broken app (or a man in the middle before STARTTLS)
could slip a second command, header or reply into a line, and asserts the safe outcome: a
5xx for the attacker, nothing queued and nothing sent upstream, and every reply line still
one printable line (RFC 5321 §4.2).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
import yaml

from relay.config.load import load_config, parse_config
from relay.errors import ConfigError
from relay.message import field_name, prepare, split_header
from relay.model import User
from relay.reply import OK
from tests.harness import RelaySetup
from tests.rawsmtp import (
    READ_TIMEOUT,
    REPLY_LINE,
    Relay,
    Template,
    assert_nothing_sent,
    clone,
    cloned_relay,
    make_template,
)

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHi Bob.\r\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The module's prepared relay directory."""
    return make_template(tmp_path_factory.mktemp("template"))


@pytest_asyncio.fixture
async def relay(template: Template, tmp_path: Path) -> AsyncIterator[Relay]:
    """A fresh relay and upstream for one test."""
    async with cloned_relay(template, tmp_path) as running:
        yield running


# --- CR, LF, NUL and other control characters in MAIL FROM and RCPT TO ---

CONTROLS = {"nul": b"\x00", "cr": b"\r", "vt": b"\x0b", "esc": b"\x1b", "del": b"\x7f"}


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS.keys())
@pytest.mark.parametrize(
    "template_line",
    [
        b"MAIL FROM:<alice@example.org{c}evil>\r\n",
        b"MAIL FROM:<alice{c}@example.org>\r\n",
        b'MAIL FROM:<"alice{c}250 ok"@example.org>\r\n',
        b"MAIL FROM:<alice@exa{c}mple.org>\r\n",
    ],
    ids=["domain", "local-part", "quoted-local-part", "inside-domain"],
)
async def test_control_character_in_mail_from_gets_5xx_and_nothing_is_sent(
    relay: Relay, control: bytes, template_line: bytes
) -> None:
    client = await relay.client()
    refused = await client.send(template_line.replace(b"{c}", control))
    assert refused.code in (501, 553), refused.text
    # The session is still usable, and the refused MAIL left no transaction behind.
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 503
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    await client.close()
    await assert_nothing_sent(relay)


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS.keys())
@pytest.mark.parametrize(
    "template_line",
    [
        b"RCPT TO:<bob@example.net{c}evil>\r\n",
        b"RCPT TO:<b{c}ob@example.net>\r\n",
        b'RCPT TO:<"bob{c}DATA"@example.net>\r\n',
        b"RCPT TO:<bob@exa{c}mple.net>\r\n",
    ],
    ids=["domain", "local-part", "quoted-local-part", "inside-domain"],
)
async def test_control_character_in_rcpt_to_gets_5xx_and_never_reaches_the_provider(
    relay: Relay, control: bytes, template_line: bytes
) -> None:
    client = await relay.client()
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    refused = await client.send(template_line.replace(b"{c}", control))
    assert refused.code in (501, 553), refused.text
    assert (await client.send(b"DATA\r\n")).code == 503  # no recipient was taken
    assert await relay.queued() == 0
    # A good recipient after the refused one: only that one reaches the provider.
    assert (await client.send(b"RCPT TO:<carol@example.net>\r\n")).code == 250
    assert (await client.send(b"DATA\r\n")).code == 354
    done = await client.send(MESSAGE + b".\r\n")
    await client.close()
    assert done.code == 250 and "sent" in done.text, done.text
    [mail] = relay.upstream.handler.received
    assert mail.recipients == ["carol@example.net"]
    assert b"evil" not in relay.upstream.handler.raw and b'DATA"@' not in relay.upstream.handler.raw


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<alice@example.org>\rRCPT TO:<victim@example.net>\r\n",
        b"MAIL FROM:<alice@example.org>\x00RCPT TO:<victim@example.net>\r\n",
        b"MAIL FROM:<alice@example.org> \rRCPT TO:<victim@example.net>\r\n",
    ],
    ids=["cr", "nul", "space-cr"],
)
async def test_second_command_smuggled_after_cr_in_mail_from_is_not_run(
    relay: Relay, line: bytes
) -> None:
    client = await relay.client()
    refused = await client.send(line)
    assert refused.code in (501, 553), refused.text
    # Neither the MAIL nor the smuggled RCPT took effect.
    assert (await client.send(b"DATA\r\n")).code == 503
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 503
    await client.close()
    await assert_nothing_sent(relay)


async def test_second_command_smuggled_after_cr_in_rcpt_to_is_not_run(relay: Relay) -> None:
    client = await relay.client()
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    refused = await client.send(b"RCPT TO:<bob@example.net>\rRCPT TO:<victim@example.net>\r\n")
    assert refused.code in (501, 553), refused.text
    assert (await client.send(b"DATA\r\n")).code == 503
    await client.close()
    await assert_nothing_sent(relay)


@pytest.mark.parametrize(
    "line",
    [
        b"FOO\rBAR\x00\r\n",
        b"NOOP\x00\r250 injected\r\n",
        b"\x00\x01\x02\r\n",
        b"XYZZY \x1b[2J\r\n",
    ],
    ids=["unknown-verb-cr-nul", "noop-nul", "only-controls", "terminal-escape"],
)
async def test_reply_never_echoes_a_control_character_back(relay: Relay, line: bytes) -> None:
    client = await relay.client(logged_in=False)
    # RawClient.reply asserts every line is printable: an echoed CR or NUL fails here.
    reply = await client.send(line)
    assert reply.code == 500 or reply.code == 250, reply.text
    assert (await client.send(b"NOOP\r\n")).lines == [OK.line.encode() + b"\r\n"]
    await client.close()


async def test_refused_sender_is_not_echoed_with_its_control_characters(relay: Relay) -> None:
    client = await relay.client()
    refused = await client.send(b'MAIL FROM:<"ceo\r250 2.1.0 ok"@example.org>\r\n')
    assert refused.code in (501, 553)
    await client.close()


# --- CR, LF and NUL in AUTH ---


def plain(blob: bytes) -> bytes:
    """An AUTH PLAIN command line with an initial response."""
    return b"AUTH PLAIN " + base64.b64encode(blob) + b"\r\n"


@pytest.mark.parametrize(
    "blob",
    [
        b"\0alice\r\n\0{secret}",
        b"\0alice\r\nMAIL FROM:<alice@example.org>\0{secret}",
        b"\0alice\x00\0{secret}",
        b"\0alice\0{secret}\0",
        b"\0alice\0{secret}\r\n",
        b"\0alice\0{secret}\x00extra",
        b"alice\0alice\0\0{secret}",
        b"\0\x00alice\0{secret}",
    ],
    ids=[
        "crlf-in-login",
        "command-in-login",
        "extra-nul-after-login",
        "trailing-nul",
        "crlf-after-secret",
        "nul-inside-secret",
        "extra-field",
        "nul-before-login",
    ],
)
async def test_auth_plain_with_control_characters_is_refused_and_never_authenticates(
    relay: Relay, blob: bytes
) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    refused = await client.send(plain(blob.replace(b"{secret}", relay.secret.encode())))
    assert refused.code in (501, 535), refused.text
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 530
    # The same session can still log in properly: the refusal left nothing half-done.
    right = plain(b"\0alice\0" + relay.secret.encode())
    assert (await client.send(right)).code == 235
    await client.close()
    await assert_nothing_sent(relay)


@pytest.mark.parametrize(
    ("login", "password"),
    [
        (b"alice\x00", b"{secret}"),
        (b"alice\r\n", b"{secret}"),
        (b"\x00alice", b"{secret}"),
        (b"alice", b"{secret}\x00"),
        (b"alice", b"{secret}\r\nMAIL FROM:<alice@example.org>"),
    ],
    ids=["nul-after-login", "crlf-after-login", "nul-before-login", "nul-after-secret", "command"],
)
async def test_auth_login_with_control_characters_is_refused(
    relay: Relay, login: bytes, password: bytes
) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    assert (await client.send(b"AUTH LOGIN\r\n")).code == 334
    assert (await client.send(base64.b64encode(login) + b"\r\n")).code == 334
    secret = password.replace(b"{secret}", relay.secret.encode())
    refused = await client.send(base64.b64encode(secret) + b"\r\n")
    assert refused.code in (501, 535), refused.text
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 530
    await client.close()
    await assert_nothing_sent(relay)


@pytest.mark.parametrize(
    "raw", [b"YWxpY2U=\x00", b"YWxp\rY2U=", b"\x00"], ids=["nul", "cr", "only"]
)
async def test_auth_login_answer_that_is_not_clean_base64_gets_501(
    relay: Relay, raw: bytes
) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    assert (await client.send(b"AUTH LOGIN\r\n")).code == 334
    assert (await client.send(raw + b"\r\n")).code == 501
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 530
    await client.close()


async def test_command_smuggled_after_cr_in_the_auth_line_is_not_run(relay: Relay) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    blob = base64.b64encode(b"\0alice\0" + relay.secret.encode())
    refused = await client.send(b"AUTH PLAIN " + blob + b"\rMAIL FROM:<alice@example.org>\r\n")
    assert refused.code == 501, refused.text
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 530
    await client.close()


# --- CR, LF and NUL in values an operator sets ---

LINE_BREAKS = {
    "crlf": "\r\n",
    "lf": "\n",
    "cr": "\r",
    "nul": "\x00",
    "line-separator": "\u2028",
    "next-line": "\x85",
    "escape": "\x1b",
}


def lab_config(**provider: Any) -> dict[str, Any]:
    """A minimal valid config document with an explicit provider 'lab'."""
    lab = {"smtp": {"host": "mail.example.org", "port": 587, "tls": "starttls"}, **provider}
    return {"hostname": "relay.test", "providers": {"lab": lab}}


def with_value(document: dict[str, Any], key_path: str, value: str) -> dict[str, Any]:
    """The document with one dotted key set (list indexes as [n])."""
    keys = re.findall(r"[^.\[\]]+|\[\d+\]", key_path)
    node: Any = document
    for key in keys[:-1]:
        node = node[int(key[1:-1])] if key.startswith("[") else node.setdefault(key, {})
    node[keys[-1]] = value
    return document


CONFIG_KEYS = [
    "hostname",
    "state_dir",
    "key_file",
    "providers.lab.sent_folder",
    "providers.lab.smtp.host",
    "providers.lab.imap.host",
    "listen[0].tls_cert",
    "metrics.address",
]


@pytest.mark.parametrize("brk", LINE_BREAKS.values(), ids=LINE_BREAKS.keys())
@pytest.mark.parametrize("key_path", CONFIG_KEYS)
def test_config_value_with_a_line_break_or_nul_is_refused_naming_the_key_path(
    tmp_path: Path, key_path: str, brk: str
) -> None:
    document = lab_config(imap={"host": "imap.example.org", "port": 993, "tls": "implicit"})
    document["listen"] = [{"address": "127.0.0.1", "port": 0}]
    value = f"value{brk}250 injected"
    with pytest.raises(ConfigError) as refused:
        parse_config(with_value(document, key_path, value), "relay.yaml", tmp_path)
    assert key_path in [path for path, _ in refused.value.problems], refused.value.problems


def test_config_file_with_crlf_in_hostname_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**lab_config(), "hostname": "relay.test\r\n250 evil"}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert f"{path}: hostname: " in str(refused.value)


@pytest.fixture
def cli_setup(template: Template, tmp_path: Path) -> RelaySetup:
    """A private copy of the template for CLI tests that must not change it."""
    return clone(template, tmp_path)


def add_bob(setup: RelaySetup, *extra: str) -> int:
    """`relay user add bob ...`; returns the exit status."""
    result = setup.cli(
        "user",
        "add",
        "bob",
        "--provider",
        "lab",
        "--email",
        "bob@example.org",
        *extra,
        "--password-stdin",
        stdin="pw\n",
    )
    return result.status


# NUL cannot be tested here: an argv string cannot hold one (execve stops at it).
CLI_BREAKS = {k: v for k, v in LINE_BREAKS.items() if k != "nul"}


@pytest.mark.parametrize("brk", CLI_BREAKS.values(), ids=CLI_BREAKS.keys())
def test_user_add_refuses_a_display_name_with_a_line_break(cli_setup: RelaySetup, brk: str) -> None:
    assert add_bob(cli_setup, "--display-name", f"Bob{brk}Bcc: victim@example.net") == 1
    assert "bob" not in cli_setup.cli("user", "list").out


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--upstream-user", "bob\r\nRSET"),
        ("--sent-folder", "Sent\r\nA1 LOGOUT"),
        ("--alias", "bob\r\n@example.org"),
    ],
)
def test_user_add_refuses_other_values_with_a_line_break(
    cli_setup: RelaySetup, flag: str, value: str
) -> None:
    assert add_bob(cli_setup, flag, value) == 1


def test_user_set_refuses_a_sent_folder_with_a_line_break(cli_setup: RelaySetup) -> None:
    result = cli_setup.cli("user", "set", "alice", "--sent-folder", "Sent\r\nA1 LOGOUT")
    assert result.status == 1 and "--sent-folder" in result.err


@pytest.mark.parametrize("flag", ["--email", "--alias"])
def test_user_add_refuses_an_address_with_a_control_character(
    cli_setup: RelaySetup, flag: str
) -> None:
    extra = ["--alias", "b\x7fob@example.org"] if flag == "--alias" else []
    result = cli_setup.cli(
        "user",
        "add",
        "bob",
        "--provider",
        "lab",
        "--email",
        "b\x01ob@example.org" if flag == "--email" else "bob@example.org",
        *extra,
        "--password-stdin",
        stdin="pw\n",
    )
    assert result.status == 1


ALICE = User(
    login="alice",
    provider="lab",
    email="alice@example.org",
    upstream_user="alice@example.org",
    local_hash="sha256$x",
    sealed_secret=None,
    display_name="Alice Example",
    rewrite_from=True,
)


@pytest.mark.parametrize("brk", LINE_BREAKS.values(), ids=LINE_BREAKS.keys())
def test_stored_display_name_with_a_line_break_cannot_add_a_header(brk: str) -> None:
    # The CLI refuses such a name; a database written any other way must not get one through.
    user = replace(ALICE, display_name=f"Alice{brk}Bcc: victim@example.net")
    raw = b"From: noreply@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    prepared = prepare(raw, user, "noreply@example.org", 1_790_000_000.0)
    for header in (prepared.upstream_header, prepared.sent_header):
        fields, _ = split_header(header + b"\r\n")
        assert [field_name(f) for f in fields] == ["from", "subject", "date", "message-id"]
        assert b"\r" not in header.replace(b"\r\n", b"") and b"\n" not in header.replace(
            b"\r\n", b""
        )
        assert b"\x00" not in header and b"\x1b" not in header


# --- Over-long lines (RFC 5321 §4.5.3.1.4 and §4.5.3.1.6) ---


# MAIL may be 512 + 26 (SIZE) + 10 (SMTPUTF8) + 100 (ENVID, RET: RFC 3461 §4) = 648 octets.
@pytest.mark.parametrize("size", [650, 1000, 5000, 70_000])
async def test_over_long_command_line_gets_500_and_the_session_goes_on(
    relay: Relay, size: int
) -> None:
    client = await relay.client()
    reply = await client.send(b"MAIL FROM:<alice@example.org> " + b"X" * size + b"\r\n")
    assert reply.code == 500, reply.text
    assert (await client.send(b"NOOP\r\n")).lines == [OK.line.encode() + b"\r\n"]
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 503
    await client.close()
    await assert_nothing_sent(relay)


async def test_over_long_mail_from_stays_refused_after_many_ehlos(relay: Relay) -> None:
    client = await relay.client()
    for _ in range(12):
        assert (await client.send(b"EHLO app.example\r\n")).code == 250
    # 512 octets, +26 for SIZE= and +10 for BODY= (RFC 1870, RFC 6152): 700 is too long.
    line = b"MAIL FROM:<alice@example.org> BODY=8BITMIME" + b" " * 660 + b"\r\n"
    reply = await client.send(line)
    assert reply.code == 500, reply.text
    await client.close()


async def test_another_sessions_ehlos_do_not_widen_my_command_limit(relay: Relay) -> None:
    mine = await relay.client()
    other = await relay.client(logged_in=False)
    for _ in range(12):
        assert (await other.send(b"EHLO other.example\r\n")).code == 250
    line = b"MAIL FROM:<alice@example.org> BODY=8BITMIME" + b" " * 660 + b"\r\n"
    reply = await mine.send(line)
    assert reply.code == 500, reply.text
    await other.close()
    await mine.close()


async def test_mail_from_with_size_and_body_within_the_limit_is_accepted(relay: Relay) -> None:
    client = await relay.client()
    line = b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME\r\n"
    assert (await client.send(line)).code == 250
    await client.close()


@pytest.mark.parametrize("where", ["header", "body"])
@pytest.mark.parametrize("size", [1001, 1500, 100_000])
async def test_over_long_message_line_gets_5xx_and_nothing_is_sent(
    relay: Relay, where: str, size: int
) -> None:
    long_line = b"X-Long: " + b"a" * size if where == "header" else b"b" * size
    message = (
        b"Subject: long\r\n" + long_line + b"\r\n\r\nbody\r\n"
        if where == "header"
        else b"Subject: long\r\n\r\n" + long_line + b"\r\n"
    )
    client = await relay.client()
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 250
    assert (await client.send(b"DATA\r\n")).code == 354
    refused = await client.send(message + b".\r\n")
    assert 500 <= refused.code < 600, refused.text
    # The refused transaction is over; the session can carry the next mail at once.
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 503
    assert (await client.send(b"NOOP\r\n")).code == 250
    await client.close()
    await assert_nothing_sent(relay)


async def test_message_line_of_998_octets_is_sent(relay: Relay) -> None:
    client = await relay.client()
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 250
    assert (await client.send(b"RCPT TO:<bob@example.net>\r\n")).code == 250
    assert (await client.send(b"DATA\r\n")).code == 354
    done = await client.send(b"Subject: max\r\n\r\n" + b"c" * 998 + b"\r\n.\r\n")
    await client.close()
    assert done.code == 250
    [mail] = relay.upstream.handler.received
    assert b"c" * 998 + b"\r\n" in mail.data


@pytest.mark.parametrize("size", [600, 5000])
async def test_over_long_auth_line_gets_500_and_never_authenticates(
    relay: Relay, size: int
) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    blob = base64.b64encode(b"\0alice\0" + relay.secret.encode() + b"\0" + b"p" * size)
    assert (await client.send(b"AUTH PLAIN " + blob + b"\r\n")).code == 500
    assert (await client.send(b"MAIL FROM:<alice@example.org>\r\n")).code == 530
    await client.close()


@pytest.mark.parametrize("size", [1200, 5000, 70_000])
async def test_over_long_auth_answer_gets_500_5_5_6_and_the_connection_is_closed(
    relay: Relay, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    assert (await client.send(b"AUTH PLAIN\r\n")).code == 334
    blob = base64.b64encode(b"\0alice\0" + relay.secret.encode() + b"p" * size)
    rest = b""
    with suppress(ConnectionResetError):
        client.writer.write(blob + b"\r\nMAIL FROM:<alice@example.org>\r\n")
        await client.writer.drain()
        # What is left of the line cannot be told from a command, so the session ends there.
        rest = await asyncio.wait_for(client.reader.read(), READ_TIMEOUT)
    # RFC 4954 §6: 500 5.5.6 is the reply for an authentication line that is too long. (With
    # most of a 70 kB line unread, the close can be a reset that overtakes the reply.)
    too_long = b"500 5.5.6 Authentication Exchange line is too long\r\n"
    assert rest == too_long or (size > 65536 and rest == b""), rest
    # Any client can send this: it must not be an unhandled exception in the log.
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    await assert_nothing_sent(relay)


# --- STARTTLS: plaintext pipelined after it is thrown away (RFC 3207 §4.2, CVE-2011-0411) ---


@dataclass(frozen=True)
class TlsRelay:
    """A relay whose listener offers STARTTLS, and a client context that trusts it."""

    relay: Relay
    client_context: ssl.SSLContext


@pytest_asyncio.fixture
async def tls_relay(template: Template, tmp_path: Path) -> AsyncIterator[TlsRelay]:
    """A relay on 127.0.0.1 with tls_cert and tls_key: STARTTLS is offered and required."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "listener.pem", tmp_path / "listener.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    listener = {"address": "127.0.0.1", "port": 0, "reply": "verdict"}
    listener.update(tls_cert=str(cert_file), tls_key=str(key_file))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with cloned_relay(template, tmp_path, listen=[listener]) as running:
        yield TlsRelay(running, context)


async def test_listener_with_a_certificate_requires_starttls_before_auth(
    tls_relay: TlsRelay,
) -> None:
    client = await tls_relay.relay.client(logged_in=False)
    ehlo = await client.send(b"EHLO app.example\r\n")
    assert b"250-STARTTLS\r\n" in ehlo.lines
    refused = await client.send(plain(b"\0alice\0" + tls_relay.relay.secret.encode()))
    assert refused.code == 530, refused.text
    await client.close()


@pytest.mark.parametrize(
    "injected",
    [
        b"RSET\r\n",
        b"NOOP\r\n",
        b"EHLO evil.example\r\n",
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<victim@example.net>\r\n",
    ],
    ids=["rset", "noop", "ehlo", "mail-rcpt"],
)
async def test_plaintext_pipelined_after_starttls_is_discarded(
    tls_relay: TlsRelay, injected: bytes
) -> None:
    relay = tls_relay.relay
    client = await relay.client(logged_in=False)
    assert (await client.send(b"EHLO app.example\r\n")).code == 250
    assert (await client.send(b"STARTTLS\r\n" + injected)).code == 220
    await client.writer.start_tls(tls_relay.client_context, server_hostname="127.0.0.1")
    # The first reply after the handshake answers our first encrypted command.
    first = await client.send(b"EHLO app.example\r\n")
    assert first.lines[0] == b"250-relay.test\r\n", first.text
    assert b"250-AUTH LOGIN PLAIN\r\n" in first.lines
    assert (await client.send(b"NOOP\r\n")).lines == [OK.line.encode() + b"\r\n"]
    assert (await client.send(plain(b"\0alice\0" + relay.secret.encode()))).code == 235
    # No transaction was started by the injected commands.
    assert (await client.send(b"DATA\r\n")).code == 503
    assert (await client.send(b"QUIT\r\n")).code == 221
    await client.close()
    await assert_nothing_sent(relay)


def test_reply_line_pattern_accepts_replies_and_refuses_injected_ones() -> None:
    assert REPLY_LINE.fullmatch(b"250-relay.test")
    assert REPLY_LINE.fullmatch(b"334 ")
    assert REPLY_LINE.fullmatch(b"221")
    assert not REPLY_LINE.fullmatch(b'500 Error: command "FOO\rBAR" not recognized')
    assert not REPLY_LINE.fullmatch(b"250 ok\x00")
    assert not REPLY_LINE.fullmatch(b"600 no such class")
