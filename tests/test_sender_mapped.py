"""Apps with only host and port: no AUTH from trusted peers, the sender (or the listener) picks."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from relay.reply import AUTH_REQUIRED
from tests.entrylab import SECRET, Lab, lab, make_template, provider_for

MESSAGE = "From: {sender}\r\nTo: carol@example.net\r\nSubject: report\r\n\r\nNightly report.\r\n"
PLAIN = {"address": "127.0.0.1", "port": 0, "reply": "verdict"}
SENDER_MAPPED = {**PLAIN, "sender_mapped": True}
ONE_USER = {**PLAIN, "user": "alice"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State with users alice and bob, made once for the module."""
    return make_template(tmp_path_factory.mktemp("mapped"), provider_for(None))


async def send_without_auth(running: Lab, listener: int, sender: str) -> aiosmtplib.SMTPResponse:
    """One mail from sender with no AUTH, as an app with only host and port sends it."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port(listener), start_tls=False)
    await client.connect()
    try:
        _, reply = await client.sendmail(
            sender, ["carol@example.net"], MESSAGE.format(sender=sender)
        )
        return aiosmtplib.SMTPResponse(250, reply)
    finally:
        await client.quit()


async def test_a_known_sender_without_auth_is_relayed_as_the_user_it_belongs_to(
    template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")  # mail.user is a per-mail DEBUG line
    async with lab(template, tmp_path / "relay", [SENDER_MAPPED]) as running:
        await send_without_auth(running, 0, "bob@example.org")
        await send_without_auth(running, 0, "Alice@Example.org")
    bob, alice = running.upstream.handler.received
    assert (bob.sender, alice.sender) == ("bob@example.org", "Alice@Example.org")
    users = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mail.user")]
    assert ["user=bob" in users[0], "user=alice" in users[1]] == [True, True]


async def test_an_unknown_sender_gets_553_naming_the_addresses_relay_knows_there(
    template: Path, tmp_path: Path
) -> None:
    only_bob = {**SENDER_MAPPED, "users": ["bob"]}
    async with lab(template, tmp_path / "relay", [SENDER_MAPPED, only_bob]) as running:
        for listener, known in ((0, "alice@example.org, bob@example.org"), (1, "bob@example.org")):
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await send_without_auth(running, listener, "noreply@example.com")
            assert (refused.value.code, refused.value.message[:5]) == (553, "5.7.1")
            assert refused.value.message.endswith(f"known: {known}")
        # alice is not among the users the second listener serves.
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await send_without_auth(running, 1, "alice@example.org")
    assert running.upstream.handler.received == []


async def test_a_peer_outside_the_trusted_peers_gets_530(template: Path, tmp_path: Path) -> None:
    elsewhere = {**SENDER_MAPPED, "trusted_peers": ["192.0.2.0/24"]}
    async with lab(template, tmp_path / "relay", [elsewhere]) as running:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await send_without_auth(running, 0, "bob@example.org")
    assert f"{refused.value.code} {refused.value.message}" == AUTH_REQUIRED.line
    assert running.upstream.handler.received == []


async def test_a_one_user_listener_relays_as_its_user_and_refuses_other_senders(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ONE_USER]) as running:
        await send_without_auth(running, 0, "alice@example.org")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await send_without_auth(running, 0, "bob@example.org")
    assert refused.value.code == 553 and "allowed: alice@example.org" in refused.value.message
    [mail] = running.upstream.handler.received
    assert mail.sender == "alice@example.org"


async def test_auth_keeps_working_on_such_listeners_and_follows_the_normal_rules(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ONE_USER]) as running:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port(0), start_tls=False)
        await client.connect()
        await client.login("bob", SECRET)
        message = MESSAGE.format(sender="bob@example.org")
        await client.sendmail("bob@example.org", ["carol@example.net"], message)
        with pytest.raises(aiosmtplib.SMTPSenderRefused):  # logged in as bob: bob's rules
            await client.sendmail("alice@example.org", ["carol@example.net"], message)
        await client.quit()
    [mail] = running.upstream.handler.received
    assert mail.sender == "bob@example.org"


async def test_a_disabled_or_missing_listener_user_is_refused(
    template: Path, tmp_path: Path
) -> None:
    nobody = {**PLAIN, "user": "zoe"}
    async with lab(template, tmp_path / "relay", [nobody]) as running:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await send_without_auth(running, 0, "zoe@example.org")
    assert refused.value.code == 451 and "'zoe' does not exist" in refused.value.message


async def run(command: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A client program, off the event loop the daemon runs on."""
    return await asyncio.to_thread(
        subprocess.run, command, input=stdin, capture_output=True, text=True, timeout=60
    )


NET_SMTP = """
use Net::SMTP;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $ARGV[0]) or die "connect: $@";
$smtp->mail('bob@example.org') or die $smtp->message;
$smtp->to('carol@example.net') or die $smtp->message;
$smtp->data("From: bob\\@example.org\\nSubject: from perl\\n\\nNet::SMTP, host and port only.\\n")
    or die $smtp->message;
$smtp->quit;
"""


async def test_perls_net_smtp_with_host_and_port_only_sends_on_a_sender_mapped_listener(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [SENDER_MAPPED]) as running:
        done = await run(["perl", "-e", NET_SMTP, str(running.port(0))])
    assert done.returncode == 0, done.stderr
    [mail] = running.upstream.handler.received
    assert mail.sender == "bob@example.org" and b"Subject: from perl" in mail.data


async def test_curl_with_a_local_login_sends_on_an_ordinary_listener(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [PLAIN]) as running:
        done = await run(
            [
                *("curl", "-sS", f"smtp://127.0.0.1:{running.port(0)}", "--user"),
                *(f"alice:{SECRET}", "--mail-from", "alice@example.org"),
                *("--mail-rcpt", "carol@example.net", "--upload-file", "-"),
            ],
            MESSAGE.format(sender="alice@example.org").replace("report", "from curl"),
        )
    assert done.returncode == 0, done.stderr
    [mail] = running.upstream.handler.received
    assert mail.sender == "alice@example.org" and b"Subject: from curl" in mail.data
