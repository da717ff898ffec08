"""The Test button in a real Chromium: stages appear as they finish, and a test mail goes out.

Against the real Postfix and Dovecot; an IMAP server that never greets stands in for a
firewalled IMAP port, so the page has to show the SMTP stages before the check is over.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import chromium, click, open_invited_page, snap, text_of, web_relay
from tests.peers.mailpeers import MailPeers
from tests.test_end_to_end import find_by_subject
from tests.test_web_enrollment import lab

pytestmark = pytest.mark.peers


@pytest.fixture
def silent_imap() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def shown_stage_rows(browser: WebDriver, css: str) -> dict[str, str]:
    """Stage id -> the row's visible text, for the rows under css."""
    rows = browser.find_elements(By.CSS_SELECTOR, f"{css} li.stage")
    return {str(row.get_attribute("id")): str(row.text) for row in rows}


def wait_for(browser: WebDriver, done: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not callable(done) or not done():
        assert time.monotonic() < deadline, f"{what}; page shows: {browser.page_source[:2000]}"
        time.sleep(0.1)


def test_each_stage_shows_while_the_test_still_runs(
    mail_peers: MailPeers, silent_imap: int, tmp_path: Path
) -> None:
    alice = mail_peers.accounts["alice"]
    providers = lab(mail_peers)
    providers["lab"]["imap"] = {"host": "127.0.0.1", "port": silent_imap, "tls": "implicit"}
    upstream = {"connect_timeout": 4, "timeout": 4}
    with web_relay(tmp_path / "relay", providers, upstream=upstream) as relay:
        with chromium() as browser:
            open_invited_page(browser, relay, "alice", alice.address)
            browser.find_element(By.CSS_SELECTOR, "#password").send_keys(alice.password)
            browser.find_element(By.CSS_SELECTOR, "#test").click()

            def login_shown_before_the_end() -> bool:
                return "live-stage-auth" in shown_stage_rows(browser, "#live-stages")

            wait_for(browser, login_shown_before_the_end, 20, "no live Login stage")
            snap(browser, "live-01-running")
            live = shown_stage_rows(browser, "#live-stages")
            assert "PASSED" in live["live-stage-auth"]
            assert "250" not in text_of(browser, "#live-status")
            assert text_of(browser, "#live-status").startswith("Testing")
            assert not browser.find_element(By.CSS_SELECTOR, "#test").is_enabled()
            assert "live-stage-imap-login" not in live, "IMAP cannot have answered yet"

            def report_shown() -> bool:
                return bool(browser.find_elements(By.CSS_SELECTOR, "#results #verdict"))

            wait_for(browser, report_shown, 30, "the finished report never came")
            snap(browser, "live-02-imap-silent")
            final = shown_stage_rows(browser, "#results")
            failed = [row for row in final.values() if "FAILED" in row]
            assert len(failed) == 1 and "IMAP" in failed[0], final
            assert "stopped at" in text_of(browser, "#verdict")
            assert browser.find_element(By.CSS_SELECTOR, "#test").is_enabled()
        assert relay.state_of("alice") == "awaiting-enrollment"


def test_a_test_mail_goes_to_the_typed_address_and_the_page_shows_the_reply(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    fast = {"connect_timeout": 5, "timeout": 10}
    with web_relay(tmp_path / "relay", lab(mail_peers), upstream=fast) as relay:
        with chromium() as browser:
            open_invited_page(browser, relay, "alice", alice.address)
            browser.find_element(By.CSS_SELECTOR, "#send-to").send_keys("bob@example")
            browser.find_element(By.CSS_SELECTOR, "#password").send_keys(alice.password)
            click(browser, "#test")
            snap(browser, "live-03-bad-address")
            assert "is not a mail address" in text_of(browser, "#notice")
            assert relay.state_of("alice") == "awaiting-enrollment"

            browser.find_element(By.CSS_SELECTOR, "#send-to").send_keys(bob.address)
            browser.find_element(By.CSS_SELECTOR, "#password").send_keys(alice.password)
            click(browser, "#test")
            snap(browser, "live-04-test-mail")
            sent = text_of(browser, "#stage-send")
            assert "PASSED" in sent and "250" in text_of(browser, "#stage-send .reply")
        assert find_by_subject(mail_peers, bob, "relay check for alice"), "no test mail for bob"
        assert relay.state_of("alice") == "enabled"
