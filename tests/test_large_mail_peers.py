"""Large mail streamed through relay: spooled in pieces, sent and filed in pieces, never whole."""

from __future__ import annotations

import base64
import imaplib
import socket
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import RelayProcess, RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.test_end_to_end import postfix_provider

pytestmark = pytest.mark.peers

LARGE = 40_000_000  # under the test Postfix's message_size_limit (40 MiB) with its headers
LINE = b"." + b"x" * 74 + b"\r\n"  # every line starts with a dot: stuffed on each hop


def large_body(size: int) -> bytes:
    """A body of about size octets, CRLF lines that each start with a dot."""
    return LINE * (size // len(LINE))


def header_block(sender: str, recipient: str, subject: str, message_id: str) -> bytes:
    """The header block a legacy app writes, ending with the empty line."""
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    ).encode()


def wire_data(message: bytes) -> bytes:
    """DATA as an SMTP client sends it: dot-stuffed, with the end line."""
    return b"." + message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class RawClient:
    """An SMTP client on a plain socket, to stop sending at any point of DATA."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> bytes:
        """One whole reply (its last line), or b"" at the end of the connection."""
        while True:
            line = self.file.readline()
            if line[3:4] != b"-":
                return line

    def command(self, line: str) -> bytes:
        """Send one command line; its reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def start_data(self, login: str, secret: str, sender: str, recipient: str) -> None:
        """Log in and start a transaction up to the 354."""
        assert self.command("EHLO app.example").startswith(b"250")
        assert self.command(f"AUTH LOGIN {b64(login)}").startswith(b"334")
        assert self.command(b64(secret)).startswith(b"235")
        assert self.command(f"MAIL FROM:<{sender}>").startswith(b"250")
        assert self.command(f"RCPT TO:<{recipient}>").startswith(b"250")
        assert self.command("DATA").startswith(b"354")

    def close(self) -> None:
        """Close the connection."""
        self.file.close()
        self.sock.close()


def b64(text: str) -> str:
    """Base64 of text, as AUTH LOGIN wants it."""
    return base64.b64encode(text.encode()).decode()


def proc_kib(pid: int, field: str) -> int:
    """A figure (VmRSS, VmHWM) of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def staging_files_open(pid: int) -> int:
    """How many staged (unlinked) body files the process has open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        count += "/incoming/" in target
    return count


def fetch_by_subject(peers: MailPeers, account: MailAccount, mailbox: str, subject: str) -> bytes:
    """The one message in mailbox with this subject, fetched whole over IMAP; b"" if none."""
    client = peers.imap(account)
    try:
        status, _ = client.select(f'"{mailbox}"', readonly=True)
        assert status == "OK", mailbox
        _, found = client.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
        uids = found[0].split() if found and isinstance(found[0], bytes) else []
        if not uids:
            return b""
        _, fetched = client.uid("FETCH", uids[-1].decode(), "(BODY.PEEK[])")
        return next(bytes(item[1]) for item in fetched if isinstance(item, tuple))
    finally:
        client.logout()


def wait_for_subject(
    peers: MailPeers, account: MailAccount, mailbox: str, subject: str, timeout: float
) -> bytes:
    """Poll until the message with subject is in mailbox; b"" after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = fetch_by_subject(peers, account, mailbox, subject)
        except (OSError, imaplib.IMAP4.error):
            found = b""
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def large_mail_relay(peers: MailPeers, root: Path, **settings: object) -> tuple[RelaySetup, str]:
    """A relay in spool mode in front of the peers' Postfix for alice; (setup, secret)."""
    setup = write_config(
        root,
        {"agency": postfix_provider(peers, "starttls")},
        listen=[{"address": "127.0.0.1", "port": 0}],
        limits={"max_message_bytes": 45_000_000},
        **settings,
    )
    alice = peers.accounts["alice"]
    return setup, setup.add_user("alice", "agency", alice.address, alice.password)


def spool_rows(setup: RelaySetup) -> tuple[int, int]:
    """(messages, bodies) rows in the spool file."""
    with sqlite3.connect(setup.state_dir / "spool.db") as db:
        messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        bodies = db.execute("SELECT count(*) FROM bodies").fetchone()[0]
    db.close()
    return int(messages), int(bodies)


def spooled_message_ids(setup: RelaySetup) -> set[str]:
    """The Message-IDs of what the spool holds."""
    with sqlite3.connect(setup.state_dir / "spool.db") as db:
        found = {str(row[0]) for row in db.execute("SELECT message_id FROM messages")}
    db.close()
    return found


