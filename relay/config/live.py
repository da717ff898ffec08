"""The config in force in a running daemon: one holder every part reads, so a reload is one step."""

from __future__ import annotations

from relay.config.model import RelayConfig


class LiveConfig:
    """Holds the config in force; `relay serve` replaces `current` when SIGHUP reloads it."""

    __slots__ = ("current",)

    def __init__(self, config: RelayConfig) -> None:
        self.current = config
