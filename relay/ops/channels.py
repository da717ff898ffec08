"""What the daemon reports to operators: systemd notifications, metrics, redaction, status file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.model import Secret
from relay.ops.logs import RedactingFilter
from relay.ops.metrics import Metrics
from relay.ops.notify import SystemdNotifier


@dataclass
class Ops:
    """The operator-facing side channels, shared by listener and queue runner."""

    notifier: SystemdNotifier
    metrics: Metrics = field(default_factory=Metrics)
    redactor: RedactingFilter | None = None

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
