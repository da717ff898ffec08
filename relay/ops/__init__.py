"""What operators see: logs, metrics, systemd notifications, the daemon's status file."""

from relay.ops.channels import Ops
from relay.ops.logs import configure_logging
from relay.ops.metrics import MetricsServer
from relay.ops.status import DaemonStatus, read_status, remove_status, uptime, write_status

__all__ = [
    "DaemonStatus",
    "MetricsServer",
    "Ops",
    "configure_logging",
    "read_status",
    "remove_status",
    "uptime",
    "write_status",
]
