"""What real clients send, through relay to the real Postfix and Dovecot (issue 22).

SMTPUTF8, DSN parameters, the provider's own size limit, login by e-mail address, HELO then
AUTH, msmtp, and pipelined commands: each one driven by a real client (smtplib, msmtp, a raw
socket) and checked in the real mailboxes.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.reply import OK
from tests.harness import RelayProcess, relay_process, write_config
from tests.peers.mailpeers import GMAIL_SIZE, UTF8_ALIASES, MailAccount, MailPeers
from tests.test_end_to_end import find_by_subject, message_text, postfix_provider

pytestmark = pytest.mark.peers
MB = 1_000_000


@contextmanager
def relay_for(
    peers: MailPeers, root: Path, reply: str = "verdict", **provider: Any
) -> Iterator[tuple[RelayProcess, str]]:
    """A running relay for alice in front of the peers' Postfix; (process, alice's secret)."""
    setup = write_config(
        root,
        {"agency": {**postfix_provider(peers, "implicit"), **provider}},
        listen=[{"address": "127.0.0.1", "port": 0, "reply": reply}],
        queue={"min_backoff": 0.5, "max_backoff": 2, "first_attempt_timeout": 10},
    )
    alice = peers.accounts["alice"]
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    with relay_process(setup) as relay:
        yield relay, secret


@pytest.fixture
def relay(mail_peers: MailPeers, tmp_path: Path) -> Iterator[tuple[RelayProcess, str]]:
    """relay for alice through Postfix's implicit-TLS submission port (SIZE 40 MB)."""
    with relay_for(mail_peers, tmp_path) as running:
        yield running


def tagged(text: str) -> str:
    """A subject no other test uses."""
    return f"{text} {uuid.uuid4().hex[:10]}"


