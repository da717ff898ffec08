"""Which user an AUTH names: a login, or one of a user's addresses; and how a log line shows it."""

from __future__ import annotations

from dataclasses import dataclass

from relay.model import User
from relay.state.store import Store


@dataclass(frozen=True, slots=True)
class Named:
    """The user an AUTH login names (None: nobody), and how relay found them."""

    user: User | None
    by_address: bool = False  # the login was the user's e-mail address or an alias
    address_like: bool = False  # an unknown login that has the form of an address
    known_domain: str | None = None  # that address's domain, when it is one of relay's users'

    def shown(self, name: str) -> str:
        """The login for a log line; an unknown one may be a password typed in the wrong field."""
        if self.user is not None:
            return f"{self.user.login!r} (by address)" if self.by_address else repr(self.user.login)
        if self.known_domain is not None:
            return f"<unknown address at {self.known_domain}, {len(name)} chars>"
        kind = "unknown address" if self.address_like else "unknown"
        return f"<{kind}, {len(name)} chars>"

    def reason(self) -> str:
        """Why the login named nobody, for the auth.failed line."""
        if not self.address_like:
            return "unknown"
        return "unknown address (no user has it as e-mail or alias)"


def name_user(store: Store, name: str) -> Named:
    """The user whose login, or else whose e-mail address or alias, is name."""
    user = store.find_user(name)
    if user is not None or "@" not in name:
        return Named(user)
    wanted = name.strip().lower()
    users = store.list_users()
    found = [u for u in users if wanted in u.sender_addresses]
    if len(found) == 1:
        return Named(found[0], by_address=True)
    # Nobody (or several users share it: no guess). The domain is shown only when it is one of
    # relay's users', so a password typed as the login is never written out, even in part.
    domain = wanted.rpartition("@")[2]
    domains = {a.rpartition("@")[2] for u in users for a in u.sender_addresses}
    return Named(None, address_like=True, known_domain=domain if domain in domains else None)
