"""The systemd notification protocol (sd_notify), spoken directly over $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger("relay.notify")  # the name shows in log lines: kept from 0.1


class SystemdNotifier:
    """Tells systemd about readiness, status, reloads, stops and liveness; a no-op outside it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog = _watchdog_seconds(environ)
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when systemd gave a notification socket."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """The service is up (READY=1), optionally with a status line."""
        self._send("READY=1", *_status_field(status))

    def status(self, text: str) -> None:
        """A free-form status line for `systemctl status`."""
        self._send(*_status_field(text))

    def stopping(self) -> None:
        """The service has begun to shut down."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """The service has begun to reload its config; send ready() again when done."""
        # systemd >= 253 (Type=notify-reload) matches RELOADING=1 to the reload it asked for by
        # this CLOCK_MONOTONIC timestamp; older versions ignore the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        """The service is alive (WATCHDOG=1); send every watchdog_interval() / 2 seconds."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout for this process in seconds, or None when there is none."""
        return self._watchdog

    def _send(self, *fields: str) -> None:
        if self._address is None or not fields:
            return
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never stall the event loop on a full socket buffer: a lost status is harmless.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as error:
            self._report(error)

    def _report(self, error: OSError) -> None:
        # systemd being gone or the socket full is not worth a line per heartbeat.
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(
            level, "notify.send_failed socket=%r error=%s", _shown(self._address), error.strerror
        )


def _socket_address(value: str) -> str | bytes | None:
    """The AF_UNIX address in $NOTIFY_SOCKET: a path, or '@name' in the abstract namespace."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        # Other forms (vsock:CID:PORT for VMs) are not spoken here; relay then just runs.
        logger.warning("notify.unsupported_socket socket=%r", value)
    return None


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds, when WATCHDOG_PID (if set) names this very process."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    try:
        # sd_watchdog_enabled(3): the variables may be inherited from a parent; PID says whose.
        if pid and int(pid) != os.getpid():
            return None
        interval = int(usec)
    except ValueError:
        logger.warning("notify.bad_watchdog usec=%r pid=%r", usec, pid)
        return None
    return interval / 1_000_000 if interval > 0 else None


def _status_field(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # Fields are newline-separated: a newline in the text would forge another field.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _shown(address: str | bytes | None) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode("utf-8", "replace")
    return str(address)
