"""SQLite store of users: local login hashes, sealed upstream secrets, settings, last checks."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from relay.errors import StoreError, UnknownUser
from relay.model import CheckRecord, UpstreamAuth, User
from relay.providers.presets import SentCopy
from relay.state.grants import GRANTS_TABLE, Grants
from relay.state.invites import INVITATIONS_TABLE, Invitations
from relay.state.keys import MasterKey
from relay.state.notices import NOTICES_TABLE, Notices
from relay.state.sealing import UPSTREAM_CREDENTIAL as UPSTREAM_CREDENTIAL
from relay.state.sealing import reseal_legacy

SCHEMA_VERSION = 7
RESEALED_AT = 5  # the upgrade to this schema binds every seal to its provider and upstream user
_CHECKS_TABLE = """
CREATE TABLE IF NOT EXISTS checks (
    login          TEXT PRIMARY KEY,
    checked_at     REAL NOT NULL,
    passed         INTEGER NOT NULL,
    failed_stage   TEXT,
    summary        TEXT NOT NULL,
    report         TEXT NOT NULL
) STRICT
"""
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS users (
    login          TEXT PRIMARY KEY,
    provider       TEXT NOT NULL,
    email          TEXT NOT NULL,
    display_name   TEXT,
    upstream_user  TEXT NOT NULL,
    aliases        TEXT NOT NULL DEFAULT '',
    rewrite_from   INTEGER NOT NULL DEFAULT 0,
    enabled        INTEGER NOT NULL DEFAULT 1,
    local_hash     TEXT NOT NULL,
    sealed_secret  BLOB,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    sent_copy      TEXT CHECK (sent_copy IN ('auto', 'always', 'never')),
    sent_folder    TEXT,
    sent_folder_found TEXT,
    awaiting_check INTEGER NOT NULL DEFAULT 0,
    auth           TEXT NOT NULL DEFAULT 'password' CHECK (auth IN ('password', 'oauth2'))
) STRICT;
"""
    + _CHECKS_TABLE
    + ";\n"
    + GRANTS_TABLE
    + ";\n"
    + INVITATIONS_TABLE
    + ";\n"
    + NOTICES_TABLE
    + ";\n"
)
# MIGRATIONS[n - 1] brings a database from schema n to n + 1, keeping every row.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "ALTER TABLE users ADD COLUMN sent_copy TEXT "
        "CHECK (sent_copy IN ('auto', 'always', 'never'))",
        "ALTER TABLE users ADD COLUMN sent_folder TEXT",
        "ALTER TABLE users ADD COLUMN sent_folder_found TEXT",
    ),
    (
        # IF NOT EXISTS: Store.create runs SCHEMA, which makes the table, before upgrading.
        _CHECKS_TABLE,
        "ALTER TABLE users ADD COLUMN awaiting_check INTEGER NOT NULL DEFAULT 0",
    ),
    (
        GRANTS_TABLE,
        "ALTER TABLE users ADD COLUMN auth TEXT NOT NULL DEFAULT 'password' "
        "CHECK (auth IN ('password', 'oauth2'))",
    ),
    (),  # 4 to 5 re-seals the secrets (relay.state.sealing.reseal_legacy), which needs the key
    (INVITATIONS_TABLE,),
    (NOTICES_TABLE,),
)
COLUMNS = (
    "login, provider, email, display_name, upstream_user, aliases, rewrite_from, enabled, "
    "local_hash, sealed_secret, created_at, updated_at, sent_copy, sent_folder, sent_folder_found, "
    "awaiting_check, auth"
)
CHECK_COLUMNS = "login, checked_at, passed, failed_stage, summary, report"
PLACEHOLDERS = "(" + ",".join("?" * len(COLUMNS.split(","))) + ")"


