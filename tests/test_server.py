"""The listener as a legacy app meets it: local AUTH, envelope policy, the provider's verdict."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import pytest_asyncio
import trustme

from relay.daemon import Daemon
from relay.reply import EXPN_UNSUPPORTED, OK, VRFY_UNSURE, unknown_command
from tests.harness import RelaySetup, running_daemon, write_config
from tests.upstream import Upstream, recording_upstream

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHi Bob.\r\n"


@dataclass
class Scene:
    """A relay in front of a recording upstream, with users alice (enabled) and carol (disabled)."""

    setup: RelaySetup
    daemon: Daemon
    upstream: Upstream
    secrets: dict[str, str]

    @property
    def port(self) -> int:
        """The relay's listening port."""
        return self.daemon.addresses[0][1]

    async def client(
        self, login: str | None = "alice", secret: str | None = None
    ) -> aiosmtplib.SMTP:
        """A connected app-side client, logged in unless login is None."""
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, timeout=20)
        await client.connect()
        if login is not None:
            await client.login(login, secret if secret is not None else self.secrets[login])
        return client


def provider_for(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    """The explicit provider entry that points relay at the recording upstream."""
    return {
        "smtp": {"host": upstream.host, "port": upstream.port, "tls": upstream.tls},
        "ca_file": str(upstream.ca_file),
        **extra,
    }


async def start_scene(
    tmp_path: Path, tls: str = "starttls", **settings: Any
) -> AsyncIterator[Scene]:
    """Start upstream and relay, add the users, yield, and stop both."""
    async with recording_upstream(trustme.CA(), tmp_path, tls=tls) as upstream:
        setup = write_config(tmp_path / "relay", {"lab": provider_for(upstream)}, **settings)
        secrets = {
            "alice": setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55"),
            "carol": setup.add_user("carol", "lab", "carol@example.org", "whatever"),
        }
        assert setup.cli("user", "disable", "carol").status == 0
        async with running_daemon(setup) as daemon:
            yield Scene(setup, daemon, upstream, secrets)


@pytest_asyncio.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    """The default scene: STARTTLS upstream, default limits."""
    async for running in start_scene(tmp_path):
        yield running


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_authenticated_mail_reaches_upstream_as_the_users_own_login(
    tmp_path: Path, tls: str
) -> None:
    async for scene in start_scene(tmp_path, tls=tls):
        client = await scene.client()
        _, reply = await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        await client.quit()
        assert reply.startswith("2.0.0 <")
        [mail] = scene.upstream.handler.received
        assert (mail.login, mail.sender, mail.recipients) == (
            "alice@example.org",
            "alice@example.org",
            ["bob@example.net"],
        )
        assert b"Hi Bob." in mail.data and b"Message-ID: <" in mail.data


async def test_auth_login_mechanism_works_as_well_as_plain(scene: Scene) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=scene.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    reply = await client.auth_login("alice", scene.secrets["alice"])
    await client.quit()
    assert reply.code == 235


async def test_wrong_local_secret_gets_535_and_nothing_is_sent(scene: Scene) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await scene.client("alice", "not-the-secret")
    assert (refused.value.code, refused.value.message[:5]) == (535, "5.7.8")
    assert scene.upstream.handler.connections == 0


async def test_unknown_login_gets_the_same_535_and_is_not_logged(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await scene.client("Tr0ub4dor&3", "anything")  # a password typed into the login field
    assert refused.value.code == 535
    failures = [r.getMessage() for r in caplog.records if "auth.failed" in r.getMessage()]
    assert failures and all("<unknown, 11 chars>" in line for line in failures)
    assert all("Tr0ub4dor" not in r.getMessage() for r in caplog.records)


async def test_disabled_user_gets_535(scene: Scene) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await scene.client("carol")
    assert refused.value.code == 535


async def test_mail_without_auth_gets_530(scene: Scene) -> None:
    client = await scene.client(login=None)
    await client.ehlo()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("alice@example.org")
    await client.quit()
    assert (refused.value.code, refused.value.message[:5]) == (530, "5.7.0")
    assert scene.upstream.handler.connections == 0


async def test_foreign_sender_gets_553_listing_allowed_addresses(scene: Scene) -> None:
    client = await scene.client()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("ceo@example.org")
    await client.quit()
    assert refused.value.code == 553
    assert refused.value.message.startswith("5.7.1")
    assert "alice@example.org" in refused.value.message
    assert scene.upstream.handler.connections == 0


async def test_message_over_size_limit_gets_552(tmp_path: Path) -> None:
    async for scene in start_scene(tmp_path, limits={"max_message_bytes": 2000}):
        client = await scene.client()
        big = MESSAGE + b"x" * 3000 + b"\r\n"
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.sendmail("alice@example.org", ["bob@example.net"], big)
        await client.quit()
        assert refused.value.code == 552
        assert scene.upstream.handler.connections == 0


async def test_recipient_over_limit_gets_452(tmp_path: Path) -> None:
    async for scene in start_scene(tmp_path, limits={"max_recipients": 2}):
        client = await scene.client()
        await client.mail("alice@example.org")
        assert (await client.rcpt("a@example.net")).code == 250
        assert (await client.rcpt("b@example.net")).code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("c@example.net")
        await client.quit()
        assert (refused.value.code, refused.value.message[:5]) == (452, "4.5.3")
        assert scene.upstream.handler.connections == 0


async def test_provider_5xx_reaches_the_app_with_the_providers_own_text(scene: Scene) -> None:
    scene.upstream.handler.rcpt_replies["nobody@example.net"] = (
        "550 5.1.1 <nobody@example.net>: no such user"
    )
    client = await scene.client()
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await client.sendmail("alice@example.org", ["nobody@example.net"], MESSAGE)
    await client.quit()
    assert refused.value.code == 550
    assert "5.1.1" in refused.value.message and "no such user" in refused.value.message


async def test_provider_4xx_gets_250_queued_with_the_reason(scene: Scene) -> None:
    scene.upstream.handler.data_reply = "452 4.3.1 Insufficient system storage"
    client = await scene.client()
    _, reply = await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    await client.quit()
    assert reply.startswith("2.0.0 queued as ")
    assert "Insufficient system storage" in reply


async def test_some_recipients_refused_upstream_are_named_in_the_250(scene: Scene) -> None:
    scene.upstream.handler.rcpt_replies["gone@example.net"] = "550 5.1.1 gone"
    client = await scene.client()
    refused, reply = await client.sendmail(
        "alice@example.org", ["bob@example.net", "gone@example.net"], MESSAGE
    )
    await client.quit()
    assert refused == {}
    assert "gone@example.net" in reply and "550" in reply
    assert scene.upstream.handler.received[0].recipients == ["bob@example.net"]


async def test_bcc_never_reaches_the_provider(scene: Scene) -> None:
    client = await scene.client()
    message = MESSAGE.replace(b"Subject:", b"Bcc: boss@example.net\r\nSubject:")
    await client.sendmail("alice@example.org", ["bob@example.net", "boss@example.net"], message)
    await client.quit()
    [mail] = scene.upstream.handler.received
    assert b"boss@example.net" not in mail.data
    assert mail.recipients == ["bob@example.net", "boss@example.net"]


async def relay_to(tmp_path: Path, provider: dict[str, Any]) -> AsyncIterator[tuple[Daemon, str]]:
    """A relay whose only provider is the given entry, with user alice; yields (daemon, secret)."""
    setup = write_config(tmp_path / "relay", {"lab": provider}, upstream={"connect_timeout": 5})
    secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
    async with running_daemon(setup) as daemon:
        yield daemon, secret


async def send_through(daemon: Daemon, secret: str) -> str:
    """Send one mail as alice and return the reply the app sees (a refusal's code and text)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.addresses[0][1], start_tls=False)
    await client.connect()
    await client.login("alice", secret)
    try:
        _, reply = await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        return f"250 {reply}"
    except aiosmtplib.SMTPResponseException as refused:
        return f"{refused.code} {refused.message}"
    finally:
        await client.quit()


async def test_upstream_down_gets_250_queued_saying_unreachable(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    provider = {"smtp": {"host": "127.0.0.1", "port": unused_tcp_port, "tls": "implicit"}}
    async for daemon, secret in relay_to(tmp_path, provider):
        reply = await send_through(daemon, secret)
        assert reply.startswith("250 2.0.0 queued as ")
        assert "4.4.1" in reply and "unreachable" in reply


async def test_upstream_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    async with recording_upstream(
        trustme.CA(), tmp_path, cert_host="mail.other.example"
    ) as upstream:
        async for daemon, secret in relay_to(tmp_path, provider_for(upstream)):
            reply = await send_through(daemon, secret)
        assert reply.startswith("250 2.0.0 queued as ")
        assert "certificate" in reply and "mismatch" in reply.lower()
        assert upstream.handler.received == []


async def test_upstream_certificate_from_unknown_ca_is_refused(tmp_path: Path) -> None:
    async with recording_upstream(trustme.CA(), tmp_path, tls="implicit") as upstream:
        provider = provider_for(upstream)
        del provider["ca_file"]
        async for daemon, secret in relay_to(tmp_path, provider):
            reply = await send_through(daemon, secret)
        assert reply.startswith("250 2.0.0 queued as ")
        assert "certificate" in reply and "ca_file" in reply
        assert upstream.handler.received == []


async def test_wrong_upstream_password_gives_5xx_with_the_providers_reply(tmp_path: Path) -> None:
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        upstream.handler.password = "changed-upstream"
        async for daemon, secret in relay_to(tmp_path, provider_for(upstream)):
            reply = await send_through(daemon, secret)
        assert reply[0] == "5"
        assert "535" in reply and "login as alice@example.org" in reply


async def test_the_multiline_reply_to_ehlo_is_written_whole_in_one_write(scene: Scene) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", scene.port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        [session] = scene.daemon.tracker.sessions
        transport = session.transport
        assert isinstance(transport, asyncio.WriteTransport)
        writes: list[bytes] = []
        write = transport.write

        def recording_write(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        setattr(transport, "write", recording_write)  # noqa: B010  (a method, for this test only)
        writer.write(b"EHLO app.example\r\n")
        lines = [await reader.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(await reader.readline())
        assert len(lines) > 4 and lines[-1].startswith(b"250 ")
        assert writes == [b"".join(lines)]
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        # Every command relay answers is listed, those relay overrides included.
        (
            b"HELP",
            b"250 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET "
            b"VRFY\r\n",
        ),
        (b"HELP NOOP", b"250 2.0.0 Syntax: NOOP [ignored]\r\n"),
        (b"HELP MAIL", b"250 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"),
        (b"NOOP", OK.line.encode()),
        (b"RSET", OK.line.encode()),
        (b"VRFY bob@example.net", VRFY_UNSURE.line.encode()),
        (b"EXPN list", EXPN_UNSUPPORTED.line.encode()),
        (b"FROB", unknown_command("FROB").line.encode()),
    ],
)
async def test_every_smtp_command_is_answered_in_relays_words_with_an_enhanced_code(
    scene: Scene, command: bytes, reply: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", scene.port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        login = base64.b64encode(b"\0alice\0" + scene.secrets["alice"].encode())
        writer.write(b"EHLO app.example\r\nAUTH PLAIN " + login + b"\r\n" + command + b"\r\n")
        while (await reader.readline()).startswith(b"250-"):
            pass
        assert (await reader.readline()).startswith(b"235 ")
        assert (await reader.readline()).startswith(reply)
    finally:
        writer.close()
        await writer.wait_closed()
