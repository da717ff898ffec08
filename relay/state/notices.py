"""Renewal notices: per user, when relay last told them their login stopped working, and why."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

NOTICES_TABLE = """
CREATE TABLE IF NOT EXISTS renewal_notices (
    login          TEXT PRIMARY KEY,
    notified_at    REAL NOT NULL,
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    sent_to        TEXT NOT NULL
) STRICT
"""
_COLUMNS = "login, notified_at, reason, detail, sent_to"


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """The last renewal notice one user was sent."""

    login: str
    notified_at: float
    reason: str  # needs-authorize | password-refused
    detail: str  # the provider's own words
    sent_to: str  # the address the notice went to: the user's, or the admin's


class Notices:
    """Reads and writes the renewal_notices table on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def last(self, login: str) -> NoticeRecord | None:
        """The user's last notice, or None if they were never sent one."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM renewal_notices WHERE login = ?", (login,)
        ).fetchone()
        return None if row is None else _record(row)

    def record(self, notice: NoticeRecord) -> None:
        """Keep this notice as the user's last one, replacing the one before."""
        with self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO renewal_notices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (notice.login, notice.notified_at, notice.reason, notice.detail, notice.sent_to),
            )

    def all(self) -> list[NoticeRecord]:
        """Every user's last notice, newest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM renewal_notices ORDER BY notified_at DESC"
        ).fetchall()
        return [_record(row) for row in rows]


def _record(row: tuple[object, ...]) -> NoticeRecord:
    login, notified_at, reason, detail, sent_to = row
    return NoticeRecord(
        login=str(login),
        notified_at=float(str(notified_at)),
        reason=str(reason),
        detail=str(detail),
        sent_to=str(sent_to),
    )
