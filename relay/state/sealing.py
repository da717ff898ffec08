"""What a user's sealed secret is bound to (login, field, provider, upstream user), and re-sealing.

The binding is the seal's associated data: a database writer without the key who points a
user's row at another provider or upstream user makes the secret fail to open, instead of
having relay send it there.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from relay.errors import (
    MasterKeyError,
    SealDoesNotOpen,
    SealedForAnotherAccount,
    StoreError,
    WrongMasterKey,
)
from relay.model import Secret, User
from relay.state.grants import REFRESH_TOKEN_FIELD
from relay.state.keys import SEAL_VERSION, MasterKey

logger = logging.getLogger(__name__)

UPSTREAM_CREDENTIAL = "upstream_password"  # the name of the sealed field, not a secret
_CONTEXT_LABEL = b"relay seal 2\0"
# What each sealed field is called in an error, and what sets it again.
_FIELDS = {
    UPSTREAM_CREDENTIAL: ("upstream password", "store it again: relay user set-password {login}"),
    REFRESH_TOKEN_FIELD: ("OAuth2 refresh token", "sign in again: relay user authorize {login}"),
}


def account_context(login: str, field: str, provider: str, upstream_user: str) -> bytes:
    """Associated data that binds a sealed secret to its user, field, provider and upstream user."""
    # JSON: one unambiguous encoding, whatever characters the names hold.
    return _CONTEXT_LABEL + json.dumps([login, field, provider, upstream_user]).encode()


def user_context(user: User, field: str) -> bytes:
    """The associated data of one of user's sealed fields, as their row names them now."""
    return account_context(user.login, field, user.provider, user.upstream_user)


def legacy_context(login: str, field: str) -> bytes:
    """The associated data of seals made before store schema 5: user and field only."""
    return f"relay user={login} field={field}".encode()


def open_secret(
    key: MasterKey, sealed: bytes, *, login: str, field: str, provider: str, upstream_user: str
) -> Secret:
    """Open a sealed field for this provider and upstream user; SealedForAnotherAccount if not."""
    try:
        return key.open(sealed, account_context(login, field, provider, upstream_user))
    except SealDoesNotOpen:
        name, fix = _FIELDS.get(field, (field, "store it again"))
        raise SealedForAnotherAccount(
            login, name, provider, upstream_user, fix.format(login=login)
        ) from None


def reseal(key: MasterKey, sealed: bytes, field: str, before: User, after: User) -> bytes:
    """A seal of before's field made anew for after (another provider or upstream user)."""
    secret = open_secret(
        key,
        sealed,
        login=before.login,
        field=field,
        provider=before.provider,
        upstream_user=before.upstream_user,
    )
    return key.seal(secret, user_context(after, field))


def reseal_legacy(db: sqlite3.Connection, key: MasterKey | None, path: Path) -> None:
    """Schema 4 to 5, in the caller's transaction: bind every sealed secret to its account."""
    users = db.execute(
        "SELECT login, provider, upstream_user, sealed_secret FROM users "
        "WHERE sealed_secret IS NOT NULL"
    ).fetchall()
    grants = db.execute(
        "SELECT g.login, u.provider, u.upstream_user, g.sealed_refresh FROM oauth_grants g "
        "JOIN users u ON u.login = g.login WHERE g.sealed_refresh IS NOT NULL"
    ).fetchall()
    if not users and not grants:
        return
    if key is None:
        raise StoreError(
            f"database {path} holds upstream secrets sealed by an older relay; re-sealing them "
            "needs the master key: run 'relay user list' once, as the relay user"
        )
    if any(bytes(row[3])[:1] == SEAL_VERSION for row in (*users, *grants)):
        # Schema 4 never held such seals: someone set the version back to have relay re-seal
        # an old seal (from a backup) for an account of their choosing.
        raise StoreError(
            f"database {path} claims an older schema but holds current seals: it was "
            "tampered with; restore it from a backup"
        )
    for field, table, column, rows in (
        (UPSTREAM_CREDENTIAL, "users", "sealed_secret", users),
        (REFRESH_TOKEN_FIELD, "oauth_grants", "sealed_refresh", grants),
    ):
        for login, provider, upstream_user, sealed in rows:
            secret = _resealed_legacy(key, bytes(sealed), field, str(login))
            if secret is not None:
                context = account_context(login, field, provider, upstream_user)
                db.execute(
                    f"UPDATE {table} SET {column} = ? WHERE login = ?",  # noqa: S608  (constants)
                    (key.seal(secret, context), login),
                )
    logger.info("store.resealed users=%d grants=%d", len(users), len(grants))


def _resealed_legacy(key: MasterKey, sealed: bytes, field: str, login: str) -> Secret | None:
    """The secret under a pre-5 seal; None (left as it is) when it did not open before either."""
    try:
        return key.open(sealed, legacy_context(login, field))
    except WrongMasterKey:
        raise  # the wrong key_file: re-sealing nothing is better than stranding every secret
    except MasterKeyError as error:
        logger.warning("store.reseal_skipped user=%s field=%s reason=%r", login, field, str(error))
        return None
