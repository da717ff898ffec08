"""The running daemon's status file, which relay status reads from the state directory."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_FILE = "daemon.json"
DELIVERY_FILE = "delivery.json"  # per-user sessions and pace, refreshed every few seconds
# Written at this fixed size and rewritten in place, so the status file can still say
# "paused: disk full" when the disk is full: the blocks it needs are its own already.
STATUS_SIZE = 4096


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What a running daemon tells `relay status` through the state directory."""

    pid: int
    started: float
    listening: list[tuple[str, int]]
    metrics_port: int | None
    paused_since: float | None = None  # delivery paused: the spool cannot be written
    pause_reason: str = ""


def write_status(state_dir: Path, status: DaemonStatus) -> None:
    """Publish the running daemon's status (0600): created whole, then rewritten in place."""
    path = state_dir / STATUS_FILE
    text = json.dumps(
        {
            "pid": status.pid,
            "started": status.started,
            "listening": status.listening,
            "metrics_port": status.metrics_port,
            "paused_since": status.paused_since,
            "pause_reason": status.pause_reason[: STATUS_SIZE // 2],
        }
    ).encode()
    page = text.ljust(STATUS_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(page)
        os.replace(temporary, path)
        return
    try:
        os.pwrite(fd, page, 0)
    finally:
        os.close(fd)


def read_status(state_dir: Path) -> DaemonStatus | None:
    """The status of a daemon that is running now, or None."""
    for _ in range(3):  # an in-place rewrite may be caught half done: read again
        try:
            data = json.loads((state_dir / STATUS_FILE).read_bytes())
            pid = int(data["pid"])
            os.kill(pid, 0)
            return DaemonStatus(
                pid=pid,
                started=float(data["started"]),
                listening=[(str(a), int(p)) for a, p in data["listening"]],
                metrics_port=data.get("metrics_port"),
                paused_since=data.get("paused_since"),
                pause_reason=str(data.get("pause_reason") or ""),
            )
        except ValueError:
            time.sleep(0.01)
        except (OSError, KeyError, TypeError):
            return None
    return None


def write_delivery(state_dir: Path, users: list[dict[str, object]]) -> None:
    """Publish each user's sessions, pace and waiting mail (0600, replaced atomically)."""
    path = state_dir / DELIVERY_FILE
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"at": time.time(), "users": users}, handle)
    os.replace(temporary, path)


def read_delivery(state_dir: Path) -> list[dict[str, Any]]:
    """What the running daemon last published of its users' delivery; [] if nothing."""
    try:
        document = json.loads((state_dir / DELIVERY_FILE).read_text())
        users: list[dict[str, Any]] = document["users"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return users


def remove_status(state_dir: Path) -> None:
    """Withdraw the status file on the way out."""
    (state_dir / STATUS_FILE).unlink(missing_ok=True)
    (state_dir / DELIVERY_FILE).unlink(missing_ok=True)


def uptime(started: float) -> float:
    """Seconds since the daemon started."""
    return time.time() - started
