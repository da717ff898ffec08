"""sd_notify: the datagrams systemd receives, and silence outside systemd."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ops.notify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(2.0)
        yield sock, str(path)
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, decoded."""
    datagrams = [sock.recv(4096).decode()]
    sock.setblocking(False)
    try:
        while True:
            datagrams.append(sock.recv(4096).decode())
    except BlockingIOError:
        return datagrams
    finally:
        sock.settimeout(2.0)


def test_each_call_sends_exactly_its_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("serving on 127.0.0.1:2525")
    notifier.status("draining 2 sessions")
    notifier.watchdog()
    notifier.stopping()
    notifier.ready()
    assert received(sock) == [
        "READY=1\nSTATUS=serving on 127.0.0.1:2525",
        "STATUS=draining 2 sessions",
        "WATCHDOG=1",
        "STOPPING=1",
        "READY=1",
    ]


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SystemdNotifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (datagram,) = received(sock)
    first, second = datagram.split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert before <= int(second.removeprefix("MONOTONIC_USEC=")) <= after


def test_newline_in_status_cannot_forge_another_field(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    SystemdNotifier({"NOTIFY_SOCKET": path}).status("bad reply\nREADY=1")
    assert received(sock) == ["STATUS=bad reply READY=1"]


def test_abstract_namespace_socket_is_reached_by_its_at_name() -> None:
    name = f"relay-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"}).ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_every_call_is_a_silent_no_op(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready("up")
    notifier.status("x")
    notifier.reloading()
    notifier.watchdog()
    notifier.stopping()
    assert notifier.watchdog_interval() is None
    assert caplog.records == []


def test_unreachable_socket_never_raises_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.notify")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready("up")
    notifier.watchdog()
    notifier.watchdog()
    levels = [r.levelno for r in caplog.records if r.getMessage().startswith("notify.send_failed")]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_unsupported_socket_kind_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    notifier.ready()
    assert [r.getMessage() for r in caplog.records] == [
        "notify.unsupported_socket socket='vsock:2:1234'"
    ]


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval_is_for_this_process_only(
    environ: dict[str, str], interval: float | None
) -> None:
    assert SystemdNotifier(environ).watchdog_interval() == interval
