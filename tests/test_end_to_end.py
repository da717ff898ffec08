"""Real clients -> relay -> real Postfix -> the recipient's real Dovecot INBOX."""

from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RelayProcess, RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailAccount, MailPeers

pytestmark = pytest.mark.peers


def postfix_provider(peers: MailPeers, tls: str, **extra: Any) -> dict[str, Any]:
    """An explicit provider entry for the test Postfix, STARTTLS or implicit TLS."""
    port = peers.submission_port if tls == "starttls" else peers.submissions_port
    return {
        "smtp": {"host": peers.host, "port": port, "tls": tls},
        "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
        "ca_file": str(peers.ca_file),
        **extra,
    }


def message_text(sender: str, recipient: str, subject: str, extra_headers: str = "") -> str:
    """A small plain-text mail as a legacy app writes it."""
    return (
        f"From: {sender}\r\nTo: {recipient}\r\n{extra_headers}Subject: {subject}\r\n\r\n"
        f"Sent by a legacy app through relay.\r\n"
    )


def find_by_subject(
    peers: MailPeers, account: MailAccount, subject: str, timeout: float = 20.0
) -> list[bytes]:
    """Poll the account's INBOX over IMAP until mail with this subject arrives."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in peers.mailbox_messages(account) if f"Subject: {subject}".encode() in m]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def send_with_smtplib(
    port: int, login: str, secret: str, sender: str, rcpt: str, subject: str
) -> None:
    """Python's smtplib as the legacy app."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(login, secret)
        client.sendmail(sender, [rcpt], message_text(sender, rcpt, subject))


def send_with_swaks(
    port: int, login: str, secret: str, sender: str, rcpt: str, subject: str
) -> None:
    """swaks, the SMTP test tool ops reach for, as the legacy app."""
    done = subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--auth",
            "PLAIN",
            "--auth-user",
            login,
            "--auth-password",
            secret,
            "--from",
            sender,
            "--to",
            rcpt,
            "--header",
            f"Subject: {subject}",
            "--body",
            "Sent by swaks through relay.",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def send_with_msmtp(
    port: int, login: str, secret: str, sender: str, rcpt: str, subject: str
) -> None:
    """msmtp, the sendmail replacement cron jobs and PHP use, as the legacy app."""
    done = subprocess.run(
        [
            "msmtp",
            "--host=127.0.0.1",
            f"--port={port}",
            "--auth=plain",
            f"--user={login}",
            f"--passwordeval=echo {secret}",
            "--tls=off",
            f"--from={sender}",
            rcpt,
        ],
        input=message_text(sender, rcpt, subject),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


SENDERS = {"smtplib": send_with_smtplib, "swaks": send_with_swaks, "msmtp": send_with_msmtp}


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
@pytest.mark.parametrize("client", sorted(SENDERS))
def test_mail_from_a_legacy_client_lands_in_the_recipients_inbox(
    mail_peers: MailPeers, tmp_path: Path, client: str, tls: str
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = write_config(tmp_path, {"agency": postfix_provider(mail_peers, tls)})
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    subject = f"{client} over {tls} {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        SENDERS[client](relay.port, "alice", secret, alice.address, bob.address, subject)
    [delivered] = find_by_subject(mail_peers, bob, subject)
    parsed = email.message_from_bytes(delivered, policy=email.policy.default)
    assert parsed["From"] == alice.address
    assert parsed["Message-ID"] and parsed["Date"]


def test_wrong_upstream_password_gives_the_app_postfixs_5xx(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = write_config(tmp_path, {"agency": postfix_provider(mail_peers, "starttls")})
    secret = setup.add_user("alice", "agency", alice.address, "not-alices-password")
    with relay_process(setup) as relay, smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.login("alice", secret)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(
                alice.address, [bob.address], message_text(alice.address, bob.address, "x")
            )
    assert 500 <= refused.value.smtp_code < 600
    assert b"535 5.7.8" in refused.value.smtp_error  # Postfix's own words, passed through


def test_postfix_with_an_untrusted_certificate_is_refused(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    provider = postfix_provider(mail_peers, "implicit")
    del provider["ca_file"]
    setup = write_config(tmp_path, {"agency": provider})
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    subject = f"untrusted {uuid.uuid4().hex}"
    text = message_text(alice.address, bob.address, subject)
    with relay_process(setup) as relay, smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.login("alice", secret)
        client.mail(alice.address)
        client.rcpt(bob.address)
        code, reply = client.data(text)
        log = relay.log()
    # Nothing goes to an unverified peer: the mail waits in the queue, and both the app's
    # reply and the log say why.
    assert code == 250 and b"queued as" in reply
    assert b"certificate not accepted" in reply
    assert "certificate not accepted" in log
    assert find_by_subject(mail_peers, bob, subject, timeout=1.0) == []


def test_sigterm_lets_the_open_session_finish_and_exits_zero(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = write_config(tmp_path, {"agency": postfix_provider(mail_peers, "starttls")})
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    subject = f"drain {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
        client.login("alice", secret)
        client.mail(alice.address)
        client.rcpt(bob.address)
        relay.process.send_signal(signal.SIGTERM)
        wait_for_log(relay, "relay.draining")
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", relay.port, timeout=5).quit()
        code, reply = client.data(message_text(alice.address, bob.address, subject))
        client.close()
        assert code == 250, reply
        assert relay.process.wait(timeout=20) == 0
    assert len(find_by_subject(mail_peers, bob, subject)) == 1


def test_upstream_password_appears_in_no_log_database_or_cli_output(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = write_config(
        tmp_path, {"agency": postfix_provider(mail_peers, "starttls")}, logging={"level": "debug"}
    )
    secret = setup.add_user("alice", "agency", alice.address, alice.password)
    with relay_process(setup) as relay:
        send_with_smtplib(
            relay.port, "alice", secret, alice.address, bob.address, f"secret {uuid.uuid4().hex}"
        )
        with (
            smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client,
            pytest.raises(smtplib.SMTPAuthenticationError),
        ):
            client.login("alice", alice.password)  # an app that wrongly uses the real password
        log = relay.log()
    assert "delivery.attempt" in log and "delivered=1" in log
    outputs = [log, setup.cli("user", "show", "alice").out, setup.cli("user", "list").out]
    for text in outputs:
        assert alice.password not in text
        assert secret not in text
    assert every_database_byte_free_of(setup, alice.password.encode())


def every_database_byte_free_of(setup: RelaySetup, needle: bytes) -> bool:
    """Whether no file in the state dir (database, WAL) contains the needle."""
    with sqlite3.connect(setup.state_dir / "relay.db") as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    db.close()
    return all(
        needle not in path.read_bytes() for path in setup.state_dir.iterdir() if path.is_file()
    )


def wait_for_log(relay: RelayProcess, text: str, timeout: float = 10.0) -> None:
    """Wait until the daemon has logged the given text."""
    deadline = time.monotonic() + timeout
    while text not in relay.log():
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.05)
