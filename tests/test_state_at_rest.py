"""State at rest: delivered mail leaves no trace, seals hide lengths and are bound to the account.

Attacks of issue 21 item 5: a delivered mail's text stayed in spool.db-wal; a sealed secret's
size gave the password's length; a database writer without the key could point alice's row at
another provider and have relay send her password there.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.config.load import load_config
from relay.config.model import OAuthSettings
from relay.errors import SealedForAnotherAccount, StoreError, WrongMasterKey
from relay.model import Secret, UpstreamAuth, User
from relay.oauth.client import TokenEndpoint
from relay.oauth.tokens import AccessTokens, refresh_token_context
from relay.queue.records import AttemptRecord
from relay.queue.spool import Spool
from relay.reply import Reply
from relay.state.grants import REFRESH_TOKEN_FIELD
from relay.state.keys import MasterKey, load_key
from relay.state.sealing import UPSTREAM_CREDENTIAL, legacy_context, user_context
from relay.state.store import SCHEMA_VERSION, Store
from relay.tls import TlsContexts
from relay.upstream.credentials import open_credentials
from tests.harness import RelaySetup, write_config
from tests.test_spool import message
from tests.upstream import recording_upstream

PASSWORD = "upstream-Pa55"
LAB = {"smtp": {"host": "mail.example.org", "port": 587, "tls": "starttls"}}
ELSEWHERE = {"smtp": {"host": "mail.elsewhere.test", "port": 587, "tls": "starttls"}}
FAST = {"connect_timeout": 2, "timeout": 5}


# --- The spool: a delivered mail's text is in neither spool.db nor spool.db-wal ---


def spool_bytes(path: Path) -> bytes:
    """Every byte of the spool database and its write-ahead log, as they are on disk."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.mark.parametrize("size", [300, 200_000])  # in a page of its own, and in overflow pages
