"""relay's config file: YAML in, a validated tree of frozen dataclasses out."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path

import yaml

from relay.config.addresses import is_ip
from relay.config.delivery import reply_mode, user_settings
from relay.config.listeners import one_socket, rendered_listener, with_entry
from relay.config.model import (
    DEFAULT_KEY_FILE,
    DEFAULT_STATE_DIR,
    LOG_FORMATS,
    LOG_LEVELS,
    USER_LABELS,
    LimitsConfig,
    ListenerConfig,
    LoggingConfig,
    MetricsConfig,
    QueueConfig,
    RelayConfig,
    UpstreamConfig,
)
from relay.config.notify import notify_config
from relay.config.oauth import render_oauth
from relay.config.providers import PROVIDER_KEYS, provider_configs
from relay.config.reader import (
    FILE_PROBLEM,
    Reader,
    Section,
    duplicate_keys,
    field_keys,
    or_default,
    plain,
    shown,
    syntax_problem,
)
from relay.config.web import web_config
from relay.errors import ConfigError
from relay.model import STREAM_THRESHOLD

DEFAULT_CONFIG_PATH = Path("/etc/relay/config.yaml")


# The file's keys are the field names, so render_config and parse_config cannot drift apart.
_TOP_KEYS = field_keys(RelayConfig, "source")


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
        limits=_limits(reader, reader.child(top, "limits", field_keys(LimitsConfig))),
        upstream=_upstream(reader, reader.child(top, "upstream", field_keys(UpstreamConfig))),
        queue=_queue(reader, reader.child(top, "queue", field_keys(QueueConfig))),
        logging=_logging(reader, reader.child(top, "logging", field_keys(LoggingConfig))),
        metrics=_metrics(reader, reader.child(top, "metrics", field_keys(MetricsConfig))),
        web=web_config(reader, top),
        notify=notify_config(reader, top),
        enable_after_check=or_default(reader.boolean(top, "enable_after_check"), False),
        providers=provider_configs(reader, top),
        users=user_settings(reader, top),
    )
    if reader.problems:
        raise ConfigError(source, reader.problems)
    return config


def render_config(config: RelayConfig) -> str:
    """The fully resolved config as YAML that parse_config reads back to an equal config."""
    document = {key: plain(getattr(config, key)) for key in _TOP_KEYS if key != "providers"}
    document["listen"] = [rendered_listener(listener) for listener in config.listen]
    document["providers"] = {
        name: {
            key: render_oauth(provider.oauth2) if key == "oauth2" else plain(getattr(provider, key))
            for key in PROVIDER_KEYS
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
    listeners = tuple(_listener(reader, item, f"listen[{i}]") for i, item in enumerate(value))
    one_socket(reader, listeners)
    return listeners


def _listener(reader: Reader, value: object, path: str) -> ListenerConfig:
    s = reader.section(value, path, field_keys(ListenerConfig))
    default = ListenerConfig()
    address = _address(reader, s)
    listener = ListenerConfig(
        address=address or default.address,
        port=or_default(reader.integer(s, "port", 0, 65535), default.port),
        tls_cert=reader.readable_file(s, "tls_cert"),
        tls_key=reader.readable_file(s, "tls_key"),
        reply=reply_mode(reader, s) or default.reply,
    )
    listener = with_entry(reader, s, listener)
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
    largest = reader.integer(s, "max_message_bytes", low=1)
    return LimitsConfig(
        max_message_bytes=largest,
        max_recipients=_count(reader, s, default, "max_recipients"),
        max_connections=_count(reader, s, default, "max_connections"),
        max_connections_per_ip=_count(reader, s, default, "max_connections_per_ip"),
        per_ip_exempt=or_default(reader.networks(s, "per_ip_exempt"), default.per_ip_exempt),
        auth_failure_delay=_seconds(reader, s, default, "auth_failure_delay", allow_zero=True),
        auth_failure_max_delay=_seconds(
            reader, s, default, "auth_failure_max_delay", allow_zero=True
        ),
        max_concurrent_auth=_count(reader, s, default, "max_concurrent_auth"),
        unauthenticated_timeout=_seconds(reader, s, default, "unauthenticated_timeout"),
        unauthenticated_share=_share(reader, s, default, "unauthenticated_share"),
        messages_per_minute=_count(reader, s, default, "messages_per_minute", low=0),
        messages_per_day=_count(reader, s, default, "messages_per_day", low=0),
        max_data_in_memory=_data_in_memory(reader, s, default, largest),
    )


def _share(reader: Reader, s: Section, default: object, name: str) -> float:
    """A fraction above 0 and at most 1, or the default dataclass's value for it."""
    value = s.get(name)
    fallback: float = getattr(default, name)
    if value is None:
        return fallback
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    why = f"expected a share above 0 and at most 1 (like 0.5), got {shown(value)}"
    reader.fail(s.key(name), why)
    return fallback


def _data_in_memory(reader: Reader, s: Section, default: LimitsConfig, largest: int | None) -> int:
    budget = _count(reader, s, default, "max_data_in_memory")
    if largest is not None and budget < min(largest, STREAM_THRESHOLD):
        # A mail of a size allowed would then get 452 forever, however long it waits; mail past
        # STREAM_THRESHOLD is streamed to the spool, not held.
        reader.fail(
            s.key("max_data_in_memory"),
            f"must be at least max_message_bytes ({largest}) or {STREAM_THRESHOLD} (above which "
            f"mail is streamed to the spool), got {budget}",
        )
    return budget


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
    metrics = MetricsConfig(
        enabled=or_default(reader.boolean(s, "enabled"), default.enabled),
        address=address or default.address,
        port=or_default(reader.integer(s, "port", 0, 65535), default.port),
        token_file=reader.readable_file(s, "token_file"),
        user_labels=or_default(reader.one_of(s, "user_labels", USER_LABELS), default.user_labels),
    )
    try:
        metrics.token()  # read now so that `relay config check` says what is wrong with it
    except ValueError as error:
        reader.fail(s.key("token_file"), str(error))
    return metrics
