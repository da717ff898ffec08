"""Each OAuth2 user's grant in the store: the sealed refresh token and what is known about it."""

from __future__ import annotations

import sqlite3
import time

from relay.model import OAuthGrant

REFRESH_TOKEN_FIELD = "oauth2_refresh_token"  # noqa: S105  (a field name, not a secret)
# Its own table, written only by targeted UPDATEs: the daemon stores rotated refresh tokens
# while the CLI edits users, and neither may overwrite the other's columns.
GRANTS_TABLE = """
CREATE TABLE IF NOT EXISTS oauth_grants (
    login               TEXT PRIMARY KEY,
    sealed_refresh      BLOB,
    scopes              TEXT NOT NULL DEFAULT '',
    authorized_at       REAL,
    refreshed_at        REAL,
    access_expires_at   REAL,
    needs_authorization TEXT
) STRICT
"""
_COLUMNS = (
    "login, sealed_refresh, scopes, authorized_at, refreshed_at, access_expires_at, "
    "needs_authorization"
)


class Grants:
    """Reads and writes the oauth_grants table on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def get(self, login: str) -> OAuthGrant | None:
        """The user's grant, or None if they never authorized relay."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM oauth_grants WHERE login = ?", (login,)
        ).fetchone()
        return None if row is None else _grant(row)

    def authorized(
        self, login: str, sealed_refresh: bytes, scopes: tuple[str, ...], expires_at: float
    ) -> None:
        """Replace the user's grant with a new authorization."""
        now = time.time()
        with self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO oauth_grants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (login, sealed_refresh, " ".join(scopes), now, now, expires_at),
            )

    # Both writes below apply only while the grant still holds the refresh token that was used
    # (`used`, sealed): a new authorization or another process's rotation may have replaced it
    # during the request, and an answer about the old token must not overwrite the new one.

    def refreshed(
        self,
        login: str,
        sealed_refresh: bytes | None,
        scopes: tuple[str, ...],
        expires_at: float,
        *,
        used: bytes,
    ) -> None:
        """Note a refresh; a rotated refresh token replaces the old one in the same write."""
        with self._db:
            self._db.execute(
                "UPDATE oauth_grants SET sealed_refresh = COALESCE(?, sealed_refresh), "
                "scopes = ?, refreshed_at = ?, access_expires_at = ? "
                "WHERE login = ? AND sealed_refresh = ?",
                (sealed_refresh, " ".join(scopes), time.time(), expires_at, login, used),
            )

    def needs_authorization(self, login: str, reason: str, *, used: bytes) -> None:
        """Stop using the grant until the user authorizes relay again."""
        with self._db:
            self._db.execute(
                "UPDATE oauth_grants SET needs_authorization = ? "
                "WHERE login = ? AND sealed_refresh = ?",
                (reason, login, used),
            )

    def forget(self, login: str) -> None:
        """Delete the user's grant with its sealed refresh token."""
        with self._db:
            self._db.execute("DELETE FROM oauth_grants WHERE login = ?", (login,))


def _grant(row: tuple[object, ...]) -> OAuthGrant:
    login, sealed, scopes, authorized_at, refreshed_at, expires_at, needs = row
    return OAuthGrant(
        login=str(login),
        sealed_refresh=sealed if isinstance(sealed, bytes) else None,
        scopes=tuple(str(scopes).split()),
        authorized_at=_time(authorized_at),
        refreshed_at=_time(refreshed_at),
        access_expires_at=_time(expires_at),
        needs_authorization=None if needs is None else str(needs),
    )


def _time(value: object) -> float | None:
    return None if value is None else float(str(value))
