"""The enrollment pages without a browser: links, catalogues, identity, config, the guard."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from relay.check.report import STAGES
from relay.config.load import parse_config
from relay.errors import ConfigError, InvitationRefused, OAuthError, WrongAccount
from relay.model import Secret, User
from relay.providers.presets import PRESETS
from relay.state.invites import NO_LOCAL_SECRET
from relay.state.localauth import verify_stored_hash
from relay.state.store import SCHEMA_VERSION, Store
from relay.web.identity import require_account, signed_in_account
from relay.web.language import Catalogues, preferred_languages
from tests.weblistener import listening_pages


def store_at(tmp_path: Path) -> Store:
    return Store.create(tmp_path / "relay.db")


def user(login: str = "alice", email: str = "alice@example.org", **extra: Any) -> User:
    fields: dict[str, Any] = {"local_hash": NO_LOCAL_SECRET, "sealed_secret": None}
    return User(login=login, provider="lab", email=email, upstream_user=email, **fields | extra)


# --- Invitations (relay/state/invites.py) ---


def test_a_link_is_stored_only_as_a_hash_and_opens_once(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    try:
        store.add_user(user())
        token = store.invitations.issue("alice", 3600).reveal()
        assert store.invitations.redeem(token, consume=False) == "alice"  # looking keeps it
        assert store.invitations.redeem(token) == "alice"
        with pytest.raises(InvitationRefused) as again:
            store.invitations.redeem(token)
        assert (again.value.reason, again.value.login) == ("used", "alice")
    finally:
        store.close()
    selector, _, verifier = token.partition(".")
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("relay.db*"))
    assert verifier.encode() not in raw and selector.encode() in raw


def test_an_expired_forged_or_replaced_link_is_refused(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    try:
        store.add_user(user())
        old = store.invitations.issue("alice", 3600, now=1000.0).reveal()
        with pytest.raises(InvitationRefused, match="expired"):
            store.invitations.redeem(old, now=1000.0 + 3600)
        selector, _, verifier = old.partition(".")
        for forged in (f"{selector}.{verifier[:-1]}x", "nothing", f"x{selector}.{verifier}", ""):
            with pytest.raises(InvitationRefused) as refused:
                store.invitations.redeem(forged, now=1001.0)
            assert (refused.value.reason, refused.value.login) == ("unknown", None)
        new = store.invitations.issue("alice", 3600, now=1002.0).reveal()
        with pytest.raises(InvitationRefused, match="unknown"):
            store.invitations.redeem(old, now=1003.0)  # the newer link replaced it
        assert store.invitations.redeem(new, now=1003.0) == "alice"
        assert "alice" in store.invitations.pending()
        store.invitations.enrolled("alice")
        assert store.invitations.pending() == {}
    finally:
        store.close()


def test_an_invited_user_has_no_local_secret_that_could_log_in() -> None:
    assert not verify_stored_hash(NO_LOCAL_SECRET, b"")
    assert not verify_stored_hash(NO_LOCAL_SECRET, NO_LOCAL_SECRET.encode())


def test_a_schema_5_store_gets_the_invitations_table_keeping_its_users(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.add_user(user(local_hash="sha256$00"))
    store.close()
    with sqlite3.connect(tmp_path / "relay.db") as db:
        db.execute("DROP TABLE invitations")
        db.execute("PRAGMA user_version = 5")
    store = Store.open(tmp_path / "relay.db")
    try:
        assert store.get_user("alice").local_hash == "sha256$00"
        store.invitations.issue("alice", 60)
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "relay.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


# --- Catalogues and Accept-Language (relay/web/language.py, messages/*.yaml) ---


def test_every_catalogue_has_every_english_key_and_no_other() -> None:
    catalogues = Catalogues.shipped()
    english = catalogues.get("en").entries
    assert set(catalogues.languages) == {"en", "pt-BR"}
    for tag in catalogues.languages:
        assert set(catalogues.get(tag).entries) == set(english), tag
    for stage in STAGES:
        assert f"stage.{stage}" in english
    for preset in PRESETS:
        if preset != "zoho-pro":  # zoho's steps serve both
            assert f"steps.{preset}" in english and f"mistakes.{preset}" in english, preset


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("pt-BR,pt;q=0.9,en;q=0.8", "pt-BR"),
        ("pt-PT", "pt-BR"),
        ("en;q=0.5, pt;q=0.9", "pt-BR"),
        ("de-DE,de;q=0.9", "en"),
        ("pt;q=0, en", "en"),
        ("", "en"),
        ("*;q=1,,garbage;;", "en"),
    ],
)
def test_accept_language_chooses_the_catalogue(header: str, language: str) -> None:
    assert Catalogues.shipped().choose(header).language == language


def test_language_ranges_are_ordered_by_quality_then_position() -> None:
    assert preferred_languages("fr;q=0.2, pt-BR, en;q=0.2") == ["pt-br", "fr", "en"]


# --- Who signed in (relay/web/identity.py) ---


def id_token(**claims: object) -> Secret:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    body = {"aud": "relay", "exp": time.time() + 60, **claims}
    return Secret(f"{part({'alg': 'none'})}.{part(body)}.")


def test_the_id_token_names_who_signed_in_and_must_be_for_relay() -> None:
    assert signed_in_account(id_token(email="Alice@Example.org"), "relay") == "Alice@Example.org"
    microsoft = id_token(preferred_username="alice@contoso.com")
    assert signed_in_account(microsoft, "relay") == "alice@contoso.com"
    for token, why in [
        (None, "did not say"),
        (id_token(email="a@b.c", aud="someone-else"), "another client"),
        (id_token(email="a@b.c", exp=time.time() - 3600), "expired"),
        (id_token(email="a@b.c", email_verified=False), "did not say"),
        (Secret("not-a-jwt"), "not a JWT"),
    ]:
        with pytest.raises(OAuthError, match=why):
            signed_in_account(token, "relay")


def test_only_the_users_own_mailbox_may_sign_in() -> None:
    require_account(user(), "ALICE@example.org")
    gmail = user(email="first.last@gmail.com")
    require_account(gmail, "firstlast@gmail.com")  # Gmail ignores the dots
    with pytest.raises(WrongAccount, match="signed in as bob@example.org"):
        require_account(user(), "bob@example.org")
    with pytest.raises(WrongAccount):
        require_account(user(email="first.last@school.org"), "firstlast@school.org")


# --- The web section of the config (relay/config/web.py) ---


@pytest.mark.parametrize(
    ("web", "key", "why"),
    [
        ({"address": "192.0.2.1"}, "web.address", "not loopback: set web.tls_cert"),
        ({"public_url": "http://relay.example.org"}, "web.public_url", "must be https://"),
        ({"public_url": "ftp://x"}, "web.public_url", "expected a URL like"),
        ({"port": 70000}, "web.port", ""),
        ({"tls_cert": "cert.pem"}, "web.tls_cert", "file not found"),
        ({"invite_lifetime": 0}, "web.invite_lifetime", ""),
        ({"attempts_per_ip": 0}, "web.attempts_per_ip", ""),
        ({"enable": True}, "web.enable", ""),
    ],
)
def test_a_bad_web_section_names_the_key(web: dict[str, object], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"providers": {}, "web": web}, "config.yaml", Path("."))
    assert any(path == key and why in problem for path, problem in error.value.problems), error


def test_the_web_pages_are_off_unless_turned_on() -> None:
    config = parse_config({"providers": {}}, "config.yaml", Path("."))
    assert not config.web.enabled and config.web.is_loopback
    assert config.web.invite_lifetime == 72 * 3600
    assert config.web.attempts_per_ip == 20


# --- The guard, against the real listener (relay/web/guard.py, server.py) ---


@pytest_asyncio.fixture
async def pages(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    """The web listener alone on a free port, with an invited alice; its base URL."""
    async with listening_pages(
        tmp_path, {"lab": {"smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"}}}, user()
    ) as listening:
        yield listening


async def test_pages_carry_a_strict_policy_and_a_strict_cookie(pages: tuple[str, Store]) -> None:
    base, store = pages
    token = store.invitations.issue("alice", 60).reveal()
    async with aiohttp.ClientSession() as client, client.get(f"{base}/enroll/{token}") as page:
        assert page.status == 200
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        assert page.headers["Cache-Control"] == "no-store"
        cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # loopback, plain http: a Secure cookie would not stick
        html = await page.text()
    assert "<script>" not in html and 'src="/static/copy.js"' in html


async def test_another_host_name_is_refused_as_dns_rebinding(pages: tuple[str, Store]) -> None:
    base, _ = pages
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base}/", headers={"Host": "attacker.example"}) as page:
            assert page.status == 421
            assert "not the one relay serves its pages at" in await page.text()


async def test_a_post_from_another_origin_is_refused_before_anything(
    pages: tuple[str, Store],
) -> None:
    base, store = pages
    token = store.invitations.issue("alice", 60).reveal()
    async with aiohttp.ClientSession() as client:
        headers = {"Origin": "https://attacker.example"}
        async with client.post(f"{base}/enroll/{token}", headers=headers, data={}) as page:
            assert page.status == 403
            assert "did not come from this page" in await page.text()
        async with client.post(f"{base}/enroll/{token}", headers={"Origin": base}) as page:
            assert page.status == 403  # right origin, but no CSRF token
    assert store.invitations.redeem(token) == "alice"  # neither used the link up
