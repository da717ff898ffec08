"""Who relay logs in upstream as, how long it waits, what the provider said per recipient."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from relay.model import Secret
from relay.providers.presets import Endpoint
from relay.reply import Reply


@dataclass(frozen=True, slots=True)
class UpstreamAccount:
    """Where and as whom to log in upstream."""

    endpoint: Endpoint
    username: str
    secret: Secret = field(repr=False)
    ca_file: Path | None = None
    bearer: bool = False  # secret is an OAuth2 access token: log in with XOAUTH2 or OAUTHBEARER


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The provider's verdict on each recipient of one message."""

    reply: Reply | None  # to DATA; None when no recipient was accepted, so no DATA was sent
    delivered: dict[str, Reply] = field(default_factory=dict)
    deferred: dict[str, Reply] = field(default_factory=dict)
    failed: dict[str, Reply] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """How long to wait for the provider."""

    connect: float = 30.0
    command: float = 60.0
