"""relay's config file: YAML in, a validated tree of frozen dataclasses out."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import yaml

from relay.configoauth import OAuthSettings, oauth_settings, render_oauth
from relay.configread import (
    FILE_PROBLEM,
    Reader,
    Section,
    did_you_mean,
    duplicate_keys,
    is_ip,
    is_loopback_address,
    join_path,
    or_default,
    plain,
    shown,
    syntax_problem,
)
from relay.errors import ConfigError
from relay.providers import PRESETS, STANDARD_PORTS, Endpoint, Preset, SentCopy, TlsMode

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_CONFIG_PATH = Path("/etc/relay/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/relay")
DEFAULT_KEY_FILE = Path("/etc/relay/relay.key")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_METRICS_PORT = 9325
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One local SMTP listening socket."""

    address: str = "127.0.0.1"
    port: int = 2525
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def is_loopback(self) -> bool:
        """True when connections to this address never leave the machine."""
        return is_loopback_address(self.address)


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


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """relay's own per-message limits."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 100
    # Networks whose clients max_connections_per_ip does not count, as Postfix exempts
    # $mynetworks: every local app shares 127.0.0.1.
    per_ip_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    auth_failure_delay: float = 2.0
    auth_failure_max_delay: float = 15.0
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
    max_connections_per_user: int = 4
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

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can scrape the metrics."""
        return is_loopback_address(self.address)


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
    # New users, and users whose upstream password changes, stay disabled until `relay check`
    # passes for them.
    enable_after_check: bool = False
    providers: Mapping[str, ProviderConfig] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def database_path(self) -> Path:
        """The SQLite database inside the state directory."""
        return self.state_dir / "relay.db"

    @property
    def spool_path(self) -> Path:
        """The durable queue's database inside the state directory."""
        return self.state_dir / "spool.db"


def _keys(kind: type[DataclassInstance], *internal: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind) if f.name not in internal)


# The file's keys are the field names, so render_config and parse_config cannot drift apart.
_TOP_KEYS = _keys(RelayConfig, "source")
_PROVIDER_KEYS = _keys(ProviderConfig, "name", "files_sent_itself")