def wait_for(peers: MailPeers, account: MailAccount, needle: bytes, timeout: float = 30.0) -> bytes:
    """The first mail in account's INBOX holding needle, polled over IMAP."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in peers.mailbox_messages(account) if needle in m]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            log = "\n".join(peers.postfix_log().splitlines()[-15:])
            raise AssertionError(f"no mail with {needle!r} in {account.address}'s INBOX\n{log}")
        time.sleep(0.3)


def test_a_utf8_local_part_reaches_dovecot_through_postfix_with_smtputf8(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str]
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    utf8_address = UTF8_ALIASES[0][0]
    subject = tagged("smtputf8")
    with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
        client.ehlo("app.example")
        assert client.has_extn("smtputf8")
        client.login("alice", secret)
        body = message_text(alice.address, utf8_address, subject).encode()
        client.sendmail(alice.address, [utf8_address], body, mail_options=["SMTPUTF8"])
    delivered = wait_for(mail_peers, bob, subject.encode())
    assert f"To: {utf8_address}".encode() in delivered


def test_notify_success_yields_postfixs_success_dsn_in_the_senders_inbox(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str]
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = tagged("notify success")
    envid = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
        client.ehlo("app.example")
        assert client.has_extn("dsn")
        client.login("alice", secret)
        client.sendmail(
            alice.address,
            [bob.address],
            message_text(alice.address, bob.address, subject),
            mail_options=["RET=HDRS", f"ENVID={envid}"],
            rcpt_options=["NOTIFY=SUCCESS", f"ORCPT=rfc822;{bob.address}"],
        )
    wait_for(mail_peers, bob, subject.encode())
    # Postfix's own report (RFC 3464), naming the ENVID relay passed on with the mail.
    report = wait_for(mail_peers, alice, f"Original-Envelope-Id: {envid}".encode())
    assert b"Subject: Successful Mail Delivery Report" in report
    # "relayed": Dovecot's LMTP offers Postfix no DSN of its own.
    assert b"Status: 2.0.0" in report
    assert f"Original-Recipient: rfc822;{bob.address}".encode() in report


def test_notify_never_on_a_mail_relay_bounces_later_produces_no_dsn(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    # With `reply: spool` the app hears 250 once the mail is spooled; Postfix's refusal of the
    # recipient comes after, and relay's own DSN reports it, if the app asked for one.
    alice = mail_peers.accounts["alice"]
    nobody = "nobody@example.org"
    quiet, heard = tagged("never"), tagged("default")
    spooled = relay_for(mail_peers, tmp_path, reply="spool", files_sent_itself=True)
    with spooled as (process, secret):
        with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
            client.login("alice", secret)
            for subject, options in ((quiet, ["NOTIFY=NEVER"]), (heard, [])):
                client.sendmail(
                    alice.address,
                    [nobody],
                    message_text(alice.address, nobody, subject),
                    rcpt_options=options,
                )
        # The DSN for the mail that asked nothing (RFC 3461 §4.1: failures are reported)...
        wait_for(mail_peers, alice, f"Subject: {heard}".encode(), timeout=40)
        log = process.log()
    # ...and none for the one that said NEVER.
    reports = [m for m in mail_peers.mailbox_messages(alice) if b"relay-dsn-" in m]
    assert not [m for m in reports if quiet.encode() in m]
    assert "queue.dsn_not_asked" in log


def test_30_mb_to_a_provider_announcing_35_mb_is_delivered_whole_and_40_mb_gets_552(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    # A Postfix port announcing SIZE 35882577, as smtp.gmail.com does: relay learns the limit
    # from its EHLO at the first session, and holds apps to it from then on.
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    smtp = {"host": mail_peers.host, "port": mail_peers.submissions_35mb_port, "tls": "implicit"}
    with relay_for(mail_peers, tmp_path, smtp=smtp) as (process, secret):
        first, large = tagged("learns the limit"), tagged("thirty mb")
        with smtplib.SMTP("127.0.0.1", process.port, timeout=120) as client:
            client.login("alice", secret)
            client.sendmail(
                alice.address, [bob.address], message_text(alice.address, bob.address, first)
            )
            wait_for(mail_peers, bob, first.encode())  # relay has had a session there by now
            client.ehlo("app.example")  # after AUTH: the user's own provider's SIZE
            assert client.esmtp_features["size"] == str(GMAIL_SIZE)
            body = large_body(30 * MB)
            client.sendmail(alice.address, [bob.address], mail_with(alice, bob, large, body))
            # Declared with SIZE= (smtplib sends it), and refused before any data is sent.
            with pytest.raises(smtplib.SMTPSenderRefused) as declared:
                client.sendmail(
                    alice.address, [bob.address], mail_with(alice, bob, "x", large_body(40 * MB))
                )
            assert declared.value.smtp_code == 552
            assert declared.value.smtp_error.startswith(b"5.3.4 ")
            assert b"35 MB (35882577 bytes)" in declared.value.smtp_error
            assert b"'agency'" in declared.value.smtp_error
        # Undeclared: read to its end, then refused with the same words.
        with socket.create_connection(("127.0.0.1", process.port), timeout=60) as raw:
            reply = send_raw_oversized(raw, secret, alice, bob, 40 * MB)
        assert reply.startswith(b"552 5.3.4 message too big: the limit is 35 MB (35882577 bytes)")
    delivered = wait_for(mail_peers, bob, large.encode(), timeout=60)
    assert body in delivered


def large_body(size: int) -> bytes:
    """size octets of base64-looking lines, as a big attachment is sent."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    return line * (size // len(line))


def mail_with(sender: MailAccount, recipient: MailAccount, subject: str, body: bytes) -> bytes:
    """A mail with a large body."""
    head = message_text(sender.address, recipient.address, subject).split("\r\n\r\n", 1)[0]
    return head.encode() + b"\r\n\r\n" + body


def send_raw_oversized(
    raw: socket.socket, secret: str, sender: MailAccount, recipient: MailAccount, size: int
) -> bytes:
    """MAIL without SIZE=, then a DATA of size octets; relay's reply to the end of DATA."""
    stream = raw.makefile("rb")
    stream.readline()
    token = base64.b64encode(f"\0alice\0{secret}".encode()).decode()
    raw.sendall(f"EHLO app.example\r\nAUTH PLAIN {token}\r\n".encode())
    while stream.readline()[3:4] == b"-":
        pass
    assert stream.readline().startswith(b"235 ")
    raw.sendall(
        f"MAIL FROM:<{sender.address}>\r\nRCPT TO:<{recipient.address}>\r\nDATA\r\n".encode()
    )
    assert stream.readline().startswith(b"250 ")
    assert stream.readline().startswith(b"250 ")
    assert stream.readline().startswith(b"354 ")
    raw.sendall(mail_with(sender, recipient, "too big", large_body(size)) + b".\r\n")
    return stream.readline()


