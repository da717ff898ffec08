"""Renewal notices: the notify section, the store's record of who was told, and when to tell.

The real-peer journeys (a revoked grant, a 535 from Postfix) are in tests/test_renewal_peers.py.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config.live import LiveConfig
from relay.config.load import parse_config, render_config
from relay.config.model import NotifyConfig, RelayConfig
from relay.errors import (
    AuthorizationNeeded,
    ConfigError,
    PermanentLoginRefusal,
    RelayError,
    TemporaryLoginRefusal,
    UpstreamUnavailable,
)
from relay.model import UpstreamAuth, User
from relay.queue.records import NewMessage
from relay.renewal.notifier import RenewalNotices
from relay.state.notices import NoticeRecord
from relay.state.store import SCHEMA_VERSION, Store

LAB = {"lab": {"smtp": {"host": "mail.example.org", "port": 587, "tls": "starttls"}}}
REVOKED = AuthorizationNeeded(
    "alice", "the provider answered invalid_grant: Token has been expired or revoked."
)
REFUSED = PermanentLoginRefusal(535, "5.7.8", "Error: authentication failed: bad credentials")
DAY = 86400.0


def config_of(tmp_path: Path, **sections: Any) -> RelayConfig:
    return parse_config({"providers": LAB, **sections}, "config.yaml", tmp_path)


def problems_of(tmp_path: Path, notify: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        config_of(tmp_path, notify=notify)
    assert caught.value.source == "config.yaml"
    return caught.value.problems


def user(login: str, email: str, **extra: Any) -> User:
    fields: dict[str, Any] = {"local_hash": "sha256$00", "sealed_secret": None} | extra
    return User(login=login, provider="lab", email=email, upstream_user=email, **fields)


# --- The notify section (relay/config/notify.py) ---


def test_notices_are_off_unless_an_account_or_an_admin_is_set(tmp_path: Path) -> None:
    assert config_of(tmp_path).notify == NotifyConfig()
    assert not NotifyConfig().enabled
    assert config_of(tmp_path, notify={"account": "notices"}).notify.enabled
    assert config_of(tmp_path, notify={"admin": "it@example.org"}).notify.enabled


def test_notify_section_is_read_with_a_day_between_notices_by_default(tmp_path: Path) -> None:
    notify = config_of(tmp_path, notify={"account": "notices", "admin": "it@example.org"}).notify
    assert notify == NotifyConfig(account="notices", admin="it@example.org", interval=DAY)
    assert config_of(tmp_path, notify={"admin": "it@example.org", "interval": 3600}).notify == (
        NotifyConfig(admin="it@example.org", interval=3600.0)
    )


def test_a_resolved_notify_section_reads_back_the_same(tmp_path: Path) -> None:
    config = config_of(tmp_path, notify={"account": "notices", "interval": 7200})
    again = parse_config(yaml.safe_load(render_config(config)), "config.yaml", tmp_path)
    assert again.notify == config.notify


@pytest.mark.parametrize(
    ("notify", "key", "fragment"),
    [
        ({"account": "no spaces"}, "notify.account", "expected the login of a relay user"),
        ({"account": 42}, "notify.account", "expected a non-empty line of text, got 42"),
        ({"admin": "not-an-address"}, "notify.admin", "expected a plain address like"),
        ({"admin": "it@example.org", "interval": 10}, "notify.interval", "at least 60 seconds"),
        ({"admin": "it@example.org", "interval": "1d"}, "notify.interval", "number of seconds"),
        ({"acount": "notices"}, "notify.acount", "did you mean 'account'?"),
    ],
)
def test_a_malformed_notify_section_names_the_key_and_what_is_wrong(
    tmp_path: Path, notify: dict[str, object], key: str, fragment: str
) -> None:
    problems = problems_of(tmp_path, notify)
    assert any(path == key and fragment in why for path, why in problems), problems


def test_a_notify_section_that_is_no_mapping_is_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "notices") == [("notify", "expected a mapping, got 'notices'")]


# --- Schema 7: who was told when (relay/state/notices.py) ---


def test_a_schema_6_store_gets_the_renewal_notices_table_keeping_its_users(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(user("alice", "alice@example.org"))
    token = store.invitations.issue("alice", 60)
    store.close()
    with sqlite3.connect(tmp_path / "relay.db") as db:
        db.execute("DROP TABLE renewal_notices")
        db.execute("PRAGMA user_version = 6")
    store = Store.open(tmp_path / "relay.db")
    try:
        assert store.get_user("alice").local_hash == "sha256$00"
        assert store.invitations.redeem(token.reveal(), consume=False) == "alice"
        assert store.notices.last("alice") is None
        told = NoticeRecord("alice", 1000.0, "needs-authorize", "invalid_grant", "a@example.org")
        store.notices.record(told)
        assert store.notices.last("alice") == told
        assert store.notices.all() == [told]
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "relay.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


def test_removing_a_user_forgets_their_notices(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    try:
        store.add_user(user("alice", "alice@example.org"))
        store.notices.record(NoticeRecord("alice", 1.0, "password-refused", "535", "a@b.org"))
        store.remove_user("alice")
        assert store.notices.all() == []
    finally:
        store.close()


# --- When to tell, and whom (relay/renewal/) ---


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sent:
    """Stands in for the queue runner's submit: keeps every notice it was handed."""

    def __init__(self) -> None:
        self.messages: list[NewMessage] = []
        self.failing = False

    async def __call__(self, message: NewMessage) -> None:
        if self.failing:
            raise OSError("spool full")
        self.messages.append(message)

    def text(self, index: int = -1) -> str:
        return self.messages[index].upstream_data.decode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """alice (OAuth2), carol (password), the notification account, and the admin's own user."""
    store = Store.create(tmp_path / "relay.db")
    store.add_user(user("alice", "alice@example.org", auth=UpstreamAuth.OAUTH2))
    store.add_user(user("carol", "carol@example.org"))
    store.add_user(user("notices", "notices@example.org"))
    store.add_user(user("it", "it@example.org"))
    try:
        yield store
    finally:
        store.close()