class Store:
    """The users table in the state directory's SQLite database."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self.grants = Grants(connection)
        self.invitations = Invitations(connection)
        self.notices = Notices(connection)
        # find_user runs on the event loop at every AUTH and several times per mail; the
        # answers stay valid until a write, here (total_changes) or by another process
        # (PRAGMA data_version), so they are kept until then.
        self._users: dict[str, User] = {}
        self._users_as_of: tuple[int, int] = (-1, -1)

    @classmethod
    def create(cls, path: Path, key: MasterKey | None = None) -> Store:
        """Create (or open) the database file, 0600, with the current schema."""
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        store = cls(_connect(path), path)
        with store._db:
            store._db.executescript(SCHEMA)
            if store._version() == 0:  # a new file, so SCHEMA made the current tables
                store._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        try:
            store._upgrade(key)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: Path, key: MasterKey | None = None) -> Store:
        """Open an existing database; an older one with sealed secrets needs the key to upgrade."""
        if not path.is_file():
            raise StoreError(f"database not found: {path} (run 'relay init' first)")
        store = cls(_connect(path), path)
        version = store._version()
        if not 1 <= version <= SCHEMA_VERSION:
            store.close()
            newer = " (made by a newer relay)" if version > SCHEMA_VERSION else ""
            raise StoreError(
                f"database {path} has schema {version}{newer}, expected {SCHEMA_VERSION}"
            )
        try:
            store._upgrade(key)
        except BaseException:
            store.close()
            raise
        return store

    def _version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _upgrade(self, key: MasterKey | None) -> None:
        """Bring an older database up to SCHEMA_VERSION in one transaction."""
        if self._version() == SCHEMA_VERSION:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another relay process may have upgraded it.
                version = self._version()
                for statements in MIGRATIONS[version - 1 :]:
                    for statement in statements:
                        self._db.execute(statement)
                if version < RESEALED_AT:
                    reseal_legacy(self._db, key, self.path)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        except sqlite3.Error as error:
            raise StoreError(f"cannot upgrade database {self.path}: {error}") from None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def add_user(self, user: User) -> None:
        """Insert a new user; refuse a login that exists already."""
        now = time.time()
        user = replace(user, created_at=now, updated_at=now)
        try:
            with self._db:
                self._db.execute(
                    f"INSERT INTO users ({COLUMNS}) VALUES {PLACEHOLDERS}",
                    _row(user),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"user {user.login!r} exists already") from None

    def find_user(self, login: str) -> User | None:
        """The user with this login, or None."""
        as_of = (self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes)
        if as_of != self._users_as_of:
            self._users.clear()
            self._users_as_of = as_of
        user = self._users.get(login)
        if user is None:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM users WHERE login = ?", (login,)
            ).fetchone()
            user = None if row is None else self._users.setdefault(login, _user(row))
        return user

    def get_user(self, login: str) -> User:
        """The user with this login; UnknownUser if there is none."""
        user = self.find_user(login)
        if user is None:
            raise UnknownUser(login)
        return user

    def list_users(self) -> list[User]:
        """Every user, by login."""
        rows = self._db.execute(f"SELECT {COLUMNS} FROM users ORDER BY login").fetchall()
        return [_user(row) for row in rows]

    def remove_user(self, login: str) -> None:
        """Delete a user and their sealed secrets."""
        with self._db:
            if self._db.execute("DELETE FROM users WHERE login = ?", (login,)).rowcount == 0:
                raise UnknownUser(login)
            self._db.execute("DELETE FROM checks WHERE login = ?", (login,))
            self._db.execute("DELETE FROM oauth_grants WHERE login = ?", (login,))
            self._db.execute("DELETE FROM invitations WHERE login = ?", (login,))
            self._db.execute("DELETE FROM renewal_notices WHERE login = ?", (login,))

    def update_user(self, user: User) -> None:
        """Write back every field of an existing user, whose provider and upstream user stay."""
        user = replace(user, updated_at=time.time())
        with self._db:
            cursor = self._db.execute(
                f"UPDATE users SET ({COLUMNS}) = {PLACEHOLDERS} "
                "WHERE login = ? AND provider = ? AND upstream_user = ?",
                (*_row(user), user.login, user.provider, user.upstream_user),
            )
            if cursor.rowcount == 0:
                self.get_user(user.login)  # UnknownUser if that is why
                # Its seals are bound to both: they would no longer open (relay.state.sealing).
                raise StoreError(
                    f"user {user.login}: a new provider or upstream user needs the secrets "
                    "re-sealed for it (Store.rebind_user)"
                )

    def rebind_user(
        self, user: User, *, refresh: tuple[bytes, bytes] | None, forget_grant: bool
    ) -> None:
        """Write a user whose provider or upstream user changed, with secrets sealed anew for it."""
        # refresh: (the sealed refresh token that was re-sealed, its new seal). Replaced only if
        # the grant still holds the old one, as in Grants.refreshed; else nothing is written.
        user = replace(user, updated_at=time.time())
        with self._db:
            cursor = self._db.execute(
                f"UPDATE users SET ({COLUMNS}) = {PLACEHOLDERS} WHERE login = ?",
                (*_row(user), user.login),
            )
            if cursor.rowcount == 0:
                raise UnknownUser(user.login)
            if forget_grant:
                self._db.execute("DELETE FROM oauth_grants WHERE login = ?", (user.login,))
            elif refresh is not None:
                cursor = self._db.execute(
                    "UPDATE oauth_grants SET sealed_refresh = ? WHERE login = ? "
                    "AND sealed_refresh = ?",
                    (refresh[1], user.login, refresh[0]),
                )
                if cursor.rowcount == 0:
                    raise StoreError(
                        f"the OAuth2 grant of {user.login} changed meanwhile (renewed by the "
                        "daemon?); nothing was changed: run the command again"
                    )

    def switch_to_oauth2(self, login: str) -> None:
        """The user logs in upstream with OAuth2 from now on; their stored password is deleted."""
        # Targeted, not update_user: `relay user authorize` waits minutes for the sign-in, and
        # edits made meanwhile (by the CLI, or the daemon's Sent folder) must survive.
        with self._db:
            cursor = self._db.execute(
                "UPDATE users SET auth = ?, sealed_secret = NULL, updated_at = ? WHERE login = ?",
                (UpstreamAuth.OAUTH2.value, time.time(), login),
            )
            if cursor.rowcount == 0:
                raise UnknownUser(login)

    def remember_sent_folder(self, login: str, folder: str | None) -> None:
        """Store the Sent folder discovery found, for next time; None forgets it."""
        # A discovery is not an edit of the user's settings, so updated_at stays.
        with self._db:
            cursor = self._db.execute(
                "UPDATE users SET sent_folder_found = ? WHERE login = ?", (folder, login)
            )
            if cursor.rowcount == 0:
                raise UnknownUser(login)

    def record_check(self, record: CheckRecord) -> None:
        """Keep this check as the user's last one, replacing the one before."""
        with self._db:
            if self._db.execute("SELECT 1 FROM users WHERE login = ?", (record.login,)).fetchone():
                self._db.execute(
                    f"INSERT OR REPLACE INTO checks ({CHECK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        record.login,
                        record.checked_at,
                        int(record.passed),
                        record.failed_stage,
                        record.summary,
                        record.report,
                    ),
                )
            else:
                raise UnknownUser(record.login)

    def last_checks(self) -> dict[str, CheckRecord]:
        """Each user's last check, by login; users never checked are missing."""
        rows = self._db.execute(f"SELECT {CHECK_COLUMNS} FROM checks").fetchall()
        return {str(row[0]): _check(row) for row in rows}

    def last_check(self, login: str) -> CheckRecord | None:
        """The user's last check, or None if they were never checked."""
        row = self._db.execute(
            f"SELECT {CHECK_COLUMNS} FROM checks WHERE login = ?", (login,)
        ).fetchone()
        return None if row is None else _check(row)


