"""The domain records relay passes between rooms; nothing here does I/O."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from relay.providers.presets import SentCopy


class Secret:
    """A secret string that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(Secret)


class UpstreamAuth(enum.Enum):
    """How relay logs in to the user's provider."""

    PASSWORD = "password"  # noqa: S105  (a login method) a password or app password: SASL PLAIN or LOGIN
    OAUTH2 = "oauth2"  # an access token from the user's OAuth2 grant: XOAUTH2 or OAUTHBEARER


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
    sent_copy: SentCopy | None = None  # None: as the provider says
    sent_folder: str | None = None  # None: discover it
    sent_folder_found: str | None = None  # what discovery found last time
    # Disabled until `relay check` passes (config enable_after_check); the check enables them.
    awaiting_check: bool = False
    auth: UpstreamAuth = UpstreamAuth.PASSWORD

    @property
    def sender_addresses(self) -> tuple[str, ...]:
        """Envelope senders this user may use, lower-cased."""
        return tuple(dict.fromkeys(a.lower() for a in (self.email, *self.aliases)))


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """The outcome of a user's last `relay check`."""

    login: str
    checked_at: float
    passed: bool
    failed_stage: str | None  # None when it passed
    summary: str  # one line: what passed, or the failing stage's reply
    report: str = field(repr=False)  # the whole report as JSON (docs/check-report.schema.json)


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """A user's OAuth2 authorization as relay last saw it."""

    login: str
    sealed_refresh: bytes | None = field(repr=False)
    scopes: tuple[str, ...] = ()
    authorized_at: float | None = None
    refreshed_at: float | None = None  # when the last access token was obtained
    access_expires_at: float | None = None
    needs_authorization: str | None = None  # why a person must sign in again; None: usable


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """relay's registration at one provider's authorization server, endpoints resolved."""

    client_id: str
    client_secret: Secret | None = field(repr=False)
    authorize_url: str
    token_url: str
    device_url: str | None
    scopes: tuple[str, ...]
    authorize_params: tuple[tuple[str, str], ...] = ()
    redirect_host: str = "127.0.0.1"  # of the loopback redirect URI