def test_alice_logs_in_with_her_email_address(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str]
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = tagged("login by address")
    with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
        client.login(alice.address, secret)
        client.sendmail(
            alice.address, [bob.address], message_text(alice.address, bob.address, subject)
        )
        with pytest.raises(smtplib.SMTPAuthenticationError):
            with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as other:
                other.login("alice@example.invalid", secret)
    assert find_by_subject(mail_peers, bob, subject)
    log = process.log()
    # auth.ok is a DEBUG line now; the mail's one INFO line names the user it went as.
    assert "delivery.attempt" in log and "user=alice " in log
    # An unknown address is said to be one, and not written out.
    assert "login=<unknown address, 21 chars> reason=unknown address" in log
    assert "alice@example.invalid" not in log


def test_helo_then_auth_logs_in_and_the_mail_goes_through(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str]
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = tagged("helo then auth")
    with smtplib.SMTP("127.0.0.1", process.port, timeout=30) as client:
        code, _ = client.helo("old-script.example")
        assert code == 250
        # smtplib would EHLO first; an old script sends AUTH straight after HELO.
        token = base64.b64encode(f"\0alice\0{secret}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        assert (code, text[:5]) == (235, b"2.7.0")
        assert client.docmd("MAIL", f"FROM:<{alice.address}>")[0] == 250
        assert client.docmd("RCPT", f"TO:<{bob.address}>")[0] == 250
        code, _ = client.data(message_text(alice.address, bob.address, subject))
        assert code == 250
    assert find_by_subject(mail_peers, bob, subject)


def test_msmtp_with_the_readmes_auth_plain_setting_sends(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str], tmp_path: Path
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = tagged("msmtp")
    config = tmp_path / "msmtprc"
    # The README's app settings for msmtp: plaintext on loopback needs `auth plain` (with
    # `auth on` msmtp refuses to send a password without TLS).
    config.write_text(
        "defaults\n"
        "account relay\n"
        "host 127.0.0.1\n"
        f"port {process.port}\n"
        "tls off\n"
        "auth plain\n"
        "user alice\n"
        f"password {secret}\n"
        f"from {alice.address}\n"
        "account default : relay\n"
    )
    config.chmod(0o600)
    done = subprocess.run(
        ["msmtp", "-C", str(config), bob.address],
        input=message_text(alice.address, bob.address, subject).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert find_by_subject(mail_peers, bob, subject)


def test_ehlo_offers_pipelining_and_enhanced_codes_and_pipelined_commands_are_answered_in_order(
    mail_peers: MailPeers, relay: tuple[RelayProcess, str]
) -> None:
    process, secret = relay
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = tagged("pipelined")
    token = base64.b64encode(f"\0alice\0{secret}".encode()).decode()
    with socket.create_connection(("127.0.0.1", process.port), timeout=30) as raw:
        stream = raw.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        raw.sendall(b"EHLO app.example\r\n")
        ehlo = [stream.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(stream.readline())
        offered = {line[4:].strip().split(b" ")[0] for line in ehlo[1:]}
        assert {b"PIPELINING", b"ENHANCEDSTATUSCODES", b"DSN", b"SMTPUTF8", b"SIZE"} <= offered
        # One write: AUTH, MAIL, an unknown RCPT parameter, two RCPTs, NOOP and DATA.
        raw.sendall(
            f"AUTH PLAIN {token}\r\nMAIL FROM:<{alice.address}>\r\n"
            f"RCPT TO:<{bob.address}> FROB=1\r\nRCPT TO:<{bob.address}> NOTIFY=FAILURE\r\n"
            "NOOP\r\nDATA\r\n".encode()
        )
        replies = [stream.readline() for _ in range(6)]
        assert [r[:3] for r in replies] == [b"235", b"250", b"555", b"250", b"250", b"354"]
        assert replies[2].startswith(b"555 5.5.4 ")
        assert replies[4].rstrip() == OK.line.encode()
        raw.sendall(message_text(alice.address, bob.address, subject).encode() + b".\r\nQUIT\r\n")
        assert stream.readline().startswith(b"250 2.0.0 ")
        assert stream.readline().startswith(b"221 2.0.0 ")
    assert find_by_subject(mail_peers, bob, subject)
