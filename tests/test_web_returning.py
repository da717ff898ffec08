"""A returning user proves who they are with their mailbox, in a real Chromium.

No new password: the app password their provider (the real Postfix) takes, or a sign-in at the
local OAuth2 server. A wrong password, an unknown address and too many tries from one address
get clear words and open nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
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
from tests.peers.mailpeers import MailPeers
from tests.peers.oauthserver import AuthorizationServer
from tests.test_end_to_end import find_by_subject
from tests.test_web_enrollment import FAST, lab, oauth2_section, send

pytestmark = pytest.mark.peers

REFUSED = "That address and password did not sign you in"


def sign_in(browser: WebDriver, relay: WebRelay, address: str, password: str) -> None:
    """Open relay's address with no link and sign in with address and password."""
    browser.get(relay.base + "/")
    browser.find_element(By.CSS_SELECTOR, "#address").send_keys(address)
    browser.find_element(By.CSS_SELECTOR, "#signin-secret").send_keys(password)
    click(browser, "#signin-button")


def test_a_returning_user_signs_in_with_the_password_their_mailbox_takes(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    with web_relay(tmp_path / "relay", lab(mail_peers), upstream=FAST) as relay:
        secret = relay.setup.add_user("alice", "lab", alice.address, alice.password)
        subject = send(relay.process.port, "alice", secret, alice, bob)
        assert find_by_subject(mail_peers, bob, subject)
        with chromium() as browser:
            browser.get(relay.base + "/")
            snap(browser, "returning-01-sign-in")
            intro = text_of(browser, "#signin-intro")
            assert "no new password to remember" in intro.casefold()
            assert "sign in at your provider" not in intro  # no provider here has a sign-in

            sign_in(browser, relay, "nobody@example.org", alice.password)
            unknown = text_of(browser, "#notice")
            sign_in(browser, relay, alice.address, "not-her-password")
            snap(browser, "returning-02-refused")
            wrong = text_of(browser, "#notice")
            assert REFUSED in wrong and unknown == wrong  # names nobody
            assert browser.find_element(By.CSS_SELECTOR, "#address").get_attribute("value") == (
                alice.address
            )
            assert "not-her-password" not in browser.page_source
            assert not browser.find_elements(By.CSS_SELECTOR, "#activity")

            sign_in(browser, relay, alice.address.upper(), alice.password)
            snap(browser, "returning-03-page")
            assert f"Signed in as {alice.address}" in text_of(browser, "#notice")
            assert text_of(browser, "#state") == "Connected and sending"
            assert text_of(browser, "#last-sent") != "never"
            assert text_of(browser, "#queued") == "0"
            assert browser.find_element(By.CSS_SELECTOR, "#test").is_enabled()
            assert "leave the field empty to test it" in text_of(browser, "#retest-note")
            click(browser, "#test")  # the password relay holds, tested again
            assert text_of(browser, "#verdict") == "Every stage passed."
        log = relay.process.log()
        assert "web.signed_in user=alice method=app-password" in log
        assert "web.sign_in_refused user=- method=app-password" in log
        assert "web.sign_in_refused user=alice method=app-password" in log
        assert alice.password not in log and "not-her-password" not in log


def test_a_returning_user_signs_in_at_their_provider_and_unknown_accounts_get_no_page(
    mail_peers: MailPeers, oauth_server: AuthorizationServer, tmp_path: Path
) -> None:
    alice, carol = mail_peers.accounts["alice"], "carol@example.org"
    providers = lab(mail_peers, oauth2=oauth2_section(oauth_server, tmp_path / "oauth"))
    with web_relay(tmp_path / "relay", providers, upstream=FAST) as relay:
        with chromium() as browser:
            open_invited_page(browser, relay, "alice", alice.address)
            click(browser, "#sign-in-button")
            click(browser, "#test-sign-in")
            assert "You are all set" in page_text(browser)
        grants_before = len(oauth_server.token_requests)

        with chromium() as browser:  # another day, another browser: no link
            browser.get(relay.base + "/")
            assert "sign in at your provider" in text_of(browser, "#signin-intro")
            click(browser, "#sign-in-lab")
            snap(browser, "returning-04-oauth2")
            assert f"Signed in as {alice.address}" in text_of(browser, "#notice")
            assert text_of(browser, "#state") == "Connected and sending"
            assert len(oauth_server.token_requests) > grants_before

        oauth_server.signed_in_as = carol
        with chromium() as browser:
            browser.get(relay.base + "/")
            click(browser, "#sign-in-lab")
            snap(browser, "returning-05-no-account")
            assert f"You signed in as {carol}, but relay has no page for that mailbox" in (
                text_of(browser, "#message")
            )
            browser.get(relay.base + "/me")
            assert not browser.find_elements(By.CSS_SELECTOR, "#state")
        assert "web.sign_in_refused user=- method=oauth2" in relay.process.log()


def test_too_many_password_tries_from_one_address_are_stopped_with_a_clear_word(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice = mail_peers.accounts["alice"]
    web = {"attempts_per_ip": 2}
    with web_relay(tmp_path / "relay", lab(mail_peers), upstream=FAST, web=web) as relay:
        relay.setup.add_user("alice", "lab", alice.address, alice.password)
        with chromium() as browser:
            sign_in(browser, relay, "one@example.org", "guess-1")
            sign_in(browser, relay, "two@example.org", "guess-2")
            sign_in(browser, relay, alice.address, alice.password)  # right, but one too many
            snap(browser, "returning-06-limited")
            assert "Too many password attempts from your network address" in (
                text_of(browser, "#message")
            )
            assert not browser.find_elements(By.CSS_SELECTOR, "#state")
