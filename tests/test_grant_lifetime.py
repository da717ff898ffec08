"""A grant's age and its provider's known lifetime: the rules, the user's page, `relay check`.

Google ends refresh tokens of an app in Testing 7 days after the sign-in, and any after six months
unused; Microsoft's last 90 days from their last use (relay/oauth/lifetimes.py has the sources).
"""

from __future__ import annotations

import html
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from relay.check.diagnosis import run_check
from relay.check.report import Status
from relay.config.load import parse_config
from relay.config.model import ProviderConfig, RelayConfig
from relay.errors import ConfigError
from relay.model import OAuthGrant, Secret, UpstreamAuth, User
from relay.oauth.lifetimes import (
    DAY,
    GOOGLE_TESTING,
    GOOGLE_UNUSED,
    MICROSOFT_UNUSED,
    expiry_warning,
    grant_end,
    known_lifetime,
    shown_time,
)
from relay.state.invites import NO_LOCAL_SECRET
from relay.state.store import Store
from relay.upstream.credentials import UpstreamSecret
from tests.weblistener import listening_pages

NOW = 1_800_000_000.0
GOOGLE_CLIENT = "1234-abc.apps.googleusercontent.com"


def providers(root: Path, **oauth2: Any) -> dict[str, Any]:
    """A Gmail provider (its SMTP on a closed loopback port), a Microsoft one, and a lab one."""
    secret = root / "google-client-secret"
    secret.write_text("not-secret\n")
    google = {"client_id": GOOGLE_CLIENT, "client_secret_file": str(secret), **oauth2}
    return {
        "agency": {
            "preset": "gmail",
            "smtp": {"host": "127.0.0.1", "port": 9, "tls": "implicit"},
            "oauth2": google,
        },
        "office": {"preset": "office365", "oauth2": {"client_id": "11111111-2222"}},
        "lab": {
            "smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"},
            "oauth2": {
                "client_id": "relay",
                "authorize_url": "http://127.0.0.1:9/authorize",
                "token_url": "http://127.0.0.1:9/token",
                "scopes": ["mail"],
            },
        },
    }


def config_of(root: Path, **oauth2: Any) -> RelayConfig:
    return parse_config({"providers": providers(root, **oauth2)}, "config.yaml", root)


def provider(root: Path, name: str, **oauth2: Any) -> ProviderConfig:
    return config_of(root, **oauth2).providers[name]


def grant(days_ago: float, refreshed_days_ago: float | None = None, **extra: Any) -> OAuthGrant:
    """alice's grant, signed in days_ago and last refreshed refreshed_days_ago (default: then)."""
    refreshed = days_ago if refreshed_days_ago is None else refreshed_days_ago
    fields: dict[str, Any] = {
        "sealed_refresh": b"sealed",
        "scopes": ("https://mail.google.com/",),
        "authorized_at": NOW - days_ago * DAY,
        "refreshed_at": NOW - refreshed * DAY,
        "access_expires_at": NOW + 3600,
    }
    return OAuthGrant("alice", **fields | extra)


# --- The rules (relay/oauth/lifetimes.py) ---


def test_a_google_app_in_testing_ends_the_sign_in_7_days_after_it_whatever_relay_does(
    tmp_path: Path,
) -> None:
    agency = provider(tmp_path, "agency", publishing_status="testing")
    assert known_lifetime(agency) == GOOGLE_TESTING
    end = grant_end(agency, grant(days_ago=3, refreshed_days_ago=0))
    assert end is not None and end.ends_at == NOW + 4 * DAY and end.days_old(NOW) == 3


def test_a_google_app_in_production_or_unsaid_ends_a_sign_in_unused_for_six_months(
    tmp_path: Path,
) -> None:
    for status in ({"publishing_status": "production"}, {}):
        agency = provider(tmp_path, "agency", **status)
        assert known_lifetime(agency) == GOOGLE_UNUSED
        end = grant_end(agency, grant(days_ago=300, refreshed_days_ago=1))
        assert end is not None and end.ends_at == NOW + (181 - 1) * DAY


def test_microsoft_ends_a_sign_in_90_days_after_its_last_use(tmp_path: Path) -> None:
    office = provider(tmp_path, "office")
    assert known_lifetime(office) == MICROSOFT_UNUSED
    end = grant_end(office, grant(days_ago=200, refreshed_days_ago=10))
    assert end is not None and end.ends_at == NOW + 80 * DAY


def test_no_lifetime_is_known_for_other_servers_organisations_or_grants_already_dead(
    tmp_path: Path,
) -> None:
    assert known_lifetime(provider(tmp_path, "lab")) is None
    assert grant_end(provider(tmp_path, "lab"), grant(days_ago=3)) is None
    agency = provider(tmp_path, "agency", publishing_status="testing")
    assert agency.oauth2 is not None
    organisation = replace(agency, oauth2=replace(agency.oauth2, app_only=True))
    assert known_lifetime(organisation) is None
    assert grant_end(agency, grant(days_ago=3, needs_authorization="invalid_grant")) is None
    assert grant_end(agency, grant(days_ago=3, authorized_at=None)) is None


