"""Real programs that call sendmail (PHP's mail(), cron, s-nail) -> relay -> Postfix -> Dovecot."""

from __future__ import annotations

import email
import email.policy
import pwd
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.entrylab import ROOT, open_directory, relay_cli, write_relay_config
from tests.harness import RelayProcess, RelaySetup, relay_process
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.test_end_to_end import postfix_provider

pytestmark = pytest.mark.peers

PHP = Path("/usr/bin/php")
S_NAIL = Path("/usr/bin/s-nail")
MAPPED, UNMAPPED = "www-data", "nobody"


@dataclass
class Apps:
    """relay with its sendmail socket in front of the peers, and a `sendmail` symlink to it."""

    root: Path
    config: Path
    sendmail: Path  # <root>/bin/sendmail -> the `relay` console script, as /usr/sbin/sendmail
    relay: RelayProcess

    def env(self) -> dict[str, str]:
        """The environment a caller of sendmail has: relay's config found by $RELAY_CONFIG."""
        return {"PATH": "/usr/bin:/bin", "RELAY_CONFIG": str(self.config), "PYTHONPATH": str(ROOT)}


def relay_script() -> Path:
    """The `relay` console script next to this interpreter (what `pip install` puts there)."""
    script = Path(sys.executable).parent / "relay"
    if not script.exists():
        pytest.skip(f"no relay console script at {script} (pip install -e .)")
    return script


def as_user(name: str, command: list[str]) -> list[str]:
    """command run as the Unix user name (the uid SO_PEERCRED reports to relay)."""
    entry = pwd.getpwnam(name)
    # This interpreter may live under /root (pyenv), which other users cannot enter: the
    # caller keeps only the right to pass through directories, so it is still uid `name`.
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return ["setpriv", *ids, *caps, *command]


@pytest.fixture(scope="module")
def apps(mail_peers: MailPeers) -> Iterator[Apps]:
    """One relay for the module: users alice and bob, www-data and root mapped to alice."""
    with open_directory() as root:
        listen = [
            {"address": "127.0.0.1", "port": 0},
            {
                "socket": str(root / "relay.sock"),
                "unix_users": {MAPPED: "alice", "root": "alice"},
                "reply": "verdict",
            },
        ]
        config = write_relay_config(root, postfix_provider(mail_peers, "starttls"), listen=listen)
        relay_cli("--config", str(config), "init")
        alice = mail_peers.accounts["alice"]
        (root / "upstream").write_text(alice.password + "\n")
        relay_cli(
            *("--config", str(config), "user", "add", "alice", "--provider", "lab"),
            *("--email", alice.address, "--display-name", "Alice Example"),
            *("--password-file", str(root / "upstream")),
        )
        (root / "bin").mkdir(mode=0o755)
        sendmail = root / "bin" / "sendmail"
        sendmail.symlink_to(relay_script())
        with relay_process(RelaySetup(root)) as relay:
            yield Apps(root, config, sendmail, relay)


