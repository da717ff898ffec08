"""Renewal notices against the real Postfix, Dovecot and OAuth2 server.

A user whose grant is revoked, or whose app password Postfix refuses with 535, finds a notice
in their own INBOX (sent through the notification account's mailbox) saying what happened, in
the provider's words, with a fresh link to their page; once a day, and `relay status` says so.
"""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser import free_port
from tests.harness import RelayProcess, RelaySetup, relay_process, write_config
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.oauthserver import AuthorizationServer
from tests.test_end_to_end import message_text, postfix_provider
from tests.test_oauth_flow import authorize, local_secret_of, oauth_provider

pytestmark = pytest.mark.peers

FAST = {"connect_timeout": 5, "timeout": 10}
NOTIFIED = re.compile(r"renewal\.notified user=(\S+) reason=(\S+) to=(\S+) via=(\S+) .* id=(\w+)")


def submit(port: int, login: str, secret: str, sender: str, rcpt: str) -> tuple[int, str]:
    """One mail from a legacy app; relay's reply to DATA (or to RCPT, if it refused there)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.login(login, secret)
        client.mail(sender)
        client.rcpt(rcpt)
        try:
            code, reply = client.data(message_text(sender, rcpt, f"app {uuid.uuid4().hex}"))
        except smtplib.SMTPDataError as refused:
            code, error = refused.smtp_code, refused.smtp_error
            reply = error if isinstance(error, bytes) else error.encode()
    return code, reply.decode()


def notice_in(
    peers: MailPeers, account: MailAccount, notice_id: str, timeout: float = 30.0
) -> str | None:
    """The renewal notice with this id in the account's INBOX, as text, once it arrived."""
    deadline = time.monotonic() + timeout
    marker = f"<renewal-{notice_id}@relay.test>".encode()
    while True:
        for message in peers.mailbox_messages(account):
            if marker in message:
                return message.decode()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def notified(relay: RelayProcess) -> list[tuple[str, ...]]:
    """(user, reason, to, via, id) of each renewal.notified line logged so far."""
    return [match.groups() for match in NOTIFIED.finditer(relay.log())]


def add_notifier(setup: RelaySetup, peers: MailPeers) -> str:
    """bob's mailbox, as relay user 'notices' on provider 'agency', sends the notices."""
    bob = peers.accounts["bob"]
    return setup.add_user("notices", "agency", bob.address, bob.password)


def agency_setup(tmp_path: Path, peers: MailPeers, notify: dict[str, str]) -> RelaySetup:
    """relay sending through the real Postfix as provider 'agency', with these notify settings."""
    providers = {"agency": postfix_provider(peers, "starttls")}
    return write_config(tmp_path, providers, upstream=FAST, notify=notify)


def test_a_revoked_grant_sends_the_user_one_notice_with_a_link_to_their_page(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    web_port = free_port()
    providers: dict[str, Any] = {
        "lab": oauth_provider(mail_peers, oauth_server, tmp_path),
        "agency": postfix_provider(mail_peers, "starttls"),
    }
    setup = write_config(
        tmp_path,
        providers,
        upstream=FAST,
        logging={"level": "debug"},
        web={"enabled": True, "port": web_port, "public_url": f"http://127.0.0.1:{web_port}"},
        notify={"account": "notices"},
    )
    added = setup.cli(
        "user", "add", "alice", "--provider", "lab", "--email", alice.address, "--oauth2"
    )
    assert added.status == 0, added.err
    authorize(setup)
    notifier_secret = add_notifier(setup, mail_peers)
    oauth_server.revoke(alice.address)  # the user removed relay's access at the provider
    secret = local_secret_of(setup)

    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, bob.address)
        assert code == 250 and "queued" in reply, reply
        [(user, reason, to, via, notice_id)] = notified(relay)
        assert (user, reason, to, via) == ("alice", "needs-authorize", alice.address, "notices")
        notice = notice_in(mail_peers, alice, notice_id)
        assert notice is not None, relay.log()
        assert f"From: relay <{bob.address}>" in notice
        assert "Subject: Action needed: relay cannot send mail as " + alice.address in notice
        assert "invalid_grant" in notice  # the provider's own words
        assert "sign in to your mailbox again" in notice
        found = re.search(rf"http://127\.0\.0\.1:{web_port}/enroll/(\S+)", notice)
        assert found is not None, notice
        link, token = found.group(0), found.group(1)
        assert "The link works once, until " in notice

        with urllib.request.urlopen(link, timeout=10) as page:  # noqa: S310  (loopback)
            assert page.status == 200
            assert alice.address in page.read().decode()

        # A second failure within the day: nothing more is sent, and it says why at DEBUG.
        code, reply = submit(relay.port, "alice", secret, alice.address, bob.address)
        assert code == 250 and "queued" in reply, reply
        assert "renewal.suppressed user=alice reason=needs-authorize" in relay.log()
        assert len(notified(relay)) == 1

        status = setup.cli("status")
        assert status.status == 0, status.err
        block = status.out.split("renewal notices:", 1)[1]
        row = next(line for line in block.splitlines() if line.startswith("alice "))
        assert "needs-authorize" in row and alice.address in row and "invalid_grant" in row
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row)
        log = relay.log()
    for secret_text in (token, secret, notifier_secret, bob.password, alice.password):
        assert secret_text not in log
        assert secret_text not in status.out
    for secret_text in (secret, notifier_secret, bob.password, alice.password):
        assert secret_text not in notice


def test_an_app_password_refused_with_535_sends_a_notice_naming_the_reply(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = agency_setup(tmp_path, mail_peers, notify={"account": "notices", "admin": bob.address})
    wrong = f"revoked-app-password-{uuid.uuid4().hex[:8]}"
    secret = setup.add_user("alice", "agency", alice.address, wrong)
    notifier_secret = add_notifier(setup, mail_peers)

    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, bob.address)
        assert code >= 500 and "535 5.7.8" in reply, reply
        [(user, reason, to, via, notice_id)] = notified(relay)
        assert (user, reason, to, via) == ("alice", "password-refused", alice.address, "notices")
        notice = notice_in(mail_peers, alice, notice_id)
        assert notice is not None, relay.log()
        assert "refuses the password relay" in notice
        assert "535 5.7.8" in notice  # Postfix's own reply
        # The pages are off: no link, the admin is named instead.
        assert "/enroll/" not in notice and f"Ask {bob.address} to renew it" in notice
        status = setup.cli("status")
        log = relay.log()
    assert "password-refused" in status.out.split("renewal notices:", 1)[1]
    for secret_text in (wrong, secret, notifier_secret, bob.password):
        assert secret_text not in notice
        assert secret_text not in log


def test_without_a_notification_account_the_admin_is_told_through_their_own_mailbox(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup = agency_setup(tmp_path, mail_peers, notify={"admin": bob.address})
    secret = setup.add_user("alice", "agency", alice.address, "not-alices-password")
    setup.add_user("boss", "agency", bob.address, bob.password)

    with relay_process(setup) as relay:
        code, reply = submit(relay.port, "alice", secret, alice.address, bob.address)
        assert code >= 500, reply
        [(user, reason, to, via, notice_id)] = notified(relay)
        assert (user, reason, to, via) == ("alice", "password-refused", bob.address, "boss")
        notice = notice_in(mail_peers, bob, notice_id)
    assert notice is not None
    assert f"This notice is for alice <{alice.address}>" in notice
    assert "not-alices-password" not in notice
