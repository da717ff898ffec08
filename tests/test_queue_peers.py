"""The durable queue against real Postfix and Dovecot: crashes, outages, bounces."""

from __future__ import annotations

import random
import smtplib
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RelayProcess, RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.test_end_to_end import message_text, postfix_provider

pytestmark = pytest.mark.peers
FAST_RETRIES = {"min_backoff": 0.5, "max_backoff": 2, "first_attempt_timeout": 5}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def relay_for(
    peers: MailPeers, root: Path, port: int = 0, login: str = "alice", **provider: Any
) -> tuple[RelaySetup, str]:
    """A relay on a fixed port for one user, in front of the peers' Postfix; (setup, secret)."""
    setup = write_config(
        root,
        {"agency": postfix_provider(peers, "starttls", **provider)},
        listen=[{"address": "127.0.0.1", "port": port}],
        queue=FAST_RETRIES,
    )
    account = peers.accounts[login]
    return setup, setup.add_user(login, "agency", account.address, account.password)


def subjects_in(peers: MailPeers, account: MailAccount, tag: str) -> list[str]:
    """Subjects of the account's INBOX mails carrying the tag, in delivery order."""
    found = []
    for message in peers.mailbox_messages(account):
        for line in message.split(b"\r\n"):
            if line.startswith(b"Subject: ") and tag.encode() in line:
                found.append(line[len(b"Subject: ") :].decode())
    return found


def wait_for_subjects(
    peers: MailPeers, account: MailAccount, tag: str, count: int, timeout: float = 60.0
) -> list[str]:
    """Poll over IMAP until at least count tagged mails arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = subjects_in(peers, account, tag)
        if len(set(found)) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def send_one(port: int, secret: str, sender: str, rcpt: str, subject: str) -> tuple[str, bytes]:
    """Send as a legacy app does; (the Message-ID it used, relay's reply to DATA)."""
    message_id = f"<{uuid.uuid4().hex}@app.example>"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("alice", secret)
        client.mail(sender)
        client.rcpt(rcpt)
        code, reply = client.data(
            message_text(sender, rcpt, subject, f"Message-ID: {message_id}\r\n")
        )
    assert code == 250, reply
    return message_id, reply


def accepted_order(peers: MailPeers, message_ids: list[str]) -> list[str]:
    """The given Message-IDs in the order Postfix's cleanup accepted them, from its log."""
    wanted = set(message_ids)
    order = []
    for line in peers.postfix_log().splitlines():
        if "message-id=" in line:
            found = line.rsplit("message-id=", 1)[1].strip()
            if found in wanted and found not in order:
                order.append(found)
    return order


@pytest.mark.parametrize(
    ("login", "provider"),
    [
        pytest.param("alice", {}, id="provider-keeps-no-sent-copy"),
        # erin's Postfix files what she submits in her Sent, as Gmail does: relay can look.
        pytest.param("erin", {"files_sent_itself": True}, id="provider-files-sent"),
    ],
)
def test_no_mail_acknowledged_with_250_is_lost_when_relay_is_killed(
    mail_peers: MailPeers, tmp_path: Path, login: str, provider: dict[str, Any]
) -> None:
    alice, bob = mail_peers.accounts[login], mail_peers.accounts["bob"]
    port = free_port()
    setup, secret = relay_for(mail_peers, tmp_path, port, login, **provider)
    tag = uuid.uuid4().hex[:12]
    acked: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def app(worker: int, count: int) -> None:
        for index in range(count):
            subject = f"crash {tag} {worker}-{index}"
            message_id = f"<{tag}.{worker}.{index}@app.example>"
            body = message_text(
                alice.address, bob.address, subject, f"Message-ID: {message_id}\r\n"
            )
            while not done.is_set():  # a legacy app retries until it hears 250
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                        client.login(login, secret)
                        client.sendmail(alice.address, [bob.address], body)
                    with lock:
                        acked.append(subject)
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)

    workers = [threading.Thread(target=app, args=(w, 50)) for w in range(4)]
    rng = random.Random(7)
    with relay_process(setup) as relay:
        kill_rounds(relay, setup, rng, workers)
    for worker in workers:
        worker.join(timeout=120)
    done.set()
    with relay_process(setup):
        found = wait_for_subjects(mail_peers, bob, tag, len(acked))
    missing = set(acked) - set(found)
    duplicates = len(found) - len(set(found))
    print(f"crash test: {len(acked)} acked, {len(set(found))} delivered, {duplicates} duplicates")
    assert len(acked) == 200
    assert missing == set()
    if provider.get("files_sent_itself"):
        # Each mail a kill left in doubt was looked up in Sent before it could go twice.
        assert duplicates == 0


