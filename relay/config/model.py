"""relay's configuration: the validated tree of frozen dataclasses, with its defaults."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from relay.config.addresses import is_loopback_address
from relay.errors import OAuthError
from relay.model import OAuthClient, Secret
from relay.providers.presets import NO_PACE, Endpoint, Pace, SentCopy, SentCopyMailbox, Transport

DEFAULT_STATE_DIR = Path("/var/lib/relay")
DEFAULT_KEY_FILE = Path("/etc/relay/relay.key")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
USER_LABELS = ("login", "hash", "drop")
# RFC 6750 §2.1 b64token, at least 16 characters so that a guessable word is refused.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")
DEFAULT_METRICS_PORT = 9325
DEFAULT_WEB_PORT = 8025
# How relay answers the end of DATA: at once once the mail is spooled (the first attempt then
# runs in the background, a refusal comes back as a DSN), or with the provider's verdict.
REPLY_MODES = ("spool", "verdict")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One local SMTP listening socket."""

    address: str = "127.0.0.1"
    port: int = 2525
    tls_cert: Path | None = None
    tls_key: Path | None = None
    reply: str = "spool"  # one of REPLY_MODES; a user's own setting overrides it
    # A Unix socket instead of address and port, for `relay sendmail`: the caller's Unix user,
    # as the kernel tells it (SO_PEERCRED), picks the relay user in unix_users; no password.
    socket: Path | None = None
    unix_users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Mail without AUTH from trusted_peers (off by default): the envelope sender picks the user
    # (sender_mapped, among `users` when given), or every such mail is one user's (`user`).
    sender_mapped: bool = False
    users: tuple[str, ...] = ()
    user: str | None = None
    trusted_peers: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    @property
    def is_loopback(self) -> bool:
        """True when connections to this address never leave the machine."""
        return self.socket is not None or is_loopback_address(self.address)

    @property
    def without_auth(self) -> bool:
        """Whether trusted peers may send here without AUTH (sender-mapped or one-user)."""
        return self.sender_mapped or self.user is not None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream provider, with any preset already expanded."""

    name: str
    preset: str | None
    smtp: Endpoint
    imap: Endpoint | None
    ca_file: Path | None
    sent_copy: SentCopy
    files_sent_itself: bool
    domains: tuple[str, ...]
    max_recipients: int | None
    sent_folder: str | None
    oauth2: OAuthSettings | None = None
    # Let users put any address in From: for a provider that enforces From itself (Gmail's
    # "send mail as" addresses); Sender and the envelope sender stay the user's own.
    allow_foreign_from: bool = False
    # Sessions one user may hold at this provider at once (None: queue.max_connections_per_user),
    # and how fast relay sends as one user there (the preset's documented rates by default).
    max_connections: int | None = None
    pace: Pace = NO_PACE
    # The largest mail this provider takes (the preset's documented figure, or set here), used
    # until relay has seen its EHLO's SIZE; None: not known.
    max_message_bytes: int | None = None
    # SMTP, or Graph sendMail as the organisation's app (oauth2.app_only); graph_url is the
    # Graph endpoint's base (https://graph.microsoft.com/v1.0 unless a test points elsewhere).
    transport: Transport = Transport.SMTP
    graph_url: str | None = None
    # Send As: a mail whose From is a shared address of the user's is filed in the Sent folder
    # of the mailbox relay logs in as, or (sender) of that address (relay.upstream.sendas).
    sent_copy_mailbox: SentCopyMailbox = SentCopyMailbox.UPSTREAM_USER


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """relay's own per-message limits."""

    # None: follow the user's provider (its EHLO's SIZE, else its documented limit); set, a cap.
    max_message_bytes: int | None = None
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 100
    # Networks whose logged-in clients max_connections_per_ip does not count, as Postfix
    # exempts $mynetworks, and whose address has no failed-login count: every local app shares
    # 127.0.0.1.
    per_ip_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    auth_failure_delay: float = 2.0
    auth_failure_max_delay: float = 15.0
    # AUTHs that need the slow check (scrypt, 32 MiB each) at once; more get 454 4.7.0.
    max_concurrent_auth: int = 8
    # Seconds from connecting to a successful AUTH, not reset by commands (Postfix and Dovecot
    # give tens of seconds); a share of max_connections that unauthenticated sessions may hold.
    unauthenticated_timeout: float = 30.0
    unauthenticated_share: float = 0.5
    messages_per_minute: int = 0  # 0: no limit of relay's own
    messages_per_day: int = 0
    # DATA held in memory by all sessions at once (relay keeps a mail in memory until it is
    # spooled); past it, 452 4.3.1 and the app retries later.
    max_data_in_memory: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How long to wait for providers, in seconds; timeout bounds each SMTP command."""

    connect_timeout: float = 30.0
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The durable queue: how long the app waits, how retries back off, when mail expires."""

    first_attempt_timeout: float = 10.0
    min_backoff: float = 300.0
    max_backoff: float = 3600.0
    lifetime: float = 5 * 24 * 3600.0
    delay_warning: float = 0.0
    per_user_concurrency: int = 1
    # The default ceiling of a user's upstream sessions: relay opens them as mail waits, up to
    # this (or the provider's or user's own), and fewer when the provider pushes back. 20 is
    # Postfix's default_destination_concurrency_limit.
    max_connections_per_user: int = 20
    connection_idle_timeout: float = 60.0
    duplicate_window: float = 300.0
    min_free_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """What relay logs, and how: key=value text lines or one JSON object per line."""

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus /metrics endpoint; off unless enabled."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT
    # A file holding the bearer token scrapers must send; None: no token asked for.
    token_file: Path | None = None
    user_labels: str = "login"  # login | hash | drop: what the per-user `user` label shows

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can scrape the metrics."""
        return is_loopback_address(self.address)

    def token(self) -> Secret | None:
        """The bearer token in token_file, read now; ValueError saying why it cannot be used."""
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            why = getattr(error, "strerror", None) or str(error)
            raise ValueError(f"cannot read {self.token_file}: {why}") from None
        if not _BEARER_TOKEN.fullmatch(text):
            raise ValueError(
                f"{self.token_file} must hold one token of at least 16 letters, digits or "
                "-._~+/ (for example the output of `openssl rand -hex 32`)"
            )
        return Secret(text)


@dataclass(frozen=True, slots=True)
class UserDelivery:
    """One user's own delivery settings (the config's `users` section); None: as for others."""

    reply: str | None = None
    max_connections: int | None = None
    pace: Pace | None = None


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The self-service enrollment pages (relay.web); off unless enabled."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = DEFAULT_WEB_PORT
    # The address people open, as their browser sees it (https://relay.example.org/ behind a
    # proxy); None: http://address:port/ of the bound socket. Host and Origin must match it.
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    invite_lifetime: float = 72 * 3600.0  # seconds an enrollment link stays usable
    attempts_per_ip: int = 20  # password forms one client address may post per 15 minutes

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the pages."""
        return is_loopback_address(self.address)


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Renewal notices to users whose upstream login stopped working; off unless set."""

    # The relay user whose own mailbox sends the notices (through the queue, so retried).
    account: str | None = None
    # Gets the notice instead when no account is set (then its relay user sends it), or when
    # the failing user is the account itself.
    admin: str | None = None
    interval: float = 86400.0  # seconds between two notices to the same user

    @property
    def enabled(self) -> bool:
        """True when relay sends renewal notices at all."""
        return self.account is not None or self.admin is not None


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The whole validated configuration."""

    source: Path
    listen: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    state_dir: Path = DEFAULT_STATE_DIR
    key_file: Path = DEFAULT_KEY_FILE
    hostname: str = field(default_factory=socket.getfqdn)
    shutdown_grace: float = 30.0
    limits: LimitsConfig = LimitsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    queue: QueueConfig = QueueConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    notify: NotifyConfig = NotifyConfig()
    # New users, and users whose upstream password changes, stay disabled until `relay check`
    # passes for them.
    enable_after_check: bool = False
    providers: Mapping[str, ProviderConfig] = field(default_factory=lambda: MappingProxyType({}))
    users: Mapping[str, UserDelivery] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def database_path(self) -> Path:
        """The SQLite database inside the state directory."""
        return self.state_dir / "relay.db"

    @property
    def spool_path(self) -> Path:
        """The durable queue's database inside the state directory."""
        return self.state_dir / "spool.db"


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """relay's registration at a provider; URLs have the tenant filled in."""

    client_id: str
    client_secret_file: Path | None
    tenant: str | None
    authorize_url: str
    token_url: str
    device_url: str | None
    scopes: tuple[str, ...]
    redirect_host: str = "127.0.0.1"
    # From the preset, not a file key: what the provider needs to hand out a refresh token.
    authorize_params: tuple[tuple[str, str], ...] = ()
    # An organisation credential instead of each user's sign-in: Microsoft's client
    # credentials grant with client_secret_file (app_only), or a Google service account's
    # key file with domain-wide delegation (RFC 7523). Both are read from their files when a
    # token is asked for, never stored.
    app_only: bool = False
    service_account_file: Path | None = None
    # app_only with a certificate instead of a secret: a client assertion (RFC 7523 §2.2)
    # signed with the key (relay.oauth.assertion).
    client_certificate_file: Path | None = None
    client_key_file: Path | None = None
    # Google's consent screen "Publishing status" (PUBLISHING_STATUSES): refresh tokens of an
    # app in Testing end after 7 days (relay.oauth.lifetimes). None: not said, taken as production.
    publishing_status: str | None = None

    @property
    def organisation(self) -> bool:
        """True when no user signs in: the organisation's credential gets every token."""
        return self.app_only or self.service_account_file is not None

    def client(self) -> OAuthClient:
        """The client for token requests, with the secret read from its file now."""
        secret = None
        if self.client_secret_file is not None:
            try:
                text = self.client_secret_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                why = getattr(error, "strerror", None) or str(error)
                raise OAuthError(
                    "client_secret_file", f"cannot read {self.client_secret_file}: {why}"
                ) from None
            secret = Secret(text)
        return OAuthClient(
            client_id=self.client_id,
            client_secret=secret,
            authorize_url=self.authorize_url,
            token_url=self.token_url,
            device_url=self.device_url,
            scopes=self.scopes,
            authorize_params=self.authorize_params,
            redirect_host=self.redirect_host,
        )
