"""What the daemon reports to operators: systemd notifications, metrics, redaction, status file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from relay.errors import RelayError
from relay.model import Secret
from relay.ops.logs import RedactingFilter
from relay.ops.metrics import Metrics
from relay.ops.notify import SystemdNotifier


async def nobody_told(_login: str, _error: RelayError) -> None:
    """No renewal notices (the CLI, tests): the daemon wires relay.renewal in instead."""


@dataclass
class Ops:
    """The operator-facing side channels, shared by listener and queue runner."""

    notifier: SystemdNotifier
    metrics: Metrics = field(default_factory=Metrics)
    redactor: RedactingFilter | None = None
    # Hears each failed delivery's error, to tell a user whose login stopped working.
    login_failed: Callable[[str, RelayError], Awaitable[None]] = nobody_told

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        redactor: RedactingFilter | None = None,
        *,
        metrics: bool = True,
        user_labels: str = "login",
    ) -> Ops:
        """Ops for this process: systemd if NOTIFY_SOCKET is set, a fresh metrics registry."""
        return cls(SystemdNotifier(environ), Metrics(metrics, user_labels), redactor)

    def opened_secret(self, secret: Secret) -> None:
        """Make sure a secret just opened can never reach a log line."""
        if self.redactor is not None:
            self.redactor.register(secret)
