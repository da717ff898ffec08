"""Sign in with a code in a real Chromium, against the real Postfix, Dovecot and OAuth2 server.

invite → the link → "Sign in with a code" shows a code → the person approves it at the provider
→ the page moves on by itself → Test passes → XOAUTH2 submission works; approving as another
account is refused and stores nothing; a declined request says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import (
    WebRelay,
    chromium,
    click,
    open_invited_page,
    snap,
    text_of,
    wait_loaded,
    web_relay,
)
from tests.peers.mailpeers import MailPeers
from tests.peers.oauthserver import DEVICE_GRANT, AuthorizationServer
from tests.test_end_to_end import find_by_subject
from tests.test_web_enrollment import FAST, lab, local_login, oauth2_section, send

pytestmark = pytest.mark.peers


def device_section(server: AuthorizationServer, root: Path) -> dict[str, Any]:
    """The local authorization server with its device authorization endpoint (RFC 8628)."""
    return {**oauth2_section(server, root), "device_url": server.device_url}


def wait_until(what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until done() is true, or fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def code_shown(browser: WebDriver, relay: WebRelay, server: AuthorizationServer) -> str:
    """From the user's page to the code: its address as a link, the code, a copy button."""
    click(browser, "#device-button")
    assert browser.current_url == f"{relay.base}/oauth2/device"
    link = browser.find_element(By.CSS_SELECTOR, "#device-link")
    assert link.text == server.verification_url == link.get_attribute("href")
    copy = browser.find_element(By.CSS_SELECTOR, "button.copy[data-copy=user-code]")
    assert copy.is_displayed() and copy.is_enabled()
    assert "Waiting for your sign-in" in text_of(browser, "#device-status")
    return text_of(browser, "#user-code")


@pytest.fixture
def relay(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> Iterator[WebRelay]:
    """relay with its pages on, provider 'lab' signing in at the local server, device flow too."""
    providers = lab(mail_peers, oauth2=device_section(oauth_server, tmp_path / "oauth"))
    with web_relay(tmp_path / "relay", providers, upstream=FAST) as running:
        yield running


def test_sign_in_with_a_code_moves_on_by_itself_then_xoauth2_submission_works(
    relay: WebRelay, mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    with chromium() as browser:
        open_invited_page(browser, relay, "alice", alice.address)
        assert text_of(browser, "#device-button") == "Sign in with a code"
        snap(browser, "device-01-page")
        code = code_shown(browser, relay, oauth_server)
        snap(browser, "device-02-code")
        click(browser, "#device-check")  # without JavaScript: the button asks the same
        assert "no answer from you yet" in text_of(browser, "#device-status")
        assert text_of(browser, "#user-code") == code

        oauth_server.approve_device(code, alice.address)
        wait_until("the page went on to /me", lambda: browser.current_url == f"{relay.base}/me")
        wait_loaded(browser)
        snap(browser, "device-03-signed-in")
        assert f"Signed in as {alice.address}" in text_of(browser, "#notice")
        assert text_of(browser, "#grant-age") == "Signed in today."
        click(browser, "#test-sign-in")
        snap(browser, "device-04-credentials")
        port, login, secret = local_login(browser)
    polls = [r for r in oauth_server.token_requests if r["grant_type"] == DEVICE_GRANT]
    assert polls, "relay never polled the token endpoint with the device code"
    subject = send(port, login, secret, alice, bob)
    assert find_by_subject(mail_peers, bob, subject), "not in bob's INBOX"
    assert "OAuth2, authorized" in relay.setup.cli("user", "show", "alice").out
    log = relay.process.log()
    assert "web.signed_in user=alice method=oauth2 flow=device" in log
    assert "web.enrolled user=alice method=oauth2" in log


def test_a_code_approved_as_another_account_is_refused_and_stores_nothing(
    relay: WebRelay, mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    with chromium() as browser:
        open_invited_page(browser, relay, "alice", alice.address)
        code = code_shown(browser, relay, oauth_server)
        oauth_server.approve_device(code, bob.address)
        wait_until("the refusal was shown", lambda: "Nothing was stored" in status(browser))
        snap(browser, "device-05-wrong-account")
        assert f"You signed in as {bob.address}, but this page is for {alice.address}" in status(
            browser
        )
        assert not browser.find_element(By.CSS_SELECTOR, "#user-code").is_displayed()
        assert not browser.find_element(By.CSS_SELECTOR, "#device-check").is_displayed()
    shown = relay.setup.cli("user", "show", "alice").out
    assert "password (none stored)" in shown and "OAuth2" not in shown
    assert relay.state_of("alice") == "awaiting-enrollment"
    assert f"web.wrong_account user=alice signed_in={bob.address}" in relay.process.log()


def test_a_declined_code_says_so_and_stores_nothing(
    relay: WebRelay, mail_peers: MailPeers, oauth_server: AuthorizationServer
) -> None:
    alice = mail_peers.accounts["alice"]
    with chromium() as browser:
        open_invited_page(browser, relay, "alice", alice.address)
        code = code_shown(browser, relay, oauth_server)
        oauth_server.deny_device(code)
        wait_until("the refusal was shown", lambda: "declined" in status(browser))
        snap(browser, "device-06-declined")
        assert "Nothing was stored" in status(browser)
        browser.get(f"{relay.base}/oauth2/device")  # the wait is over: back on the page
        assert browser.current_url == f"{relay.base}/me"
    assert "OAuth2" not in relay.setup.cli("user", "show", "alice").out
    assert "web.sign_in_failed user=alice error=access_denied" in relay.process.log()


def status(browser: WebDriver) -> str:
    """What the waiting page says now."""
    return text_of(browser, "#device-status")