def find_by_subject(
    peers: MailPeers,
    account: MailAccount,
    subject: str,
    mailbox: str = "INBOX",
    timeout: float = 20.0,
) -> list[bytes]:
    """Poll a mailbox over IMAP until mail with this subject is there (or the time is up)."""
    deadline = time.monotonic() + timeout
    wanted = f"Subject: {subject}".encode()
    while True:
        found = [m for m in peers.mailbox_messages(account, mailbox) if wanted in m]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def php_mail(apps: Apps, user: str, to: str, subject: str) -> subprocess.CompletedProcess[str]:
    """PHP's mail() with sendmail_path at relay, run as user; exit 0 when mail() was true."""
    if not PHP.exists():
        pytest.fail("php-cli is not installed (scripts/test installs it)")
    code = (
        f"exit(mail('{to}', '{subject}', \"Hello from PHP.\\nSecond line.\\n\","
        " 'X-Mailer: PHP/' . phpversion()) ? 0 : 3);"
    )
    command = [str(PHP), "-n", "-d", f"sendmail_path={apps.sendmail} -t -i", "-r", code]
    return subprocess.run(
        as_user(user, command),
        env=apps.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_php_mail_as_a_mapped_user_lands_in_the_inbox_with_a_sent_copy(
    mail_peers: MailPeers, apps: Apps
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = f"php mail {uuid.uuid4().hex}"
    done = php_mail(apps, MAPPED, bob.address, subject)
    assert done.returncode == 0, done.stdout + done.stderr
    [delivered] = find_by_subject(mail_peers, bob, subject)
    parsed = email.message_from_bytes(delivered, policy=email.policy.default)
    assert parsed["From"] == f"Alice Example <{alice.address}>"
    assert parsed["X-Mailer"].startswith("PHP/") and parsed["Message-ID"]
    assert find_by_subject(mail_peers, alice, subject, mailbox="Sent") != []
    uid = pwd.getpwnam(MAPPED).pw_uid
    assert f"via=sendmail uid={uid}" in apps.relay.log()


def test_php_mail_as_an_unmapped_user_returns_false_and_nothing_is_sent(
    mail_peers: MailPeers, apps: Apps
) -> None:
    bob = mail_peers.accounts["bob"]
    subject = f"php unmapped {uuid.uuid4().hex}"
    done = php_mail(apps, UNMAPPED, bob.address, subject)
    assert done.returncode == 3, done.stdout + done.stderr  # mail() returned false
    assert f"Unix user {UNMAPPED} (uid {pwd.getpwnam(UNMAPPED).pw_uid}) may not send" in (
        apps.relay.log()
    )
    assert find_by_subject(mail_peers, bob, subject, timeout=1.0) == []


def test_crons_exact_invocation_lands_with_crons_name_and_the_users_address(
    mail_peers: MailPeers, apps: Apps
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = f"Cron <root@host> /usr/local/bin/backup {uuid.uuid4().hex}"
    # Debian cron: MAILARGS "%s -FCronDaemon -i -B8BITMIME -oem %s", and this header.
    message = (
        f"From: root (Cron Daemon)\nTo: {bob.address}\nSubject: {subject}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
        "Content-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n"
        "X-Cron-Env: <HOME=/root>\nX-Cron-Env: <LOGNAME=root>\n\nbackup done: café\n"
    ).encode()
    command = [str(apps.sendmail), "-FCronDaemon", "-i", "-B8BITMIME", "-oem", bob.address]
    done = subprocess.run(command, input=message, env=apps.env(), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    [delivered] = find_by_subject(mail_peers, bob, subject)
    parsed = email.message_from_bytes(delivered, policy=email.policy.default)
    assert parsed["From"] == f"Cron Daemon <{alice.address}>"
    assert "café" in parsed.get_content()


def test_mail_s_from_s_nail_goes_through_a_sendmail_symlink(
    mail_peers: MailPeers, apps: Apps
) -> None:
    if not S_NAIL.exists():
        pytest.fail("s-nail is not installed (scripts/test installs it)")
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    subject = f"mail -s {uuid.uuid4().hex}"
    command = [str(S_NAIL), "-n", "-S", f"mta={apps.sendmail}", "-s", subject, bob.address]
    done = subprocess.run(
        command,
        input="Disk almost full.\n",
        env={**apps.env(), "HOME": str(apps.root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [delivered] = find_by_subject(mail_peers, bob, subject)
    assert f"<{alice.address}>".encode() in delivered.split(b"\r\n\r\n")[0]


def test_t_reaches_to_cc_and_bcc_and_only_the_sent_copy_keeps_the_bcc(
    mail_peers: MailPeers, apps: Apps
) -> None:
    alice = mail_peers.accounts["alice"]
    bob, carol, dave = (mail_peers.accounts[name] for name in ("bob", "carol", "dave"))
    subject = f"minutes {uuid.uuid4().hex}"
    message = (
        f"To: {bob.address}\nCc: {carol.address}\nBcc: {dave.address}\nSubject: {subject}\n\n"
        "The minutes are attached.\n"
    )
    done = subprocess.run(
        [str(apps.sendmail), "-t", "-i"],
        input=message.encode(),
        env=apps.env(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for account in (bob, carol, dave):
        [delivered] = find_by_subject(mail_peers, account, subject)
        assert b"\r\nBcc:" not in delivered.split(b"\r\n\r\n")[0], account.address
    [sent] = find_by_subject(mail_peers, alice, subject, mailbox="Sent")
    assert f"Bcc: {dave.address}".encode() in sent
