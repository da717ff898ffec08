"""The user store: persistence, uniqueness, file permissions."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from relay.errors import StoreError, UnknownUser
from relay.model import CheckRecord, UpstreamAuth, User
from relay.providers.presets import SentCopy
from relay.state.keys import MasterKey
from relay.state.store import SCHEMA_VERSION, Store

# Opening a database older than schema 5 re-seals its secrets, which needs the key. The rows
# below hold placeholders that open with no key: the upgrade leaves them as they are.
KEY = MasterKey(b"k" * 32)

ALICE = User(
    login="alice",
    provider="agency",
    email="alice@example.org",
    upstream_user="alice@example.org",
    local_hash="sha256$abc",
    sealed_secret=b"\x01sealed",
    aliases=("sales@example.org", "info@example.org"),
)


def test_user_round_trips_through_the_database(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(ALICE)
    store.close()
    reopened = Store.open(tmp_path / "relay.db")
    got = reopened.get_user("alice")
    reopened.close()
    assert replace(got, created_at=0.0, updated_at=0.0) == ALICE
    assert got.created_at > 0


def test_database_file_is_readable_only_by_owner(tmp_path: Path) -> None:
    Store.create(tmp_path / "relay.db").close()
    assert stat.S_IMODE((tmp_path / "relay.db").stat().st_mode) == 0o600


def test_second_user_with_same_login_is_refused(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(ALICE)
    with pytest.raises(StoreError, match="exists already"):
        store.add_user(ALICE)
    store.close()


def test_unknown_user_is_reported_by_name(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    with pytest.raises(UnknownUser, match="'bob'"):
        store.get_user("bob")
    with pytest.raises(UnknownUser):
        store.remove_user("bob")
    store.close()


def test_opening_a_missing_database_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="relay init"):
        Store.open(tmp_path / "relay.db")


def test_disable_is_persisted(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(ALICE)
    store.update_user(replace(store.get_user("alice"), enabled=False))
    assert not store.get_user("alice").enabled
    assert [u.login for u in store.list_users()] == ["alice"]
    store.remove_user("alice")
    assert store.list_users() == []
    store.close()


def test_sent_settings_and_the_remembered_folder_are_persisted(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(replace(ALICE, sent_copy=SentCopy.ALWAYS, sent_folder="Itens Enviados"))
    store.remember_sent_folder("alice", "Envoyés")
    got = store.get_user("alice")
    store.close()
    assert (got.sent_copy, got.sent_folder, got.sent_folder_found) == (
        SentCopy.ALWAYS,
        "Itens Enviados",
        "Envoyés",
    )


def test_remembering_a_folder_for_an_unknown_user_names_the_user(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    with pytest.raises(UnknownUser, match="'bob'"):
        store.remember_sent_folder("bob", "Sent")
    store.close()


def test_switching_to_oauth2_deletes_the_password_and_keeps_edits_made_meanwhile(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(replace(ALICE, sealed_secret=b"sealed password"))
    other_process = Store.open(tmp_path / "relay.db")
    other_process.remember_sent_folder("alice", "Envoyés")
    other_process.close()
    store.switch_to_oauth2("alice")
    got = store.get_user("alice")
    store.close()
    assert (got.auth, got.sealed_secret, got.sent_folder_found) == (
        UpstreamAuth.OAUTH2,
        None,
        "Envoyés",
    )


V1_SCHEMA = """
CREATE TABLE users (
    login TEXT PRIMARY KEY, provider TEXT NOT NULL, email TEXT NOT NULL, display_name TEXT,
    upstream_user TEXT NOT NULL, aliases TEXT NOT NULL DEFAULT '',
    rewrite_from INTEGER NOT NULL DEFAULT 0, enabled INTEGER NOT NULL DEFAULT 1,
    local_hash TEXT NOT NULL, sealed_secret BLOB, created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) STRICT;
INSERT INTO users VALUES
    ('alice', 'agency', 'alice@example.org', NULL, 'alice@example.org', '', 0, 1,
     'sha256$abc', X'01', 1.0, 2.0);
