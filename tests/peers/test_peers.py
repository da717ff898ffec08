"""Smoke tests of the real Postfix and Dovecot peers themselves."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import ssl
import time
import uuid
from email.message import EmailMessage

import pytest

from tests.peers.mailpeers import MailAccount, MailPeers

pytestmark = pytest.mark.peers


def tls_context(peers: MailPeers) -> ssl.SSLContext:
    """A client context trusting only the peers' CA."""
    return ssl.create_default_context(cafile=str(peers.ca_file))


def message(sender: MailAccount, recipient: MailAccount) -> EmailMessage:
    """A small message with a unique subject."""
    mail = EmailMessage()
    mail["From"] = sender.address
    mail["To"] = recipient.address
    mail["Subject"] = f"smoke {uuid.uuid4()}"
    mail.set_content("hello\n")
    return mail


def submit_starttls(peers: MailPeers, sender: MailAccount, mail: EmailMessage) -> None:
    """Send mail through the STARTTLS submission port, authenticated as sender."""
    with smtplib.SMTP(peers.host, peers.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(peers))
        smtp.login(sender.address, sender.password)
        smtp.send_message(mail)


def delivered(peers: MailPeers, account: MailAccount, mail: EmailMessage, before: int) -> bytes:
    """Wait for mail to arrive in account's INBOX after before other messages."""
    found = peers.wait_for_messages(account, before + 1)
    subject = f"Subject: {mail['Subject']}".encode()
    [match] = [raw for raw in found if subject in raw]
    return match


def refuses(peers: MailPeers, port: int) -> bool:
    """Whether a connection to port is refused."""
    try:
        socket.create_connection((peers.host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_shared_peers_start_within_five_seconds(mail_peers: MailPeers) -> None:
    print(f"mail peers started in {mail_peers.startup_seconds:.2f} s")
    assert mail_peers.startup_seconds < 5


def test_alice_submits_over_starttls_and_bob_reads_it_over_imap(mail_peers: MailPeers) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    before = len(mail_peers.mailbox_messages(bob))
    mail = message(alice, bob)
    submit_starttls(mail_peers, alice, mail)
    assert b"hello" in delivered(mail_peers, bob, mail, before)


def test_implicit_tls_submission_delivers_to_the_other_domain(mail_peers: MailPeers) -> None:
    alice, dave = mail_peers.accounts["alice"], mail_peers.accounts["dave"]
    before = len(mail_peers.mailbox_messages(dave))
    mail = message(alice, dave)
    context = tls_context(mail_peers)
    with smtplib.SMTP_SSL(mail_peers.host, mail_peers.submissions_port, context=context) as smtp:
        smtp.login(alice.address, alice.password)
        smtp.send_message(mail)
    delivered(mail_peers, dave, mail, before)


def test_submission_advertises_a_40_mb_size_limit(mail_peers: MailPeers) -> None:
    with smtplib.SMTP(mail_peers.host, mail_peers.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(mail_peers))
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "41943040"


def test_auth_before_starttls_is_refused_with_530(mail_peers: MailPeers) -> None:
    alice = mail_peers.accounts["alice"]
    token = base64.b64encode(f"\0{alice.address}\0{alice.password}".encode()).decode()
    with smtplib.SMTP(mail_peers.host, mail_peers.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        assert "auth" not in smtp.esmtp_features
        code, _ = smtp.docmd("AUTH", f"PLAIN {token}")
    assert code == 530


def test_wrong_password_gets_535_within_three_seconds(mail_peers: MailPeers) -> None:
    alice = mail_peers.accounts["alice"]
    started = time.monotonic()
    with smtplib.SMTP(mail_peers.host, mail_peers.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(mail_peers))
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(alice.address, "not-the-password")
    assert refused.value.smtp_code == 535
    assert time.monotonic() - started < 3


def test_unauthenticated_client_cannot_send(mail_peers: MailPeers) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    with smtplib.SMTP(mail_peers.host, mail_peers.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(mail_peers))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.send_message(message(alice, bob))


def test_imap_starttls_port_accepts_a_login(mail_peers: MailPeers) -> None:
    bob = mail_peers.accounts["bob"]
    with imaplib.IMAP4(mail_peers.host, mail_peers.imap_port, timeout=10) as client:
        client.starttls(tls_context(mail_peers))
        status, _ = client.login(bob.address, bob.password)
    assert status == "OK"


def test_alice_has_a_sent_folder_flagged_special_use(mail_peers: MailPeers) -> None:
    mailboxes = mail_peers.list_mailboxes(mail_peers.accounts["alice"])
    assert [name for flags, name in mailboxes if "\\Sent" in flags.split()] == ["Sent"]


def test_carol_has_itens_enviados_and_no_special_use_flags(mail_peers: MailPeers) -> None:
    carol = mail_peers.accounts["carol"]
    mailboxes = mail_peers.list_mailboxes(carol)
    assert "Itens Enviados" in [name for _, name in mailboxes]
    assert [flags for flags, _ in mailboxes if flags] == []
    assert mail_peers.mailbox_messages(carol, "Itens Enviados") == []


def test_waiting_for_missing_messages_fails_with_what_was_found(mail_peers: MailPeers) -> None:
    with pytest.raises(AssertionError, match="Trash: 0 of 1 messages"):
        mail_peers.wait_for_messages(mail_peers.accounts["dave"], 1, "Trash", timeout=0.3)


def test_stopped_postfix_refuses_connections_until_started_again(
    private_mail_peers: MailPeers,
) -> None:
    peers = private_mail_peers
    alice, bob = peers.accounts["alice"], peers.accounts["bob"]
    peers.stop_postfix()
    assert refuses(peers, peers.submission_port)
    assert refuses(peers, peers.submissions_port)
    peers.start_postfix()
    mail = message(alice, bob)
    submit_starttls(peers, alice, mail)
    delivered(peers, bob, mail, 0)


def test_postfix_delivers_while_imap_is_down(private_mail_peers: MailPeers) -> None:
    peers = private_mail_peers
    alice, bob = peers.accounts["alice"], peers.accounts["bob"]
    peers.stop_imap()
    assert refuses(peers, peers.imaps_port)
    assert refuses(peers, peers.imap_port)
    mail = message(alice, bob)
    submit_starttls(peers, alice, mail)
    peers.start_imap()
    delivered(peers, bob, mail, 0)