async def test_a_delivered_mail_is_in_neither_spool_file_after_a_checkpoint(
    tmp_path: Path, size: int
) -> None:
    marker = b"Zebra-Quokka-7f3a91 confidential salary figures"
    body = (marker + b"\r\n") * (size // len(marker))
    path = tmp_path / "spool.db"
    spool = Spool.open(path)
    try:
        assert await spool.enqueue(message("d" * 16, b"Subject: s\r\n\r\n" + body), 0.0)
        assert marker in spool_bytes(path)  # the grep finds it while it is queued
        delivered = {"bob@example.net": Reply(250, "2.0.0", "Ok: queued")}
        attempt = AttemptRecord(delivered, {}, {}, "250 2.0.0 Ok: queued", time.time())
        entry = await spool.record("d" * 16, attempt)
        assert entry is not None and entry.removed
        assert await spool.checkpoint()
        assert marker not in spool_bytes(path)
        assert path.with_name("spool.db-wal").stat().st_size == 0
    finally:
        spool.close()


def test_a_removed_users_sealed_password_is_not_left_in_the_database_file(
    tmp_path: Path,
) -> None:
    setup = write_config(tmp_path, {"lab": LAB})
    setup.add_user("alice", "lab", "alice@example.org", PASSWORD)
    setup.add_user("bob", "lab", "bob@example.org", "pw-of-bob")
    store = Store.open(setup.state_dir / "relay.db")
    sealed = store.get_user("alice").sealed_secret
    store.close()
    assert sealed is not None and sealed in (setup.state_dir / "relay.db").read_bytes()
    assert setup.cli("user", "remove", "alice").status == 0
    # The command's connection was the last: SQLite folded the WAL into the file and removed it.
    assert sealed not in (setup.state_dir / "relay.db").read_bytes()


# --- Padding: a seal's size no longer gives the password's length ---


def test_a_7_and_a_20_character_password_seal_to_the_same_size() -> None:
    key = MasterKey(os.urandom(32))
    context = b"relay test"
    short, longer = key.seal(Secret("hunter2"), context), key.seal(Secret("x" * 20), context)
    assert len(short) == len(longer)
    assert key.open(short, context).reveal() == "hunter2"
    assert key.open(longer, context).reveal() == "x" * 20


@pytest.mark.parametrize(
    ("plaintext", "bucket"),
    [("", 64), ("a" * 63, 64), ("a" * 64, 256), ("é" * 100, 256), ("t" * 1500, 4096)],
)
def test_secrets_pad_to_their_bucket_and_open_exactly(plaintext: str, bucket: int) -> None:
    key = MasterKey(os.urandom(32))
    sealed = key.seal(Secret(plaintext), b"c")
    assert len(sealed) == 1 + 4 + 12 + bucket + 16  # version, key id, nonce, padded text, tag
    assert key.open(sealed, b"c").reveal() == plaintext


def test_a_secret_ending_in_nul_bytes_opens_with_them() -> None:
    key = MasterKey(os.urandom(32))
    assert key.open(key.seal(Secret("pw\0\0"), b"c"), b"c").reveal() == "pw\0\0"


def test_users_added_with_passwords_of_different_lengths_have_seals_of_one_size(
    tmp_path: Path,
) -> None:
    setup = write_config(tmp_path, {"lab": LAB})
    setup.add_user("alice", "lab", "alice@example.org", "hunter2")
    setup.add_user("bob", "lab", "bob@example.org", "a-much-longer-app-password-here")
    store = Store.open(setup.state_dir / "relay.db")
    try:
        sizes = {len(user.sealed_secret or b"") for user in store.list_users()}
    finally:
        store.close()
    assert sizes == {97}


# --- The seal is bound to login, field, provider and upstream user ---


def edit_row(setup: RelaySetup, table: str, column: str, value: str) -> None:
    """Change alice's row with sqlite3, as a database writer without the key could."""
    edit_row_of(setup.state_dir / "relay.db", table, column, value)


@pytest.mark.parametrize(
    ("column", "value"), [("provider", "elsewhere"), ("upstream_user", "mallory@elsewhere.test")]
)
async def test_a_password_row_pointed_at_another_account_does_not_open(
    tmp_path: Path, column: str, value: str
) -> None:
    setup = write_config(tmp_path, {"lab": LAB, "elsewhere": ELSEWHERE})
    setup.add_user("alice", "lab", "alice@example.org", PASSWORD)
    edit_row(setup, "users", column, value)
    config = load_config(setup.config_path)
    key = load_key(setup.key_file)
    store = Store.open(config.database_path, key)
    try:
        alice = store.get_user("alice")
        credentials = open_credentials(config, store, key, TlsContexts())
        with pytest.raises(SealedForAnotherAccount) as refused:
            await credentials.open(alice, config.providers[alice.provider])
    finally:
        store.close()
    message = str(refused.value)
    assert "alice" in message and repr(value) in message
    assert "relay user set-password alice" in message
    assert PASSWORD not in message and PASSWORD not in repr(refused.value)


async def test_relay_check_of_a_row_moved_to_another_provider_sends_it_nothing(
    tmp_path: Path,
) -> None:
    async with recording_upstream(trustme.CA(), tmp_path) as other:
        elsewhere = {
            "smtp": {"host": other.host, "port": other.port, "tls": other.tls},
            "ca_file": str(other.ca_file),
        }
        providers = {"lab": LAB, "elsewhere": elsewhere}
        setup = write_config(tmp_path / "relay", providers, upstream=FAST)
        setup.add_user("alice", "lab", "alice@example.org", PASSWORD)
        edit_row(setup, "users", "provider", "elsewhere")
        result = await asyncio.to_thread(setup.cli, "check", "alice", "--json")
    assert result.status == 1
    report = json.loads(result.out)
    [failed] = [stage for stage in report["stages"] if stage["status"] == "fail"]
    # The secret is opened before any connection: the other provider hears nothing at all.
    assert failed["name"] == "config", failed
    assert "does not open for provider 'elsewhere'" in failed["reply"]
    assert other.handler.connections == 0 and other.handler.raw == b""
    assert PASSWORD not in result.out + result.err


def no_endpoint() -> TokenEndpoint:
    raise AssertionError("no token request may be made with a refresh token that did not open")


async def test_a_refresh_token_row_pointed_at_another_provider_is_not_sent_to_its_endpoint(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "relay.db")
    key = MasterKey(os.urandom(32))
    alice = User(
        "alice",
        "lab",
        "alice@example.org",
        "alice@example.org",
        "h",
        None,
        auth=UpstreamAuth.OAUTH2,
    )
    store.add_user(alice)
    sealed = key.seal(Secret("refresh-token-of-alice"), refresh_token_context(alice))
    store.grants.authorized("alice", sealed, ("mail",), 0.0)
    settings = OAuthSettings("id", None, None, "https://a.test/", "https://t.test/", None, ())
    tokens = AccessTokens(store, key, no_endpoint)
    try:
        with pytest.raises(SealedForAnotherAccount, match="relay user authorize alice"):
            await tokens.bearer("alice", "elsewhere", settings)
        edit_row_of(store.path, "users", "upstream_user", "mallory@elsewhere.test")
        with pytest.raises(SealedForAnotherAccount, match="mallory@elsewhere.test"):
            await tokens.bearer("alice", "lab", settings)
    finally:
        await tokens.close()
        store.close()


def edit_row_of(path: Path, table: str, column: str, value: str) -> None:
    """Change alice's row in the database at path with sqlite3."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE login = 'alice'", (value,))  # noqa: S608
    finally:
        db.close()


def test_the_store_refuses_to_move_a_user_without_resealing(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "relay.db")
    try:
        alice = User("alice", "lab", "alice@example.org", "alice@example.org", "h", b"sealed")
        store.add_user(alice)
        with pytest.raises(StoreError, match="re-sealed"):
            store.update_user(replace(alice, provider="elsewhere"))
        assert store.get_user("alice").provider == "lab"
    finally:
        store.close()


def test_moving_a_user_with_the_cli_reseals_the_password_for_the_new_account(
    tmp_path: Path,
) -> None:
    setup = write_config(tmp_path, {"lab": LAB, "elsewhere": ELSEWHERE})
    setup.add_user("alice", "lab", "alice@example.org", PASSWORD)
    moved = setup.cli(
        "user", "set", "alice", "--provider", "elsewhere", "--upstream-user", "alice@else.test"
    )
    assert moved.status == 0, moved.err
    key = load_key(setup.key_file)
    store = Store.open(setup.state_dir / "relay.db", key)
    try:
        alice = store.get_user("alice")
    finally:
        store.close()
    assert (alice.provider, alice.upstream_user) == ("elsewhere", "alice@else.test")
    assert alice.sealed_secret is not None
    assert key.open(alice.sealed_secret, user_context(alice, UPSTREAM_CREDENTIAL)).reveal() == (
        PASSWORD
    )


def test_moving_an_oauth2_user_to_another_provider_forgets_the_grant_and_says_authorize(
    tmp_path: Path,
) -> None:
    urls = {"authorize_url": "https://a.test/", "token_url": "https://t.test/"}
    oauth = {"oauth2": {"client_id": "relay", "scopes": ["mail"], **urls}}
    setup = write_config(tmp_path, {"lab": {**LAB, **oauth}, "elsewhere": {**ELSEWHERE, **oauth}})
    assert (
        setup.cli(
            "user", "add", "alice", "--provider", "lab", "--email", "alice@example.org", "--oauth2"
        ).status
        == 0
    )
    key = load_key(setup.key_file)
    store = Store.open(setup.state_dir / "relay.db", key)
    alice = store.get_user("alice")
    sealed = key.seal(Secret("refresh-token-of-alice"), refresh_token_context(alice))
    store.grants.authorized("alice", sealed, ("mail",), 0.0)
    store.close()

    same_provider = setup.cli("user", "set", "alice", "--upstream-user", "alice2@example.org")
    assert same_provider.status == 0, same_provider.err
    store = Store.open(setup.state_dir / "relay.db", key)
    alice = store.get_user("alice")
    grant = store.grants.get("alice")
    store.close()
    assert grant is not None and grant.sealed_refresh is not None
    opened = key.open(grant.sealed_refresh, refresh_token_context(alice))
    assert opened.reveal() == "refresh-token-of-alice"

    other_provider = setup.cli("user", "set", "alice", "--provider", "elsewhere")
    assert other_provider.status == 0, other_provider.err
    assert "relay user authorize alice" in other_provider.err
    store = Store.open(setup.state_dir / "relay.db", key)
    assert store.grants.get("alice") is None
    store.close()


# --- The migration: seals of schema 4 are bound to their account at the first open ---


def legacy_seal(material: bytes, plaintext: str, login: str, field: str) -> bytes:
    """A seal as relay 0.1 made it: format 1, no padding, associated data user and field."""
    header = b"\x01" + MasterKey(material).key_id
    nonce = os.urandom(12)
    context = legacy_context(login, field)
    return header + nonce + AESGCM(material).encrypt(nonce, plaintext.encode(), header + context)


def schema_4_store(path: Path, material: bytes) -> None:
    """A schema-4 database: alice with a password, bob with an OAuth2 refresh token."""
    store = Store.create(path)
    alice_seal = legacy_seal(material, PASSWORD, "alice", UPSTREAM_CREDENTIAL)
    store.add_user(User("alice", "lab", "alice@example.org", "alice@example.org", "h", alice_seal))
    bob = User("bob", "lab", "bob@example.org", "bob@example.org", "h", None)
    store.add_user(bob)
    bob_seal = legacy_seal(material, "refresh-of-bob", "bob", REFRESH_TOKEN_FIELD)
    store.grants.authorized("bob", bob_seal, ("mail",), 0.0)
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 4")
    db.close()


def test_a_schema_4_store_is_resealed_bound_to_each_account_at_open(tmp_path: Path) -> None:
    material = os.urandom(32)
    key = MasterKey(material)
    schema_4_store(tmp_path / "relay.db", material)
    store = Store.open(tmp_path / "relay.db", key)
    try:
        alice, bob = store.get_user("alice"), store.get_user("bob")
        grant = store.grants.get("bob")
    finally:
        store.close()
    assert alice.sealed_secret is not None and alice.sealed_secret[:1] == b"\x02"
    assert key.open(alice.sealed_secret, user_context(alice, UPSTREAM_CREDENTIAL)).reveal() == (
        PASSWORD
    )
    assert grant is not None and grant.sealed_refresh is not None
    assert key.open(grant.sealed_refresh, refresh_token_context(bob)).reveal() == "refresh-of-bob"
    db = sqlite3.connect(tmp_path / "relay.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


@pytest.mark.parametrize("key", [None, MasterKey(b"w" * 32)], ids=["no key", "another key"])
def test_a_schema_4_store_opened_without_its_key_is_left_as_it_was(
    tmp_path: Path, key: MasterKey | None
) -> None:
    material = os.urandom(32)
    schema_4_store(tmp_path / "relay.db", material)
    before = sqlite3.connect(tmp_path / "relay.db")
    rows = before.execute("SELECT login, sealed_secret FROM users ORDER BY login").fetchall()
    before.close()
    expected = StoreError if key is None else WrongMasterKey
    with pytest.raises(expected, match="relay user list" if key is None else "key_file"):
        Store.open(tmp_path / "relay.db", key)
    after = sqlite3.connect(tmp_path / "relay.db")
    assert after.execute("PRAGMA user_version").fetchone()[0] == 4
    assert after.execute("SELECT login, sealed_secret FROM users ORDER BY login").fetchall() == rows
    after.close()
    # The right key then upgrades it.
    Store.open(tmp_path / "relay.db", MasterKey(material)).close()


def test_a_store_set_back_to_schema_4_over_current_seals_is_refused(tmp_path: Path) -> None:
    material = os.urandom(32)
    schema_4_store(tmp_path / "relay.db", material)
    Store.open(tmp_path / "relay.db", MasterKey(material)).close()  # re-sealed, schema 5
    # A writer without the key restores alice's old seal from a backup, points her row
    # elsewhere and sets the version back, for relay to re-seal it for that account.
    db = sqlite3.connect(tmp_path / "relay.db")
    with db:
        seal = legacy_seal(material, PASSWORD, "alice", UPSTREAM_CREDENTIAL)
        db.execute(
            "UPDATE users SET sealed_secret = ?, provider = 'elsewhere' WHERE login = 'alice'",
            (seal,),
        )
    db.execute("PRAGMA user_version = 4")
    db.close()
    with pytest.raises(StoreError, match="tampered with"):
        Store.open(tmp_path / "relay.db", MasterKey(material))


def test_relay_user_list_reseals_a_schema_4_store_written_by_the_cli(tmp_path: Path) -> None:
    setup = write_config(tmp_path, {"lab": LAB})
    setup.add_user("alice", "lab", "alice@example.org", "pw")
    material = setup.key_file.read_bytes()
    path = setup.state_dir / "relay.db"
    db = sqlite3.connect(path)
    with db:
        seal = legacy_seal(material, PASSWORD, "alice", UPSTREAM_CREDENTIAL)
        db.execute("UPDATE users SET sealed_secret = ? WHERE login = 'alice'", (seal,))
    db.execute("PRAGMA user_version = 4")
    db.close()
    assert setup.cli("user", "list").status == 0
    store = Store.open(path)
    alice = store.get_user("alice")
    store.close()
    assert alice.sealed_secret is not None
    key = MasterKey(material)
    assert key.open(alice.sealed_secret, user_context(alice, UPSTREAM_CREDENTIAL)).reveal() == (
        PASSWORD
    )
