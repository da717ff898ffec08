"""The user store: persistence, uniqueness, file permissions."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from relay.errors import StoreError, UnknownUser
from relay.store import Store, User

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
