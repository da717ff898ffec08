"""The config file: its model, loading and rendering, the typed reader, each section's parser."""

from relay.config.load import config_path_from, load_config, render_config
from relay.config.model import (
    LOG_FORMATS,
    LimitsConfig,
    ListenerConfig,
    OAuthSettings,
    ProviderConfig,
    QueueConfig,
    RelayConfig,
)

__all__ = [
    "LOG_FORMATS",
    "LimitsConfig",
    "ListenerConfig",
    "OAuthSettings",
    "ProviderConfig",
    "QueueConfig",
    "RelayConfig",
    "config_path_from",
    "load_config",
    "render_config",
]
