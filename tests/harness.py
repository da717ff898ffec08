"""Setting up relay for a test: config file, `relay init`, users, a running daemon."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from relay.config.load import load_config
from relay.daemon import Daemon, open_services

LISTENING = re.compile(r"relay\.listening address=(\S+) port=(\d+)")


@dataclass(frozen=True)
class CliResult:
    """What one `relay` command printed and returned."""

    status: int
    out: str
    err: str


@dataclass(frozen=True)
class RelaySetup:
    """A relay config and state directory under a test's temporary directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        """The config file."""
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:
        """The state directory (database)."""
        return self.root / "state"

    @property
    def key_file(self) -> Path:
        """The master key file."""
        return self.root / "relay.key"

    def cli(self, *args: str, stdin: str | None = None) -> CliResult:
        """Run `python -m relay --config ... ARGS` as the operator would."""
        done = subprocess.run(
            [sys.executable, "-m", "relay", "--config", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    def add_user(self, login: str, provider: str, email: str, password: str, *extra: str) -> str:
        """Add a user with an upstream password on stdin; return the printed local secret."""
        result = self.cli(
            "user",
            "add",
            login,
            "--provider",
            provider,
            "--email",
            email,
            "--password-stdin",
            *extra,
            stdin=password + "\n",
        )
        assert result.status == 0, result.err
        return result.out.strip()


def write_config(root: Path, providers: dict[str, Any], **settings: Any) -> RelaySetup:
    """Write config.yaml for a relay on 127.0.0.1 port 0, run `relay init`, return the setup."""
    setup = RelaySetup(root)
    root.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        # Most tests check what the provider's verdict does to the app's reply; spool mode,
        # the default, has tests of its own (tests/test_reply_modes.py).
        "listen": [{"address": "127.0.0.1", "port": 0, "reply": "verdict"}],
        "state_dir": "state",
        "key_file": "relay.key",
        "hostname": "relay.test",
        "providers": providers,
        **settings,
    }
    setup.config_path.write_text(yaml.safe_dump(document))
    result = setup.cli("init")
    assert result.status == 0, result.err
    return setup


@dataclass
class RelayProcess:
    """A `relay serve` child process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything the daemon has logged so far."""
        return self.log_path.read_text()


@contextmanager
def relay_process(
    setup: RelaySetup, timeout: float = 15.0, env: dict[str, str] | None = None
) -> Iterator[RelayProcess]:
    """Run `relay serve` in the background; wait for its listening line; stop it afterwards."""
    log_path = setup.root / "relay.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "--config", str(setup.config_path), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        running = RelayProcess(process, _wait_for_port(process, log_path, timeout), log_path)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text())
        if match:
            return int(match.group(2))
        if process.poll() is not None:
            raise AssertionError(
                f"relay serve exited {process.returncode}:\n{log_path.read_text()}"
            )
        time.sleep(0.05)
    raise AssertionError(f"relay serve did not start listening:\n{log_path.read_text()}")


@asynccontextmanager
async def running_daemon(setup: RelaySetup) -> AsyncIterator[Daemon]:
    """relay's daemon in this event loop on an OS-chosen port; always stopped afterwards."""
    daemon = Daemon(open_services(load_config(setup.config_path), {}))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.drain(1.0)
        await daemon.stop()
