"""The enrollment link in a real Chromium: used, expired and forged links, CSRF, Portuguese."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import WebRelay, chromium, click, page_text, snap, text_of, web_relay

NOWHERE = {"lab": {"smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"}}}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[WebRelay]:
    """relay serving the pages, with provider 'lab' that nothing answers for."""
    with web_relay(tmp_path / "relay", NOWHERE) as running:
        yield running


def test_a_link_works_once_and_a_second_visit_says_it_was_used(relay: WebRelay) -> None:
    link = relay.invite("alice", "--provider", "lab", "--email", "alice@example.org")
    assert relay.state_of("alice") == "awaiting-enrollment"
    with chromium() as browser:
        browser.get(link)
        assert "alice@example.org" in text_of(browser, "#intro")
        snap(browser, "links-01-landing")
        click(browser, "#continue")
        assert text_of(browser, "#address") == "alice@example.org"
        assert "sealed" in page_text(browser) or "seals" in page_text(browser)
        browser.get(link)
        snap(browser, "links-02-used")
        assert "was used already" in text_of(browser, "#message")
        assert "Continue" not in page_text(browser)
    assert "web.link_used user=alice" in relay.process.log()


def test_a_forged_link_is_refused_and_names_no_user(relay: WebRelay) -> None:
    link = relay.invite("alice", "--provider", "lab", "--email", "alice@example.org")
    selector, _, verifier = link.rpartition("/")[2].partition(".")
    forged = f"{relay.base}/enroll/{selector}.{verifier[::-1]}"
    with chromium() as browser:
        for url in (forged, f"{relay.base}/enroll/made-up", f"{relay.base}/me"):
            browser.get(url)
            assert "alice" not in page_text(browser)
        browser.get(forged)
        snap(browser, "links-03-forged")
        assert "This link is not valid" in text_of(browser, "#message")
        browser.get(link)  # the real one still works: a forgery burns nothing
        assert "alice@example.org" in text_of(browser, "#intro")


def test_an_expired_link_says_so(relay: WebRelay) -> None:
    link = relay.invite("carol", "--provider", "lab", "--email", "carol@example.net")
    with sqlite3.connect(relay.setup.state_dir / "relay.db") as db:
        db.execute("UPDATE invitations SET expires_at = 0 WHERE login = 'carol'")
    with chromium() as browser:
        browser.get(link)
        snap(browser, "links-04-expired")
        assert "This link has expired" in text_of(browser, "#message")
    assert "web.link_expired user=carol reason=expired" in relay.process.log()


def test_a_form_posted_without_its_csrf_token_changes_nothing(relay: WebRelay) -> None:
    link = relay.invite("alice", "--provider", "lab", "--email", "alice@example.org")
    with chromium() as browser:
        browser.get(link)
        click(browser, "#continue")
        # What a forged form lacks: the page's hidden token (removed by the test, not the page).
        browser.execute_script(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())"
        )
        browser.find_element("css selector", "#password").send_keys("a-password")
        click(browser, "#test")
        snap(browser, "links-05-no-csrf")
        assert "This form has expired or did not come from this page" in text_of(
            browser, "#message"
        )
        assert "a-password" not in browser.page_source
    assert relay.state_of("alice") == "awaiting-enrollment"
    shown = relay.setup.cli("user", "show", "alice").out
    assert "password (none stored)" in shown and "last check:        -" in shown


def test_the_page_speaks_portuguese_to_a_brazilian_browser(relay: WebRelay) -> None:
    link = relay.invite("alice", "--provider", "lab", "--email", "alice@example.org")
    with chromium("pt-BR") as browser:
        browser.get(link)
        assert browser.find_element("css selector", "html").get_attribute("lang") == "pt-BR"
        assert "Configurar o envio" in page_text(browser)
        assert "Continuar" == text_of(browser, "#continue")
        click(browser, "#continue")
        snap(browser, "links-06-portuguese")
        text = page_text(browser)
        assert "Conecte sua caixa postal" in text and "Senha de app" in text
        assert "Aguardando você conectar sua caixa postal" == text_of(browser, "#state")
        assert text_of(browser, "#test") == "Testar"
        assert "Erros comuns" in text
