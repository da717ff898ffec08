"""What the daemon needs of its host: sockets systemd passes, private state, file limits."""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from relay.config.model import ListenerConfig
from relay.errors import ConfigError, StoreError

logger = logging.getLogger("relay.daemon")  # the name shows in log lines: kept from 0.1

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed socket is file descriptor 3


def inherited_sockets(environ: Mapping[str, str]) -> list[socket.socket]:
    """Listening sockets passed by systemd socket activation (LISTEN_FDS), if meant for us."""
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
        pid = int(environ.get("LISTEN_PID", "0"))
    except ValueError:
        return []
    if count <= 0 or pid != os.getpid():
        return []
    return [
        socket.socket(fileno=fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
    ]


def listener_for(sock: socket.socket, listeners: tuple[ListenerConfig, ...]) -> ListenerConfig:
    """The configured listener an inherited socket stands for (its TLS and loopback rules)."""
    if sock.family == socket.AF_UNIX:
        return _socket_listener_for(str(sock.getsockname()), listeners)
    address, port = sock.getsockname()[:2]
    for listener in listeners:
        if listener.port in (port, 0) and listener.address == address:
            return listener
    probe = ListenerConfig(address=address, port=port)
    if not probe.is_loopback:
        raise ConfigError(
            "socket activation",
            [
                (
                    "listen",
                    f"systemd passed {address}:{port}, which no listener with tls_cert covers",
                )
            ],
        )
    return probe


def _socket_listener_for(path: str, listeners: tuple[ListenerConfig, ...]) -> ListenerConfig:
    for listener in listeners:
        if listener.socket is not None and str(listener.socket) == path:
            return listener
    # Without its listener there is no unix_users map: every caller would be refused.
    why = f"systemd passed the Unix socket {path}, which no listener's socket names"
    raise ConfigError("socket activation", [("listen", why)])


def check_private(*paths: Path) -> None:
    """Refuse to start when the state that holds secrets is open to other users."""
    for path in paths:
        if not path.exists():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            wanted = "700" if path.is_dir() else "600"
            raise StoreError(
                f"{path} is accessible to other users (mode {mode:04o}); "
                f"it holds sealed secrets and mail: chmod {wanted} {path}"
            )


def ensure_open_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards `wanted` (each client may also hold an upstream)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as error:
            logger.warning("relay.nofile_unchanged soft=%d wanted=%d error=%s", soft, wanted, error)
    if soft < wanted:
        logger.warning(
            "relay.nofile_low limit=%d wanted=%d (lower limits.max_connections or raise "
            "LimitNOFILE=): beyond it new connections fail",
            soft,
            wanted,
        )
    return soft


LOCK_FILE = "relay.lock"


def lock_state_dir(state_dir: Path) -> int:
    """Hold the state dir for this process's life; refuse if another `relay serve` holds it.

    Two daemons on one spool would both work its queue. The lock is flock(2) on a file that
    names the holder's pid: the kernel drops it when the process dies, even by kill -9.
    """
    if not state_dir.is_dir():
        raise StoreError(f"no state directory {state_dir} (run 'relay init' first)")
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"another relay serve (pid {holder}) is running on {state_dir}: stop it first "
            "(two daemons on one spool would both send its queue)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd  # kept open: closing it would release the lock
