"""The listeners' sockets (TCP, or the Unix socket `relay sendmail` uses) and who serves each."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from relay.config.model import ListenerConfig
from relay.errors import SocketInUse
from relay.listener.entry import EntrySMTP
from relay.listener.protocol import RelaySMTP

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o666  # anyone may connect: the peer's uid, not the file mode, decides who sends


def session_class(listener: ListenerConfig) -> type[RelaySMTP]:
    """The protocol class for a listener: EntrySMTP where some callers need no AUTH."""
    return EntrySMTP if listener.socket is not None or listener.without_auth else RelaySMTP


async def open_server(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    listener: ListenerConfig,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Serve one listener: its address and port, its Unix socket, or a socket systemd passed."""
    if listener.socket is None:
        if sock is not None:
            return await loop.create_server(factory, sock=sock)
        return await loop.create_server(factory, listener.address, listener.port)
    if sock is None:
        sock = bind_unix(listener.socket)
    server = await loop.create_unix_server(factory, sock=sock)
    logger.info("relay.listening socket=%s", listener.socket)
    if few_uids_mapped(Path("/proc/self/uid_map")):
        # In such a namespace the kernel reports every other user's uid as the overflow uid
        # (65534): each caller would show as nobody, and be refused.
        logger.warning(
            "relay.callers_unseen socket=%s reason=this process sees only a few uids "
            "(systemd PrivateUsers=yes?): set PrivateUsers=no for the sendmail socket",
            listener.socket,
        )
    return server


def few_uids_mapped(uid_map: Path) -> bool:
    """Whether this process runs in a user namespace that maps only a handful of uids."""
    try:
        ranges = [line.split() for line in uid_map.read_text().splitlines()]
        return sum(int(fields[2]) for fields in ranges if len(fields) == 3) < 1000
    except (OSError, ValueError):
        return False


def bind_unix(path: Path) -> socket.socket:
    """A Unix socket bound at path, open to every local user; refuses one a daemon serves."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
        # Callers must reach the socket; the daemon's umask (0077) would shut them out.
        path.parent.chmod(0o755)
    if _served(path):
        raise SocketInUse(f"another process serves the socket {path}: stop it, or set another path")
    # Bound under a temporary name, opened to callers, then renamed into place: a caller never
    # finds the socket before its mode is set, and a stale one is replaced in one step.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        temporary.chmod(SOCKET_MODE)
        temporary.rename(path)
    except OSError:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise
    return sock


def _served(path: Path) -> bool:
    """Whether something accepts connections on the socket at path (a stale one does not)."""
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def tcp_addresses(servers: Iterable[asyncio.Server]) -> list[tuple[str, int]]:
    """The (address, port) pairs the servers' TCP sockets are bound to (Unix sockets left out)."""
    return [
        s.getsockname()[:2]
        for server in servers
        for s in server.sockets
        if s.family != socket.AF_UNIX
    ]