def config_path_from(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to use: --config, else $RELAY_CONFIG, else the default."""
    if cli_value:
        return Path(cli_value)
    return Path(environ.get("RELAY_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> RelayConfig:
    """Read, parse and validate a config file; raise one ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        why = "config file not found (copy config.example.yaml there, or pass --config)"
        raise ConfigError(path, [(FILE_PROBLEM, why)]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, [(FILE_PROBLEM, "cannot read: not UTF-8 text")]) from None
    except OSError as error:
        why = f"cannot read: {error.strerror or error}"
        raise ConfigError(path, [(FILE_PROBLEM, why)]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(path, [syntax_problem(error)]) from None
    except ValueError as error:  # e.g. an integer past Python's 4300-digit conversion limit
        raise ConfigError(path, [(FILE_PROBLEM, f"cannot read a value: {error}")]) from None
    duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    try:
        config = parse_config(data, str(path), path.absolute().parent)
    except ConfigError as error:
        raise ConfigError(path, duplicates + error.problems) from None
    if duplicates:
        raise ConfigError(path, duplicates)
    return config


def parse_config(data: object, source: str, base_dir: Path) -> RelayConfig:
    """Validate parsed YAML into a RelayConfig; relative paths are taken from base_dir."""
    if data is None:
        why = "is empty; it needs at least a 'providers' section (see config.example.yaml)"
        raise ConfigError(source, [(FILE_PROBLEM, why)])
    if not isinstance(data, dict):
        why = f"expected a mapping of settings at the top level, got {shown(data)}"
        raise ConfigError(source, [(FILE_PROBLEM, why)])
    reader = Reader(base_dir)
    top = reader.section(data, "", _TOP_KEYS)
    config = RelayConfig(
        source=Path(source),
        listen=_listeners(reader, top),
        state_dir=reader.path(top, "state_dir") or DEFAULT_STATE_DIR,
        key_file=reader.path(top, "key_file") or DEFAULT_KEY_FILE,
        hostname=reader.host(top, "hostname") or socket.getfqdn(),
        shutdown_grace=or_default(reader.seconds(top, "shutdown_grace", allow_zero=True), 30.0),
        limits=_limits(reader, reader.child(top, "limits", _keys(LimitsConfig))),
        upstream=_upstream(reader, reader.child(top, "upstream", _keys(UpstreamConfig))),
        queue=_queue(reader, reader.child(top, "queue", _keys(QueueConfig))),
        logging=_logging(reader, reader.child(top, "logging", _keys(LoggingConfig))),
        metrics=_metrics(reader, reader.child(top, "metrics", _keys(MetricsConfig))),
        enable_after_check=or_default(reader.boolean(top, "enable_after_check"), False),
        providers=_providers(reader, top),
    )
    if reader.problems:
        raise ConfigError(source, reader.problems)
    return config


def render_config(config: RelayConfig) -> str:
    """The fully resolved config as YAML that parse_config reads back to an equal config."""
    document = {key: plain(getattr(config, key)) for key in _TOP_KEYS if key != "providers"}
    document["providers"] = {
        name: {
            key: render_oauth(provider.oauth2) if key == "oauth2" else plain(getattr(provider, key))
            for key in _PROVIDER_KEYS
        }
        for name, provider in config.providers.items()
    }
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _listeners(reader: Reader, top: Section) -> tuple[ListenerConfig, ...]:
    value = top.get("listen")
    if value is None:
        return (ListenerConfig(),)
    if not isinstance(value, list) or not value:
        example = "[{address: 127.0.0.1, port: 2525}]"
        reader.fail("listen", f"expected a list of listeners like {example}, got {shown(value)}")
        return (ListenerConfig(),)
    return tuple(_listener(reader, item, f"listen[{index}]") for index, item in enumerate(value))


def _listener(reader: Reader, value: object, path: str) -> ListenerConfig:
    s = reader.section(value, path, _keys(ListenerConfig))
    default = ListenerConfig()
    address = _address(reader, s)
    listener = ListenerConfig(
        address=address or default.address,
        port=or_default(reader.integer(s, "port", 0, 65535), default.port),
        tls_cert=reader.readable_file(s, "tls_cert"),
        tls_key=reader.readable_file(s, "tls_key"),
    )
    has_cert, has_key = s.get("tls_cert") is not None, s.get("tls_key") is not None
    if has_cert and not has_key:
        reader.fail(s.key("tls_key"), "required when tls_cert is set")
    elif has_key and not has_cert:
        reader.fail(s.key("tls_cert"), "required when tls_key is set")
    elif address is not None and not has_cert and not listener.is_loopback:
        reader.fail(
            path,
            f"address {address} is not loopback: set tls_cert and tls_key, because AUTH "
            "would otherwise cross the network in plaintext",
        )
    return listener


def _providers(reader: Reader, top: Section) -> Mapping[str, ProviderConfig]:
    value = top.get("providers")
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        reader.fail("providers", f"expected a mapping of provider names, got {shown(value)}")
        return MappingProxyType({})
    providers: dict[str, ProviderConfig] = {}
    for name, item in value.items():
        path = join_path("providers", str(name))
        if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
            reader.fail(path, "a provider name is letters, digits, '.', '_' and '-'")
            continue
        provider = _provider(reader, name, reader.section(item, path, _PROVIDER_KEYS))
        if provider is not None:
            providers[name] = provider
    return MappingProxyType(providers)


def _provider(reader: Reader, name: str, s: Section) -> ProviderConfig | None:
    preset = _preset(reader, s)
    # A misspelt preset is reported once; "host required" on top of it would only confuse.
    complain = s.get("preset") is None or preset is not None
    if s.get("smtp") is None and preset is None and complain:
        reader.fail(s.key("smtp"), "required: set smtp {host, port, tls} or a preset")
    smtp = _endpoint(reader, s, "smtp", preset.smtp if preset else None, complain)
    imap = _endpoint(reader, s, "imap", preset.imap if preset else None, complain)
    sent_copy = or_default(reader.choice(s, "sent_copy", SentCopy), SentCopy.AUTO)
    if sent_copy is SentCopy.ALWAYS and imap is None and s.get("imap") is None:
        reader.fail(s.key("sent_copy"), "'always' needs an imap endpoint to append to")
    domains = _domains(reader, s)
    max_recipients = reader.integer(s, "max_recipients")
    ca_file = reader.readable_file(s, "ca_file")
    sent_folder = reader.text(s, "sent_folder")
    oauth2 = oauth_settings(
        reader, s, preset.name if preset else None, preset.oauth2 if preset else None
    )
    if smtp is None:
        return None
    return ProviderConfig(
        name=name,
        preset=preset.name if preset else None,
        smtp=smtp,
        imap=imap,
        ca_file=ca_file,
        sent_copy=sent_copy,
        files_sent_itself=preset.files_sent_itself if preset else False,
        domains=or_default(domains, preset.domains if preset else ()),
        max_recipients=or_default(max_recipients, preset.max_recipients if preset else None),
        sent_folder=sent_folder,
        oauth2=oauth2,
    )


def _preset(reader: Reader, s: Section) -> Preset | None:
    value = s.get("preset")
    if value is None:
        return None
    preset = PRESETS.get(value) if isinstance(value, str) else None
    if preset is None:
        hint = did_you_mean(value, PRESETS) + f"; known presets: {', '.join(sorted(PRESETS))}"
        reader.fail(s.key("preset"), f"unknown preset {shown(value)}{hint}")
    return preset


def _endpoint(
    reader: Reader, parent: Section, name: str, base: Endpoint | None, complain: bool
) -> Endpoint | None:
    """The endpoint at parent.name, each key given overriding the base (preset) one."""
    if parent.get(name) is None:
        return base
    s = reader.child(parent, name, _keys(Endpoint))
    host = reader.host(s, "host")
    tls = reader.choice(s, "tls", TlsMode)
    port = reader.integer(s, "port", 1, 65535)
    for key in ("host", "tls"):
        if s.get(key) is None and base is None and complain:
            reader.fail(s.key(key), "required (no preset supplies it)")
    host = host or (base.host if base else None)
    tls = tls or (base.tls if base else None)
    if port is None and s.get("port") is None and tls is not None:
        # A changed tls without a port means that mode's standard port, not the preset's.
        port = base.port if base is not None and base.tls is tls else STANDARD_PORTS[name, tls]
    if host is None or tls is None or port is None:
        return None
    return Endpoint(host, port, tls)


def _domains(reader: Reader, s: Section) -> tuple[str, ...] | None:
    value = s.get("domains")
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list):
        reader.fail(s.key("domains"), f"expected a list of domains, got {shown(value)}")
        return None
    domains = []
    for index, item in enumerate(value):
        domain = item.strip().lstrip("@").rstrip(".").lower() if isinstance(item, str) else ""
        if _DOMAIN.fullmatch(domain):
            domains.append(domain)
        else:
            why = f"expected a domain like example.org, got {shown(item)}"
            reader.fail(f"{s.key('domains')}[{index}]", why)
    return tuple(domains)


def _address(reader: Reader, s: Section) -> str | None:
    """An IP address or 'localhost' to listen on; None (and a problem) otherwise."""
    address = reader.text(s, "address")
    if address is not None and address != "localhost" and not is_ip(address):
        reader.fail(s.key("address"), f"expected an IP address or 'localhost', got {address!r}")
        return None
    return address


def _count(reader: Reader, s: Section, default: object, name: str, low: int = 1) -> int:
    """An integer key, or the default dataclass's value for it."""
    fallback: int = getattr(default, name)
    return or_default(reader.integer(s, name, low=low), fallback)


def _seconds(
    reader: Reader, s: Section, default: object, name: str, allow_zero: bool = False
) -> float:
    """A number of seconds, or the default dataclass's value for it."""
    fallback: float = getattr(default, name)
    return or_default(reader.seconds(s, name, allow_zero=allow_zero), fallback)


def _limits(reader: Reader, s: Section) -> LimitsConfig:
    default = LimitsConfig()
    largest = _count(reader, s, default, "max_message_bytes")
    return LimitsConfig(
        max_message_bytes=largest,
        max_recipients=_count(reader, s, default, "max_recipients"),
        max_connections=_count(reader, s, default, "max_connections"),
        max_connections_per_ip=_count(reader, s, default, "max_connections_per_ip"),
        per_ip_exempt=or_default(_networks(reader, s, "per_ip_exempt"), default.per_ip_exempt),
        auth_failure_delay=_seconds(reader, s, default, "auth_failure_delay", allow_zero=True),
        auth_failure_max_delay=_seconds(
            reader, s, default, "auth_failure_max_delay", allow_zero=True
        ),
        messages_per_minute=_count(reader, s, default, "messages_per_minute", low=0),
        messages_per_day=_count(reader, s, default, "messages_per_day", low=0),
        max_data_in_memory=_data_in_memory(reader, s, default, largest),
    )


def _data_in_memory(reader: Reader, s: Section, default: LimitsConfig, largest: int) -> int:
    budget = _count(reader, s, default, "max_data_in_memory")
    if budget < largest:
        # A mail of the largest size allowed would then get 452 forever, however long it waits.
        reader.fail(
            s.key("max_data_in_memory"),
            f"must be at least max_message_bytes ({largest}), got {budget}",
        )
    return budget


def _networks(reader: Reader, s: Section, name: str) -> tuple[str, ...] | None:
    """A list of networks such as 127.0.0.0/8 or ::1 (a bare address is one host)."""
    value = s.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        reader.fail(s.key(name), f"expected a list of networks like 10.0.0.0/8, got {shown(value)}")
        return None
    networks = []
    for index, item in enumerate(value):
        try:
            networks.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            why = f"expected a network like 10.0.0.0/8 or an address, got {shown(item)}"
            reader.fail(f"{s.key(name)}[{index}]", why)
    return tuple(networks)


def _upstream(reader: Reader, s: Section) -> UpstreamConfig:
    default = UpstreamConfig()
    return UpstreamConfig(
        connect_timeout=or_default(reader.seconds(s, "connect_timeout"), default.connect_timeout),
        timeout=or_default(reader.seconds(s, "timeout"), default.timeout),
    )


def _queue(reader: Reader, s: Section) -> QueueConfig:
    default = QueueConfig()
    config = QueueConfig(
        first_attempt_timeout=_seconds(reader, s, default, "first_attempt_timeout"),
        min_backoff=_seconds(reader, s, default, "min_backoff"),
        max_backoff=_seconds(reader, s, default, "max_backoff"),
        lifetime=_seconds(reader, s, default, "lifetime"),
        delay_warning=_seconds(reader, s, default, "delay_warning", allow_zero=True),
        per_user_concurrency=_count(reader, s, default, "per_user_concurrency"),
        max_connections_per_user=_count(reader, s, default, "max_connections_per_user"),
        connection_idle_timeout=_seconds(reader, s, default, "connection_idle_timeout"),
        duplicate_window=_seconds(reader, s, default, "duplicate_window", allow_zero=True),
        min_free_bytes=_count(reader, s, default, "min_free_bytes", low=0),
    )
    if config.max_backoff < config.min_backoff:
        reader.fail(s.key("max_backoff"), "must not be smaller than min_backoff")
    return config


def _logging(reader: Reader, s: Section) -> LoggingConfig:
    default = LoggingConfig()
    return LoggingConfig(
        level=or_default(reader.one_of(s, "level", LOG_LEVELS), default.level),
        format=or_default(reader.one_of(s, "format", LOG_FORMATS), default.format),
    )


def _metrics(reader: Reader, s: Section) -> MetricsConfig:
    default = MetricsConfig()
    address = _address(reader, s)
    return MetricsConfig(
        enabled=or_default(reader.boolean(s, "enabled"), default.enabled),
        address=address or default.address,
        port=or_default(reader.integer(s, "port", 0, 65535), default.port),
    )
