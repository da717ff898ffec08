"""The daemon's lifecycle outside the mail flow: socket activation and the status file."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.harness import relay_process, write_config
from tests.test_server import provider_for
from tests.upstream import recording_upstream

LAB = {"smtp": {"host": "mail.example.org", "port": 587, "tls": "starttls"}}
# systemd's side of sd_listen_fds(3): the socket at fd 3, LISTEN_PID naming the service itself.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.executable, [sys.executable, '-m', 'relay', *sys.argv[2:]])"
)


def test_socket_activation_serves_the_socket_systemd_passed(tmp_path: Path) -> None:
    setup = write_config(tmp_path, {"lab": LAB})
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        log = tmp_path / "relay.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    ACTIVATE,
                    str(listening.fileno()),
                    "--config",
                    str(setup.config_path),
                    "serve",
                ],
                pass_fds=(listening.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    try:
        deadline = time.monotonic() + 15
        while f"port={port}" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(200).startswith(b"220 ")
            client.sendall(b"EHLO app.example\r\n")
            time.sleep(0.2)
            assert b"AUTH" in client.recv(1000)
        assert (setup.state_dir / "daemon.json").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert not (setup.state_dir / "daemon.json").exists()
    assert os.stat(setup.state_dir).st_mode & 0o077 == 0


def test_serve_refuses_a_state_dir_other_users_can_read(tmp_path: Path) -> None:
    setup = write_config(tmp_path, {"lab": LAB})
    os.chmod(setup.state_dir, 0o755)  # noqa: S103  the misconfiguration under test
    result = setup.cli("serve")
    assert result.status == 1
    assert f"{setup.state_dir} is accessible to other users (mode 0755)" in result.err
    assert f"chmod 700 {setup.state_dir}" in result.err


def test_the_systemd_unit_rates_well_in_systemd_analyze_security() -> None:
    if shutil.which("systemd-analyze") is None:
        message = "systemd-analyze missing: apt-get install systemd"
        if os.environ.get("RELAY_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    unit = Path(__file__).parent.parent / "systemd" / "relay.service"
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    verdict = next(line for line in done.stdout.splitlines() if "Overall exposure level" in line)
    print(verdict)
    score = float(verdict.split(":")[1].split()[0])
    assert score <= 1.5, done.stdout


def test_a_second_relay_serve_on_the_same_state_dir_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    setup = write_config(tmp_path / "relay", {})
    with relay_process(setup) as first:
        second = subprocess.run(
            [sys.executable, "-m", "relay", "--config", str(setup.config_path), "serve"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert first.process.poll() is None  # the first one keeps running
    assert second.returncode == 1
    assert f"another relay serve (pid {first.process.pid}) is running" in second.stderr


async def test_sigterm_with_an_attempt_stalled_at_the_end_of_data_exits_within_shutdown_grace(
    tmp_path: Path,
) -> None:
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        stalled = asyncio.Event()

        async def never_answer(*_: object) -> str:
            stalled.set()
            await asyncio.Event().wait()
            return "250 never"

        upstream.handler.handle_DATA = never_answer  # type: ignore[method-assign,assignment]  # a stall
        setup = write_config(
            tmp_path / "relay",
            {"lab": provider_for(upstream)},
            shutdown_grace=2,
            queue={"first_attempt_timeout": 0.5},
        )
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        with relay_process(setup) as relay:
            reply = await asyncio.to_thread(send_as_app, relay.port, secret)
            await asyncio.wait_for(stalled.wait(), timeout=10)
            relay.process.send_signal(signal.SIGTERM)
            # The attempt is cut at the end of the grace time: no QUIT is waited for after it.
            status = await asyncio.to_thread(relay.process.wait, 2 + 2.5)
    assert reply.startswith(b"2.0.0 queued as ")
    assert status == 0


def send_as_app(port: int, secret: str) -> bytes:
    """One mail through relay with smtplib; relay's reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("alice", secret)
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        _, reply = client.data(b"Subject: stall\r\n\r\nbody\r\n")
    return reply