def _check(row: tuple[object, ...]) -> CheckRecord:
    login, checked_at, passed, failed_stage, summary, report = row
    return CheckRecord(
        login=str(login),
        checked_at=float(str(checked_at)),
        passed=bool(passed),
        failed_stage=None if failed_stage is None else str(failed_stage),
        summary=str(summary),
        report=str(report),
    )


def _connect(path: Path) -> sqlite3.Connection:
    try:
        connection = sqlite3.connect(path, timeout=10.0)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        # Replaced and deleted seals are overwritten with zeros, not left in free pages.
        connection.execute("PRAGMA secure_delete = ON")
    except sqlite3.Error as error:
        raise StoreError(f"cannot open database {path}: {error}") from None
    return connection


def _row(user: User) -> tuple[object, ...]:
    return (
        user.login,
        user.provider,
        user.email,
        user.display_name,
        user.upstream_user,
        "\n".join(user.aliases),
        int(user.rewrite_from),
        int(user.enabled),
        user.local_hash,
        user.sealed_secret,
        user.created_at,
        user.updated_at,
        None if user.sent_copy is None else user.sent_copy.value,
        user.sent_folder,
        user.sent_folder_found,
        int(user.awaiting_check),
        user.auth.value,
    )


def _user(row: tuple[object, ...]) -> User:
    (login, provider, email, display_name, upstream_user, aliases, rewrite_from, enabled) = row[:8]
    local_hash, sealed_secret, created_at, updated_at = row[8:12]
    sent_copy, sent_folder, sent_folder_found, awaiting_check, auth = row[12:]
    return User(
        login=str(login),
        provider=str(provider),
        email=str(email),
        display_name=None if display_name is None else str(display_name),
        upstream_user=str(upstream_user),
        aliases=tuple(a for a in str(aliases).split("\n") if a),
        rewrite_from=bool(rewrite_from),
        enabled=bool(enabled),
        local_hash=str(local_hash),
        sealed_secret=sealed_secret if isinstance(sealed_secret, bytes) else None,
        created_at=float(str(created_at)),
        updated_at=float(str(updated_at)),
        sent_copy=None if sent_copy is None else SentCopy(sent_copy),
        sent_folder=None if sent_folder is None else str(sent_folder),
        sent_folder_found=None if sent_folder_found is None else str(sent_folder_found),
        awaiting_check=bool(awaiting_check),
        auth=UpstreamAuth(auth),
    )
