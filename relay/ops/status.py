"""The running daemon's status file, which relay status reads from the state directory."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

STATUS_FILE = "daemon.json"


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What a running daemon tells `relay status` through the state directory."""

    pid: int
    started: float
    listening: list[tuple[str, int]]
    metrics_port: int | None


def write_status(state_dir: Path, status: DaemonStatus) -> None:
    """Publish the running daemon's status (0600, replaced atomically)."""
    path = state_dir / STATUS_FILE
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {
                "pid": status.pid,
                "started": status.started,
                "listening": status.listening,
                "metrics_port": status.metrics_port,
            },
            handle,
        )
    os.replace(temporary, path)


def read_status(state_dir: Path) -> DaemonStatus | None:
    """The status of a daemon that is running now, or None."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
        pid = int(data["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DaemonStatus(
        pid=pid,
        started=float(data["started"]),
        listening=[(str(a), int(p)) for a, p in data["listening"]],
        metrics_port=data.get("metrics_port"),
    )


def remove_status(state_dir: Path) -> None:
    """Withdraw the status file on the way out."""
    (state_dir / STATUS_FILE).unlink(missing_ok=True)


def uptime(started: float) -> float:
    """Seconds since the daemon started."""
    return time.time() - started