def notices_for(
    tmp_path: Path, store: Store, clock: Clock, sent: Sent, **sections: Any
) -> RenewalNotices:
    live = LiveConfig(config_of(tmp_path, hostname="relay.test", **sections))
    return RenewalNotices(live, store, sent, clock=clock)


PAGES = {"enabled": True, "public_url": "https://relay.example.org", "invite_lifetime": 3600}


async def test_the_first_dead_grant_is_told_at_once_with_a_fresh_link_to_the_users_page(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock, sent = Clock(), Sent()
    notices = notices_for(tmp_path, store, clock, sent, notify={"account": "notices"}, web=PAGES)
    with caplog.at_level(logging.DEBUG, logger="relay.renewal"):
        await notices.observe("alice", REVOKED)
    [message] = sent.messages
    assert (message.login, message.sender, message.recipients) == (
        "notices",
        "notices@example.org",
        ("alice@example.org",),
    )
    text = sent.text()
    assert "Token has been expired or revoked." in text
    link = next(line.strip() for line in text.splitlines() if "/enroll/" in line)
    token = link.removeprefix("https://relay.example.org/enroll/")
    assert store.invitations.redeem(token, consume=False) == "alice"
    assert "The link works once, until 2027-01-15 09:00 UTC" in text  # an hour from now
    assert "renewal.notified user=alice reason=needs-authorize" in caplog.text
    assert token not in caplog.text
    told = store.notices.last("alice")
    assert told is not None and (told.notified_at, told.reason) == (clock.now, "needs-authorize")


async def test_a_second_failure_within_the_interval_sends_nothing_and_one_after_it_does(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock, sent = Clock(), Sent()
    notices = notices_for(tmp_path, store, clock, sent, notify={"account": "notices"})
    await notices.observe("alice", REVOKED)
    clock.now += DAY - 1
    with caplog.at_level(logging.DEBUG, logger="relay.renewal"):
        await notices.observe("alice", REVOKED)
    assert len(sent.messages) == 1
    assert "renewal.suppressed user=alice reason=needs-authorize" in caplog.text
    clock.now += 1
    await notices.observe("alice", REVOKED)
    assert len(sent.messages) == 2


async def test_each_user_has_their_own_interval(tmp_path: Path, store: Store) -> None:
    clock, sent = Clock(), Sent()
    notices = notices_for(tmp_path, store, clock, sent, notify={"account": "notices"})
    await notices.observe("alice", REVOKED)
    await notices.observe("carol", REFUSED)
    assert [m.recipients for m in sent.messages] == [("alice@example.org",), ("carol@example.org",)]
    assert "535 5.7.8 Error: authentication failed" in sent.text()


@pytest.mark.parametrize(
    ("login", "error"),
    [
        pytest.param("carol", UpstreamUnavailable(421, "4.4.2", "connection lost"), id="outage"),
        # A bearer token refused twice is kept queued: the server may be checking tokens badly.
        pytest.param("alice", TemporaryLoginRefusal(451, "4.7.0", "token refused"), id="bearer"),
        pytest.param("alice", PermanentLoginRefusal(535, "5.7.8", "no"), id="oauth2-535"),
        pytest.param("nobody", REVOKED, id="unknown-user"),
    ],
)
async def test_failures_that_are_no_dead_login_send_nothing(
    tmp_path: Path, store: Store, login: str, error: RelayError
) -> None:
    sent = Sent()
    notices = notices_for(tmp_path, store, Clock(), sent, notify={"account": "notices"})
    await notices.observe(login, error)
    assert sent.messages == []
    assert store.notices.all() == []


async def test_with_notify_off_nobody_is_told(tmp_path: Path, store: Store) -> None:
    sent = Sent()
    await notices_for(tmp_path, store, Clock(), sent).observe("alice", REVOKED)
    assert sent.messages == []


async def test_without_the_pages_the_notice_says_to_ask_the_admin_and_issues_no_link(
    tmp_path: Path, store: Store
) -> None:
    sent = Sent()
    notify = {"account": "notices", "admin": "it@example.org"}
    await notices_for(tmp_path, store, Clock(), sent, notify=notify).observe("carol", REFUSED)
    assert "Ask it@example.org to renew it for you" in sent.text()
    assert "/enroll/" not in sent.text()
    assert store.invitations.pending() == {}


async def test_without_an_account_the_admins_own_relay_user_tells_the_admin(
    tmp_path: Path, store: Store
) -> None:
    sent = Sent()
    notify = {"admin": "IT@example.org"}
    await notices_for(tmp_path, store, Clock(), sent, notify=notify).observe("alice", REVOKED)
    [message] = sent.messages
    assert (message.login, message.recipients) == ("it", ("IT@example.org",))
    assert "This notice is for alice <alice@example.org>" in sent.text()
    told = store.notices.last("alice")
    assert told is not None and told.sent_to == "IT@example.org"


async def test_the_notification_account_itself_failing_is_told_to_the_admin(
    tmp_path: Path, store: Store
) -> None:
    sent = Sent()
    notify = {"account": "notices", "admin": "it@example.org"}
    await notices_for(tmp_path, store, Clock(), sent, notify=notify).observe("notices", REFUSED)
    [message] = sent.messages
    assert (message.login, message.recipients) == ("it", ("it@example.org",))


async def test_a_notice_nobody_can_send_is_logged_as_undeliverable_and_not_recorded(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sent = Sent()
    notices = notices_for(tmp_path, store, Clock(), sent, notify={"account": "missing"})
    with caplog.at_level(logging.WARNING, logger="relay.renewal"):
        await notices.observe("alice", REVOKED)
    assert sent.messages == [] and store.notices.all() == []
    assert "renewal.undeliverable user=alice" in caplog.text
    assert "notify.account 'missing' is no relay user" in caplog.text


async def test_a_notice_the_spool_refuses_is_tried_again_at_the_next_failure(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sent = Sent()
    notices = notices_for(tmp_path, store, Clock(), sent, notify={"account": "notices"})
    sent.failing = True
    with caplog.at_level(logging.ERROR, logger="relay.renewal"):
        await notices.observe("alice", REVOKED)  # never raises into the delivery that found it
    assert "renewal.failed user=alice" in caplog.text
    assert store.notices.all() == []
    sent.failing = False
    await notices.observe("alice", REVOKED)
    assert len(sent.messages) == 1