def test_check_warns_from_2_days_before_the_end_with_the_date_and_the_fix(tmp_path: Path) -> None:
    agency = provider(tmp_path, "agency", publishing_status="testing")
    assert expiry_warning(agency, grant(days_ago=4.9), "alice", NOW) is None
    warning = expiry_warning(agency, grant(days_ago=5.5), "alice", NOW)
    assert warning is not None
    assert warning.startswith(f"Google ends this sign-in on {shown_time(NOW + 1.5 * DAY)}")
    assert "7 days after the sign-in while the app is in Testing" in warning
    assert "signs in again on their enrollment page" in warning
    assert "'relay user authorize alice'" in warning
    ended = expiry_warning(agency, grant(days_ago=8), "alice", NOW)
    assert ended is not None and ended.startswith("Google ended this sign-in on")


def test_publishing_status_is_testing_or_production_and_a_typo_names_the_key(
    tmp_path: Path,
) -> None:
    agency = provider(tmp_path, "agency", publishing_status="testing")
    assert agency.oauth2 is not None and agency.oauth2.publishing_status == "testing"
    with pytest.raises(ConfigError) as error:
        config_of(tmp_path, publishing_status="test")
    assert any(
        path == "providers.agency.oauth2.publishing_status" and "did you mean 'testing'" in why
        for path, why in error.value.problems
    ), error.value.problems


# --- relay check (relay/check/diagnosis.py) ---


class KeptGrant:
    """The check's secrets for alice: a renewed access token and the grant as stored."""

    def __init__(self, kept: OAuthGrant) -> None:
        self._grant = kept

    async def open(self) -> UpstreamSecret:
        return UpstreamSecret(Secret("access-token"), bearer=True, identity="alice/oauth2")

    def grant(self) -> OAuthGrant | None:
        return self._grant


def oauth2_user(provider_name: str = "agency") -> User:
    return User(
        login="alice",
        provider=provider_name,
        email="alice@example.org",
        upstream_user="alice@example.org",
        local_hash=NO_LOCAL_SECRET,
        sealed_secret=None,
        auth=UpstreamAuth.OAUTH2,
    )


async def test_relay_check_warns_but_passes_the_oauth2_stage_days_before_google_ends_it(
    tmp_path: Path,
) -> None:
    config = config_of(tmp_path, publishing_status="testing")
    now = time.time()
    kept = replace(grant(days_ago=6), authorized_at=now - 6 * DAY, refreshed_at=now)
    report = await run_check(config, oauth2_user(), KeptGrant(kept))
    oauth2 = next(stage for stage in report.stages if stage.name == "oauth2")
    assert oauth2.status is Status.PASS
    (warning,) = oauth2.warnings
    assert f"Google ends this sign-in on {shown_time(now + DAY)[:10]}" in warning
    assert "'relay user authorize alice'" in warning


async def test_relay_check_says_nothing_while_the_end_is_far(tmp_path: Path) -> None:
    config = config_of(tmp_path, publishing_status="testing")
    now = time.time()
    kept = replace(grant(days_ago=1), authorized_at=now - DAY, refreshed_at=now)
    report = await run_check(config, oauth2_user(), KeptGrant(kept))
    oauth2 = next(stage for stage in report.stages if stage.name == "oauth2")
    assert oauth2.status is Status.PASS and oauth2.warnings == ()


# --- The user's page (relay/web/grantage.py, templates/_grant.html) ---


@pytest_asyncio.fixture
async def page_of_alice(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    """The web listener alone, with alice (Gmail, app in Testing) invited; its base URL."""
    async with listening_pages(
        tmp_path, providers(tmp_path, publishing_status="testing"), oauth2_user()
    ) as listening:
        yield listening


def signed_in_days_ago(store: Store, database: Path, days: float) -> None:
    """alice authorized relay `days` ago (and it renewed her access token just now)."""
    store.grants.authorized("alice", b"sealed", ("https://mail.google.com/",), time.time() + 3600)
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE oauth_grants SET authorized_at = ? WHERE login = 'alice'",
            (time.time() - days * DAY,),
        )


async def grant_line(base: str, store: Store, language: str = "en") -> str:
    """What alice's page says about her grant, opened from a fresh link."""
    token = store.invitations.issue("alice", 600).reveal()
    headers = {"Accept-Language": language}
    jar = aiohttp.CookieJar(unsafe=True)  # the pages are on 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar, headers=headers) as client:
        async with client.get(f"{base}/enroll/{token}") as landing:
            match = re.search(r'name="csrf" value="([^"]+)"', await landing.text())
            assert match is not None
        form = {"csrf": match.group(1)}
        async with client.post(
            f"{base}/enroll/{token}", data=form, headers={"Origin": base}
        ) as page:
            assert str(page.url) == f"{base}/me"
            found = re.search(r'<p class="note" id="grant-age">(.*?)</p>', await page.text())
    assert found is not None, "no grant line on the page"
    return html.unescape(found.group(1))


async def test_the_page_says_how_old_the_sign_in_is_and_when_to_sign_in_again(
    page_of_alice: tuple[str, Store], tmp_path: Path
) -> None:
    base, store = page_of_alice
    signed_in_days_ago(store, tmp_path / "state" / "relay.db", 3.2)
    grant_kept = store.grants.get("alice")
    assert grant_kept is not None and grant_kept.authorized_at is not None
    date = shown_time(grant_kept.authorized_at + 7 * DAY)
    assert await grant_line(base, store) == (
        "Signed in 3 days ago; Google ends this sign-in after 7 days while the app is in "
        f"Testing: sign in again before {date}."
    )
    assert await grant_line(base, store, "pt-BR") == (
        "Conectado há 3 dias; o Google encerra esta conexão após 7 dias enquanto o app está "
        f"em Teste: entre de novo antes de {date}."
    )