def send_small(relay: RelayProcess, secret: str, sender: str, recipient: str) -> None:
    """One small mail, so that AUTH's first slow check and the first session are behind us."""
    client = RawClient(relay.port)
    try:
        client.start_data("alice", secret, sender, recipient)
        client.sock.sendall(
            wire_data(header_block(sender, recipient, "warm up", "<w@x>") + b"hi\r\n")
        )
        assert client.reply().startswith(b"250")
    finally:
        client.close()


def test_a_40_mb_mail_reaches_inbox_and_sent_byte_identical_without_being_held_whole(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = large_mail_relay(mail_peers, tmp_path)
    subject = f"large {uuid.uuid4().hex}"
    header = header_block(alice.address, bob.address, subject, f"<{uuid.uuid4().hex}@app.example>")
    body = large_body(LARGE)
    with relay_process(setup) as relay:
        send_small(relay, secret, alice.address, bob.address)
        time.sleep(1.0)  # the warm-up mail's delivery and Sent copy are over
        pid = relay.process.pid
        reset_peak_rss(pid)
        before = proc_kib(pid, "VmRSS")
        client = RawClient(relay.port)
        try:
            client.start_data("alice", secret, alice.address, bob.address)
            client.sock.sendall(wire_data(header + body))
            reply = client.reply()
        finally:
            client.close()
        assert reply.startswith(b"250"), reply
        delivered = wait_for_subject(mail_peers, bob, "INBOX", subject, timeout=120)
        filed = wait_for_subject(mail_peers, alice, "Sent", subject, timeout=120)
        growth = (proc_kib(pid, "VmHWM") - before) * 1024
        log = relay.log()
    assert delivered, log[-3000:]
    assert filed, log[-3000:]
    for copy in (delivered, filed):
        head, _, rest = copy.partition(b"\r\n\r\n")
        assert rest == body  # every octet, every stuffed dot undone
        for line in header.split(b"\r\n")[:5]:
            assert line in head.split(b"\r\n")
    # Received whole, dot-unstuffed, spooled, sent and appended: never one copy of it in memory.
    print(f"peak RSS growth for a 40 MB mail: {growth / 1e6:.1f} MB")
    assert growth < LARGE // 2, f"peak RSS grew by {growth / 1e6:.1f} MB for a 40 MB mail"
    assert spool_rows(setup) == (0, 0)
    # Delivered and filed in Sent: the body file the two shared goes with the Sent job.
    deadline = time.monotonic() + 10
    while list((setup.state_dir / "bodies").iterdir()):
        assert time.monotonic() < deadline, "the body file outlived the mail and its Sent copy"
        time.sleep(0.05)


def test_kill_9_while_a_large_mail_streams_in_leaves_nothing_to_deliver(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup, secret = large_mail_relay(mail_peers, tmp_path)
    subject, message_id = f"cut {uuid.uuid4().hex}", f"<{uuid.uuid4().hex}@app.example>"
    header = header_block(alice.address, bob.address, subject, message_id)
    partial = wire_data(header + large_body(8_000_000))[:-3]  # no end line: still arriving
    with relay_process(setup) as relay:
        client = RawClient(relay.port)
        try:
            client.start_data("alice", secret, alice.address, bob.address)
            client.sock.sendall(partial)
            deadline = time.monotonic() + 30
            while not staging_files_open(relay.process.pid):
                assert time.monotonic() < deadline, "the body was never staged"
                time.sleep(0.05)
            relay.process.kill()  # SIGKILL: no drain, no cleanup
            relay.process.wait(timeout=10)
            try:
                heard = client.reply()
            except ConnectionResetError:
                heard = b""  # the kernel reset what the dead process left unread
        finally:
            client.close()
    assert not heard.startswith(b"250"), heard  # the app was never told the mail was taken
    assert spool_rows(setup) == (0, 0)
    with relay_process(setup) as relay:
        send_small(relay, secret, alice.address, bob.address)  # relay works after the crash
        assert message_id not in spooled_message_ids(setup)
        assert wait_for_subject(mail_peers, bob, "INBOX", subject, timeout=5) == b""
    assert list((setup.state_dir / "incoming").iterdir()) == []
    assert list((setup.state_dir / "bodies").iterdir()) == []  # no body file outlived it
