"""SQLite store of users: local login hashes, sealed upstream secrets, settings."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from relay.errors import StoreError, UnknownUser

SCHEMA_VERSION = 1
SCHEMA = """
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
    updated_at     REAL NOT NULL
) STRICT;
"""
COLUMNS = (
    "login, provider, email, display_name, upstream_user, aliases, rewrite_from, enabled, "
    "local_hash, sealed_secret, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class User:
    """One local login and the upstream account it sends through."""

    login: str
    provider: str
    email: str
    upstream_user: str
    local_hash: str = field(repr=False)
    sealed_secret: bytes | None = field(repr=False)
    display_name: str | None = None
    aliases: tuple[str, ...] = ()
    rewrite_from: bool = False
    enabled: bool = True
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def sender_addresses(self) -> tuple[str, ...]:
        """Envelope senders this user may use, lower-cased."""
        return tuple(dict.fromkeys(a.lower() for a in (self.email, *self.aliases)))


UPSTREAM_CREDENTIAL = "upstream_password"  # the name of the sealed field, not a secret


def secret_context(login: str, what: str) -> bytes:
    """Associated data that binds a sealed secret to its user and field."""
    return f"relay user={login} field={what}".encode()


class Store:
    """The users table in the state directory's SQLite database."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def create(cls, path: Path) -> Store:
        """Create (or open) the database file, 0600, with the current schema."""
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        store = cls(_connect(path), path)
        with store._db:
            store._db.executescript(SCHEMA)
            store._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return store

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open an existing database, with a clear error if 'relay init' has not run."""
        if not path.is_file():
            raise StoreError(f"database not found: {path} (run 'relay init' first)")
        store = cls(_connect(path), path)
        version = store._db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StoreError(f"database {path} has schema {version}, expected {SCHEMA_VERSION}")
        return store

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
                    f"INSERT INTO users ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    _row(user),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"user {user.login!r} exists already") from None

    def find_user(self, login: str) -> User | None:
        """The user with this login, or None."""
        row = self._db.execute(f"SELECT {COLUMNS} FROM users WHERE login = ?", (login,)).fetchone()
        return None if row is None else _user(row)

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

    def update_user(self, user: User) -> None:
        """Write back every field of an existing user."""
        user = replace(user, updated_at=time.time())
        with self._db:
            cursor = self._db.execute(
                f"UPDATE users SET ({COLUMNS}) = (?,?,?,?,?,?,?,?,?,?,?,?) WHERE login = ?",
                (*_row(user), user.login),
            )
            if cursor.rowcount == 0:
                raise UnknownUser(user.login)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        connection = sqlite3.connect(path, timeout=10.0)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
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
    )


def _user(row: tuple[object, ...]) -> User:
    (login, provider, email, display_name, upstream_user, aliases, rewrite_from, enabled) = row[:8]
    local_hash, sealed_secret, created_at, updated_at = row[8:]
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
    )
