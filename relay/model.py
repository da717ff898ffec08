"""The domain records relay passes between rooms; nothing here does I/O."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from relay.providers.presets import SentCopy

# A mail whose DATA passes this many octets (its header complete) is written to the spool as it
# arrives and read back from it in pieces of this size: only smaller mails are held whole.
STREAM_THRESHOLD = 1 << 20


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


class Notify(enum.Enum):
    """RFC 3461 §4.1 NOTIFY: the events a sender asked to hear about for one recipient."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"
    NEVER = "NEVER"


@dataclass(frozen=True, slots=True)
class RecipientNotice:
    """One recipient's DSN request (RFC 3461 §4): NOTIFY and ORCPT as the app gave them."""

    notify: frozenset[Notify] = frozenset()  # empty: not given
    orcpt: str | None = None  # "addr-type;xtext", kept as sent (RFC 3461 §4.2)

    def wants(self, event: Notify) -> bool:
        """Whether a DSN for this event goes to the sender."""
        if not self.notify:
            # RFC 3461 §4.1: without NOTIFY, an MTA reports failures and may report delays.
            return event in (Notify.FAILURE, Notify.DELAY)
        return event in self.notify


NO_NOTICE = RecipientNotice()


@dataclass(frozen=True, slots=True)
class EnvelopeParams:
    """The ESMTP parameters of a mail that must reach the provider: SMTPUTF8 and DSN's."""

    smtputf8: bool = False  # RFC 6531: the addresses or header may hold UTF-8
    ret: str | None = None  # RFC 3461 §4.3: FULL or HDRS
    envid: str | None = None  # RFC 3461 §4.4: xtext, kept as sent
    notices: tuple[tuple[str, RecipientNotice], ...] = ()  # per recipient, when given

    def notice(self, recipient: str) -> RecipientNotice:
        """The DSN request for one recipient (none given: the default)."""
        return next((n for r, n in self.notices if r == recipient), NO_NOTICE)

    @property
    def asks_dsn(self) -> bool:
        """Whether the app gave any DSN parameter."""
        return bool(self.ret or self.envid or self.notices)


NO_PARAMS = EnvelopeParams()


def xtext_decode(text: str) -> str:
    """RFC 3461 §4: xtext with its +XX escapes undone (invalid escapes are kept as sent)."""
    out, index = [], 0
    while index < len(text):
        hexa = text[index + 1 : index + 3]
        if text[index] == "+" and len(hexa) == 2 and all(c in "0123456789ABCDEF" for c in hexa):
            out.append(chr(int(hexa, 16)))
            index += 3
        else:
            out.append(text[index])
            index += 1
    return "".join(out)