def kill_rounds(
    relay: RelayProcess, setup: RelaySetup, rng: random.Random, workers: list[threading.Thread]
) -> None:
    """Start the apps, then kill -9 and restart relay three times at random moments."""
    for worker in workers:
        worker.start()
    current = relay
    with ExitStack() as restarts:
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.2))
            current.process.kill()  # SIGKILL: no drain, no cleanup
            current.process.wait()
            current = restarts.enter_context(relay_process(setup))
        for worker in workers:
            worker.join(timeout=120)


def test_mail_queued_while_postfix_is_down_is_delivered_in_order_when_it_returns(
    private_mail_peers: MailPeers, tmp_path: Path
) -> None:
    peers = private_mail_peers
    alice, bob = peers.accounts["alice"], peers.accounts["bob"]
    setup, secret = relay_for(peers, tmp_path)
    tag = uuid.uuid4().hex[:12]
    peers.stop_postfix()
    with relay_process(setup) as relay:
        sent = []
        for index in range(5):
            message_id, reply = send_one(
                relay.port, secret, alice.address, bob.address, f"order {tag} {index}"
            )
            assert reply.startswith(b"2.0.0 ") and b"queued as " in reply  # either reply mode
            sent.append(message_id)
        assert "5 queued," in setup.cli("queue", "list").out
        peers.start_postfix()
        found = wait_for_subjects(peers, bob, tag, 5)
    assert sorted(found) == [f"order {tag} {index}" for index in range(5)]
    # Postfix itself may hand them to Dovecot in parallel, so order is judged where relay
    # hands over: the order Postfix accepted them in.
    assert accepted_order(peers, sent) == sent


def test_a_refusal_on_retry_bounces_to_the_senders_real_inbox(
    private_mail_peers: MailPeers, tmp_path: Path
) -> None:
    peers = private_mail_peers
    alice = peers.accounts["alice"]
    setup, secret = relay_for(peers, tmp_path)
    tag = uuid.uuid4().hex[:12]
    peers.stop_postfix()
    with relay_process(setup) as relay:
        send_one(relay.port, secret, alice.address, "nobody@example.org", f"bounce {tag}")
        peers.start_postfix()
        deadline = time.monotonic() + 30
        reports: list[bytes] = []
        while not reports and time.monotonic() < deadline:
            reports = [m for m in peers.mailbox_messages(alice) if b"multipart/report" in m]
            time.sleep(0.3)
    [report] = reports
    assert b"Final-Recipient: rfc822; nobody@example.org" in report
    assert b"550 5.1.1" in report and b"User unknown" in report
    assert f"bounce {tag}".encode() in report  # the original headers ride along


def test_in_spool_mode_a_refusal_of_the_first_attempt_reaches_the_sender_as_a_dsn(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice = mail_peers.accounts["alice"]
    setup, secret = relay_for(mail_peers, tmp_path)  # the default listener: spool mode
    tag = uuid.uuid4().hex[:12]
    with relay_process(setup) as relay:
        _, reply = send_one(relay.port, secret, alice.address, "nobody@example.org", f"dsn {tag}")
        deadline = time.monotonic() + 30
        reports: list[bytes] = []
        while not reports and time.monotonic() < deadline:
            reports = [
                m
                for m in mail_peers.mailbox_messages(alice)
                if b"multipart/report" in m and f"dsn {tag}".encode() in m
            ]
            time.sleep(0.3)
    assert reply.startswith(b"2.0.0 Ok: queued as ")  # the app did not wait for the verdict
    [report] = reports
    assert b"Final-Recipient: rfc822; nobody@example.org" in report
    assert b"550 5.1.1" in report