PRAGMA user_version = 1;
"""


def v1_database(path: Path) -> Path:
    """A database as relay 0.1 (schema 1) left it, with one user."""
    connection = sqlite3.connect(path)
    connection.executescript(V1_SCHEMA)
    connection.close()
    return path


@pytest.mark.parametrize("opener", [Store.open, Store.create])
def test_schema_1_database_is_upgraded_keeping_its_users(
    tmp_path: Path, opener: Callable[[Path, MasterKey], Store]
) -> None:
    store = opener(v1_database(tmp_path / "relay.db"), KEY)
    alice = store.get_user("alice")
    assert (alice.email, alice.updated_at, alice.sent_copy, alice.sent_folder, alice.auth) == (
        "alice@example.org",
        2.0,
        None,
        None,
        UpstreamAuth.PASSWORD,
    )
    assert store.grants.get("alice") is None
    store.remember_sent_folder("alice", "Sent")
    store.close()
    reopened = Store.open(tmp_path / "relay.db")
    assert reopened.get_user("alice").sent_folder_found == "Sent"
    reopened.close()
    connection = sqlite3.connect(tmp_path / "relay.db")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    connection.close()


V2_SCHEMA = """
CREATE TABLE users (
    login TEXT PRIMARY KEY, provider TEXT NOT NULL, email TEXT NOT NULL, display_name TEXT,
    upstream_user TEXT NOT NULL, aliases TEXT NOT NULL DEFAULT '',
    rewrite_from INTEGER NOT NULL DEFAULT 0, enabled INTEGER NOT NULL DEFAULT 1,
    local_hash TEXT NOT NULL, sealed_secret BLOB, created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_copy TEXT CHECK (sent_copy IN ('auto', 'always', 'never')),
    sent_folder TEXT, sent_folder_found TEXT
) STRICT;
INSERT INTO users VALUES
    ('alice', 'agency', 'alice@example.org', NULL, 'alice@example.org', '', 0, 0,
     'sha256$abc', X'01', 1.0, 2.0, 'never', 'Sent', NULL);
PRAGMA user_version = 2;
"""


@pytest.mark.parametrize("opener", [Store.open, Store.create])
def test_schema_2_database_gets_the_checks_table_keeping_its_users_in_place(
    tmp_path: Path, opener: Callable[[Path, MasterKey], Store]
) -> None:
    connection = sqlite3.connect(tmp_path / "relay.db")
    connection.executescript(V2_SCHEMA)
    connection.close()
    store = opener(tmp_path / "relay.db", KEY)
    alice = store.get_user("alice")
    assert (alice.enabled, alice.awaiting_check, alice.sent_copy, alice.sent_folder) == (
        False,
        False,
        SentCopy.NEVER,
        "Sent",
    )
    assert store.last_check("alice") is None
    store.record_check(CHECK)
    store.close()
    reopened = Store.open(tmp_path / "relay.db")
    assert reopened.last_checks() == {"alice": CHECK}
    reopened.close()


CHECK = CheckRecord(
    login="alice",
    checked_at=1_700_000_000.5,
    passed=False,
    failed_stage="auth",
    summary="535 5.7.8 Error: authentication failed",
    report='{"version": 1}',
)


def test_last_check_replaces_the_one_before_and_goes_with_the_user(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(replace(ALICE, enabled=False, awaiting_check=True))
    assert store.get_user("alice").awaiting_check
    store.record_check(CHECK)
    passed = replace(CHECK, checked_at=CHECK.checked_at + 60, passed=True, failed_stage=None)
    store.record_check(passed)
    assert store.last_check("alice") == passed
    assert store.last_checks() == {"alice": passed}
    store.remove_user("alice")
    assert store.last_checks() == {}
    with pytest.raises(UnknownUser, match="'alice'"):
        store.record_check(CHECK)
    store.close()


def test_database_from_a_newer_relay_is_refused(tmp_path: Path) -> None:
    Store.create(tmp_path / "relay.db").close()
    connection = sqlite3.connect(tmp_path / "relay.db")
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StoreError, match="schema 99 .made by a newer relay."):
        Store.open(tmp_path / "relay.db")


def test_a_user_changed_by_another_process_is_seen_at_the_next_lookup(tmp_path: Path) -> None:
    daemon_side = Store.create(tmp_path / "relay.db")
    daemon_side.add_user(ALICE)
    assert daemon_side.get_user("alice").enabled
    cli_side = Store.open(tmp_path / "relay.db")
    cli_side.update_user(replace(cli_side.get_user("alice"), enabled=False))
    assert not daemon_side.get_user("alice").enabled
    cli_side.remove_user("alice")
    assert daemon_side.find_user("alice") is None
    cli_side.close()
    daemon_side.close()


def test_a_users_own_changes_are_seen_at_the_next_lookup(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.add_user(ALICE)
    assert store.get_user("alice").sent_folder_found is None
    store.remember_sent_folder("alice", "Sent Items")
    assert store.get_user("alice").sent_folder_found == "Sent Items"
    store.remove_user("alice")
    assert store.find_user("alice") is None
    store.close()


def test_an_answer_about_a_replaced_refresh_token_leaves_the_new_grant_alone(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "relay.db")
    store.grants.authorized("alice", b"sealed-old", ("mail",), 100.0)
    store.grants.authorized("alice", b"sealed-new", ("mail",), 200.0)  # authorized again
    # A refresh that started with the old token comes back: rotated, or invalid_grant.
    store.grants.refreshed("alice", b"sealed-rotated", ("mail",), 300.0, used=b"sealed-old")
    store.grants.needs_authorization("alice", "invalid_grant", used=b"sealed-old")
    grant = store.grants.get("alice")
    assert grant is not None
    assert (grant.sealed_refresh, grant.needs_authorization) == (b"sealed-new", None)
    store.grants.refreshed("alice", b"sealed-rotated", ("mail",), 300.0, used=b"sealed-new")
    grant = store.grants.get("alice")
    assert grant is not None and grant.sealed_refresh == b"sealed-rotated"
    store.close()
