"""One-time enrollment links: issued for a login, stored only as a hash, redeemed once."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass

from relay.errors import InvitationRefused
from relay.model import Secret

# A user invited to enroll has no local login yet: no hash scheme matches this, so no secret
# verifies against it (relay.state.localauth.verify_stored_hash), and it is no secret to hide.
NO_LOCAL_SECRET = "none$awaiting-enrollment"  # noqa: S105  (a marker, not a secret)
# The link is SELECTOR.VERIFIER: the selector finds the row, the verifier is compared in
# constant time with the stored SHA-256 digest; neither can be learnt from the database.
SELECTOR_BYTES = 12
VERIFIER_BYTES = 32
INVITATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS invitations (
    selector       TEXT PRIMARY KEY,
    verifier_hash  TEXT NOT NULL,
    login          TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    used_at        REAL,
    enrolled_at    REAL
) STRICT
"""
_COLUMNS = "selector, verifier_hash, login, created_at, expires_at, used_at, enrolled_at"


class Refusal(enum.Enum):
    """Why a link does not open the page."""

    UNKNOWN = "unknown"  # forged, mistyped, or replaced by a newer link
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Invitation:
    """One issued link, without its secret half."""

    selector: str
    login: str
    created_at: float
    expires_at: float
    used_at: float | None
    enrolled_at: float | None


class Invitations:
    """Reads and writes the invitations table on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def issue(self, login: str, lifetime: float, now: float | None = None) -> Secret:
        """A new link token for login; earlier unused links of the login stop working."""
        now = time.time() if now is None else now
        selector = secrets.token_urlsafe(SELECTOR_BYTES)
        verifier = secrets.token_urlsafe(VERIFIER_BYTES)
        with self._db:
            self._db.execute(
                "DELETE FROM invitations WHERE login = ? AND used_at IS NULL", (login,)
            )
            self._db.execute(
                f"INSERT INTO invitations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                (selector, _digest(verifier), login, now, now + lifetime),
            )
        return Secret(f"{selector}.{verifier}")

    def redeem(self, token: str, now: float | None = None, *, consume: bool = True) -> str:
        """The login the token was issued for, marking it used; InvitationRefused otherwise."""
        # consume=False only looks: a mail scanner that fetches the link must not burn it.
        now = time.time() if now is None else now
        selector, _, verifier = token.partition(".")
        row = self._db.execute(
            "SELECT verifier_hash, login, expires_at, used_at FROM invitations WHERE selector = ?",
            (selector,),
        ).fetchone()
        # A missing row still costs one digest and compare, as a present one does.
        stored = str(row[0]) if row else _digest(secrets.token_urlsafe(VERIFIER_BYTES))
        if not hmac.compare_digest(_digest(verifier), stored) or row is None:
            raise InvitationRefused(Refusal.UNKNOWN.value)
        login, expires_at, used_at = str(row[1]), float(row[2]), row[3]
        if used_at is not None:
            raise InvitationRefused(Refusal.USED.value, login)
        if now >= expires_at:
            raise InvitationRefused(Refusal.EXPIRED.value, login)
        if not consume:
            return login
        with self._db:
            cursor = self._db.execute(
                "UPDATE invitations SET used_at = ? WHERE selector = ? AND used_at IS NULL",
                (now, selector),
            )
        if cursor.rowcount == 0:  # another request redeemed it meanwhile
            raise InvitationRefused(Refusal.USED.value, login)
        return login

    def enrolled(self, login: str, now: float | None = None) -> None:
        """The login finished enrolling: none of its links is pending any more."""
        now = time.time() if now is None else now
        with self._db:
            self._db.execute(
                "UPDATE invitations SET enrolled_at = ?, used_at = COALESCE(used_at, ?) "
                "WHERE login = ? AND enrolled_at IS NULL",
                (now, now, login),
            )

    def pending(self) -> dict[str, Invitation]:
        """The newest invitation of each login that has not enrolled since, by login."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM invitations WHERE enrolled_at IS NULL ORDER BY created_at"
        ).fetchall()
        return {invitation.login: invitation for invitation in map(_invitation, rows)}

    def forget(self, login: str) -> None:
        """Delete every link of login (the user was removed)."""
        with self._db:
            self._db.execute("DELETE FROM invitations WHERE login = ?", (login,))


def _digest(verifier: str) -> str:
    return hashlib.sha256(verifier.encode("utf-8", "replace")).hexdigest()


def _invitation(row: tuple[object, ...]) -> Invitation:
    selector, _, login, created_at, expires_at, used_at, enrolled_at = row
    return Invitation(
        selector=str(selector),
        login=str(login),
        created_at=float(str(created_at)),
        expires_at=float(str(expires_at)),
        used_at=None if used_at is None else float(str(used_at)),
        enrolled_at=None if enrolled_at is None else float(str(enrolled_at)),
    )
