"""The Sent copy in the whole flow: relay -> Postfix, then an APPEND to the user's real Dovecot."""

from __future__ import annotations

import email
import email.policy
import smtplib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from relay.config.load import load_config
from tests.harness import RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.test_end_to_end import find_by_subject, message_text, postfix_provider

pytestmark = pytest.mark.peers
FAST = {"min_backoff": 0.5, "max_backoff": 1}


def relay_with(peers: MailPeers, root: Path, **provider: Any) -> tuple[RelaySetup, str]:
    """A relay for alice with the peers as provider (IMAP included); (setup, secret)."""
    setup = write_config(
        root, {"agency": postfix_provider(peers, "starttls", **provider)}, queue=FAST
    )
    alice = peers.accounts["alice"]
    return setup, setup.add_user("alice", "agency", alice.address, alice.password)


def send_with_bcc(
    port: int, secret: str, alice: MailAccount, bob: MailAccount, subject: str
) -> None:
    """Send to bob with a Bcc to alice herself, as an app does."""
    text = message_text(alice.address, bob.address, subject, f"Bcc: {alice.address}\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("alice", secret)
        client.sendmail(alice.address, [bob.address, alice.address], text)


def copies_in_sent(
    peers: MailPeers, account: MailAccount, subject: str, timeout: float
) -> list[bytes]:
    """Poll alice's Sent until a copy with the subject shows up (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in peers.mailbox_messages(account, "Sent") if subject.encode() in m]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_relayed_mail_appears_once_in_alices_sent_with_bcc_kept(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = relay_with(mail_peers, tmp_path)
    subject = f"sent copy {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        send_with_bcc(relay.port, secret, alice, bob, subject)
        copies = copies_in_sent(mail_peers, alice, subject, timeout=15)
        time.sleep(1.0)  # any second copy would have arrived by now
        copies = copies_in_sent(mail_peers, alice, subject, timeout=0)
    [copy] = copies
    assert email.message_from_bytes(copy, policy=email.policy.default)["Bcc"] == alice.address
    [delivered] = find_by_subject(mail_peers, bob, subject)
    assert b"Bcc:" not in delivered


def test_sent_copy_never_files_nothing(mail_peers: MailPeers, tmp_path: Path) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = relay_with(mail_peers, tmp_path, sent_copy="never")
    subject = f"no copy {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        send_with_bcc(relay.port, secret, alice, bob, subject)
        assert find_by_subject(mail_peers, bob, subject)
        time.sleep(1.0)
        log = relay.log()
    assert copies_in_sent(mail_peers, alice, subject, timeout=0) == []
    assert "sent." not in log


def test_imap_down_still_delivers_with_250_and_files_the_copy_once_it_is_back(
    private_mail_peers: MailPeers, tmp_path: Path
) -> None:
    peers = private_mail_peers
    alice, bob = peers.accounts["alice"], peers.accounts["bob"]
    setup, secret = relay_with(peers, tmp_path)
    subject = f"imap down {uuid.uuid4().hex}"
    peers.stop_imap()
    with relay_process(setup) as relay:
        send_with_bcc(relay.port, secret, alice, bob, subject)  # raises unless 250
        time.sleep(1.0)
        assert "sent.retry" in relay.log()
        assert "1 Sent copies pending" in setup.cli("queue", "list").out
        peers.start_imap()
        copies_in_sent(peers, alice, subject, timeout=20)
        time.sleep(1.5)
        copies = copies_in_sent(peers, alice, subject, timeout=0)
    assert len(copies) == 1
    assert find_by_subject(peers, bob, subject)


def test_wrong_imap_password_is_logged_with_the_servers_reply_and_smtp_is_unaffected(
    mail_peers: MailPeers, private_mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    # SMTP through the shared Postfix, IMAP at another Dovecot where alice's password differs.
    imap = {
        "host": private_mail_peers.host,
        "port": private_mail_peers.imaps_port,
        "tls": "implicit",
    }
    both_cas = tmp_path / "both-cas.pem"
    both_cas.write_bytes(mail_peers.ca_file.read_bytes() + private_mail_peers.ca_file.read_bytes())
    setup, secret = relay_with(mail_peers, tmp_path / "relay", imap=imap, ca_file=str(both_cas))
    subject = f"wrong imap {uuid.uuid4().hex}"
    with relay_process(setup) as relay:
        send_with_bcc(relay.port, secret, alice, bob, subject)
        assert find_by_subject(mail_peers, bob, subject)
        deadline = time.monotonic() + 10
        while "sent.retry" not in relay.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = relay.log()
    line = next(entry for entry in log.splitlines() if "sent.retry" in entry)
    assert "AUTHENTICATIONFAILED" in line and "login" in line
    assert alice.password not in log


def test_a_command_holding_the_stores_write_lock_stalls_neither_mail_nor_its_sent_copy(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    # A `relay user ...` command mid-transaction holds SQLite's write lock. The daemon's store
    # writes (here: remembering the Sent folder it found) wait for it off the event loop; made
    # on the loop, they would stall every session until the busy timeout and then fail.
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = relay_with(mail_peers, tmp_path)
    first, second = (f"locked store {n} {uuid.uuid4().hex}" for n in (1, 2))
    database = load_config(setup.config_path).database_path
    with relay_process(setup) as relay:
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            send_with_bcc(relay.port, secret, alice, bob, first)
            # Filed: the daemon now wants to remember the folder, and waits for the lock.
            assert copies_in_sent(mail_peers, alice, first, timeout=15)
            send_with_bcc(relay.port, secret, alice, bob, second)
            assert find_by_subject(mail_peers, bob, second)
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert copies_in_sent(mail_peers, alice, second, timeout=15)
        time.sleep(0.5)
        log = relay.log()
    [found] = [
        line.split("sent folder found", 1)[1].strip(" :")
        for line in setup.cli("user", "show", "alice").out.splitlines()
        if line.strip().startswith("sent folder found")
    ]
    assert found == "Sent"  # written once the lock was free
    assert "sent.crashed" not in log and "database is locked" not in log
