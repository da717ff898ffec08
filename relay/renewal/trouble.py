"""Which delivery failures mean a person must renew their login, and in the provider's words."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.errors import AuthorizationNeeded, PermanentLoginRefusal, RelayError
from relay.model import UpstreamAuth, User


class Reason(enum.Enum):
    """Why a user's login stopped working."""

    NEEDS_AUTHORIZE = "needs-authorize"  # the OAuth2 grant is revoked, expired or missing
    PASSWORD_REFUSED = "password-refused"  # noqa: S105  (a reason: the stored password is refused)


@dataclass(frozen=True, slots=True)
class Trouble:
    """A dead login: why, and what the provider said."""

    reason: Reason
    detail: str


def trouble_of(user: User, error: RelayError) -> Trouble | None:
    """The dead login an attempt's error shows, or None for any other failure."""
    if isinstance(error, AuthorizationNeeded):
        return Trouble(Reason.NEEDS_AUTHORIZE, error.reason)
    # A refused access token is retried with a fresh one and kept queued (relay.queue.attempts):
    # only a 5xx to a password says the password itself is wrong.
    if isinstance(error, PermanentLoginRefusal) and user.auth is UpstreamAuth.PASSWORD:
        return Trouble(Reason.PASSWORD_REFUSED, f"{error.code} {error.enhanced} {error.text}")
    return None
