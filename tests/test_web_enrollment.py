"""Enrollment in a real Chromium against the real Postfix, Dovecot and OAuth2 server.

invite → the link → a wrong app password fails at AUTH with Postfix's 535 → the right one passes
→ the page shows the local login once → an app sends with it → the mail is in INBOX and Sent;
and the same with OAuth2 sign-in in the browser, where another account is refused.
"""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import (
    WebRelay,
    chromium,
    click,
    open_invited_page,
    page_text,
    snap,
    text_of,
    web_relay,
)
from tests.peers.mailpeers import MailAccount, MailPeers
from tests.peers.oauthserver import DEFAULT_SCOPES, AuthorizationServer
from tests.test_end_to_end import find_by_subject, message_text

pytestmark = pytest.mark.peers

FAST = {"connect_timeout": 5, "timeout": 10}


def lab(peers: MailPeers, **extra: Any) -> dict[str, Any]:
    """Provider 'lab': the peers' STARTTLS submission port and IMAP, relay filing Sent copies."""
    return {
        "lab": {
            "smtp": {"host": peers.host, "port": peers.submission_port, "tls": "starttls"},
            "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
            "ca_file": str(peers.ca_file),
            "sent_copy": "always",
            **extra,
        }
    }


def oauth2_section(server: AuthorizationServer, root: Path) -> dict[str, Any]:
    """The local authorization server, its sign-in page reached as 'localhost': another site."""
    root.mkdir(parents=True, exist_ok=True)
    secret_file = root / "client-secret"
    secret_file.write_text(server.client_secret + "\n")
    return {
        "client_id": server.client_id,
        "client_secret_file": str(secret_file),
        # A different site from relay's 127.0.0.1, as accounts.google.com is: the browser then
        # keeps the SameSite=Strict cookie back on the way back, as it will in production.
        "authorize_url": server.authorize_url.replace("127.0.0.1", "localhost"),
        "token_url": server.token_url,
        "scopes": list(DEFAULT_SCOPES),
    }


@pytest.fixture
def relay(mail_peers: MailPeers, tmp_path: Path) -> Iterator[WebRelay]:
    """relay with its pages on, provider 'lab' on the peers with app passwords."""
    with web_relay(tmp_path / "relay", lab(mail_peers), upstream=FAST) as running:
        yield running


def local_login(browser: WebDriver) -> tuple[int, str, str]:
    """(port, login, secret) as the credentials page shows them."""
    return (
        int(text_of(browser, "#smtp-port")),
        text_of(browser, "#smtp-login"),
        text_of(browser, "#smtp-secret"),
    )


def send(port: int, login: str, secret: str, sender: MailAccount, rcpt: MailAccount) -> str:
    """What a legacy app does with the pasted settings; the subject it sent."""
    subject = f"enrolled {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.login(login, secret)
        client.sendmail(
            sender.address, [rcpt.address], message_text(sender.address, rcpt.address, subject)
        )
    return subject


def in_sent(peers: MailPeers, account: MailAccount, subject: str, timeout: float = 20.0) -> bool:
    """Whether a copy with subject shows up in the account's Sent folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = peers.mailbox_messages(account, "Sent")
        if any(f"Subject: {subject}".encode() in message for message in messages):
            return True
        time.sleep(0.2)
    return False


def test_app_password_enrollment_from_wrong_password_to_mail_in_inbox_and_sent(
    relay: WebRelay, mail_peers: MailPeers
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    link = relay.invite("alice", "--provider", "lab", "--email", alice.address)
    with chromium() as browser:
        browser.get(link)
        snap(browser, "enroll-01-landing")
        click(browser, "#continue")
        assert text_of(browser, "#address") == alice.address
        assert "Nobody can read it back" in text_of(browser, "#password-note")
        snap(browser, "enroll-02-page")

        browser.find_element("css selector", "#password").send_keys("not-the-app-password")
        click(browser, "#test")
        snap(browser, "enroll-03-wrong-password")
        failed = text_of(browser, "#stage-auth")
        assert "failed" in failed and "535 5.7.8" in failed
        assert "Use an app password, not your normal password" in failed
        assert "stopped at “Login (AUTH)”" in text_of(browser, "#verdict")
        assert "not-the-app-password" not in browser.page_source
        assert text_of(browser, "#test") == "Test"  # the form is back for another try
        assert relay.state_of("alice") == "awaiting-enrollment"

        browser.find_element("css selector", "#password").send_keys(alice.password)
        click(browser, "#test")
        snap(browser, "enroll-04-credentials")
        assert "You are all set" in page_text(browser)
        assert "shown only this once" in text_of(browser, "#once")
        port, login, secret = local_login(browser)
        assert (login, port) == ("alice", relay.process.port)
        assert len(secret) == 32 and alice.password not in browser.page_source
        copy = browser.find_element("css selector", "button.copy[data-copy=smtp-secret]")
        assert copy.is_displayed() and copy.is_enabled()

        browser.get(f"{relay.base}/me")  # back on the page: the secret is not shown again
        assert secret not in browser.page_source
        assert text_of(browser, "#state") == "Connected and sending"
    assert relay.state_of("alice") == "enabled"
    subject = send(port, login, secret, alice, bob)
    assert find_by_subject(mail_peers, bob, subject), "not in bob's INBOX"
    assert in_sent(mail_peers, alice, subject), "no copy in alice's Sent"
    log = relay.process.log()
    assert "web.enrolled user=alice method=app-password" in log
    assert alice.password not in log and secret not in log


def test_oauth2_sign_in_in_the_browser_then_xoauth2_submission_works(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    providers = lab(mail_peers, oauth2=oauth2_section(oauth_server, tmp_path / "oauth"))
    with web_relay(tmp_path / "relay", providers, upstream=FAST) as relay:
        with chromium() as browser:
            open_invited_page(browser, relay, "alice", alice.address)
            assert f"{relay.base}/oauth2/callback" in text_of(browser, "#redirect-uri")
            click(browser, "#sign-in-button")
            snap(browser, "oauth-01-signed-in")
            assert f"Signed in as {alice.address}" in text_of(browser, "#notice")
            click(browser, "#test-sign-in")
            snap(browser, "oauth-02-credentials")
            port, login, secret = local_login(browser)
        requests = oauth_server.token_requests
        assert requests[0]["grant_type"] == "authorization_code"
        assert requests[0]["redirect_uri"] == f"{relay.base}/oauth2/callback"
        subject = send(port, login, secret, alice, bob)
        assert find_by_subject(mail_peers, bob, subject)
        shown = relay.setup.cli("user", "show", "alice").out
        assert "OAuth2, authorized" in shown
        assert "web.enrolled user=alice method=oauth2" in relay.process.log()


def test_signing_in_as_another_account_is_refused_and_stores_nothing(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    providers = lab(mail_peers, oauth2=oauth2_section(oauth_server, tmp_path / "oauth"))
    oauth_server.signed_in_as = bob.address
    with web_relay(tmp_path / "relay", providers, upstream=FAST) as relay:
        with chromium() as browser:
            open_invited_page(browser, relay, "alice", alice.address)
            click(browser, "#sign-in-button")
            snap(browser, "oauth-03-wrong-account")
            message = text_of(browser, "#message")
            assert (
                f"You signed in as {bob.address}, but this page is for {alice.address}" in message
            )
            assert "Nothing was stored" in message
        shown = relay.setup.cli("user", "show", "alice").out
        assert "password (none stored)" in shown and "OAuth2" not in shown
        assert relay.state_of("alice") == "awaiting-enrollment"
        assert f"web.wrong_account user=alice signed_in={bob.address}" in relay.process.log()
