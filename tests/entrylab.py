"""A relay with the sendmail socket and no-AUTH listeners, in front of a recording upstream."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml

from relay.cli.command import main
from relay.cli.sendmail import run_sendmail
from relay.daemon import Daemon
from tests.harness import RelaySetup, running_daemon
from tests.upstream import Upstream, recording_upstream

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_PASSWORD = "upstream-Pa55"  # the one login tests/upstream.py takes
SECRET = "local-secret-for-entry-tests-0123456789"
# alice and bob both log in upstream as alice@example.org (the recording upstream takes one
# login); which relay user sent a mail shows in its envelope sender and relay's log.
USERS = {"alice": "alice@example.org", "bob": "bob@example.org"}


def relay_cli(*args: str) -> str:
    """`relay ARGS` in this process (no interpreter start-up); what it printed."""
    umask = os.umask(0o077)  # main sets 0077 for relay's files; the test process keeps its own
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            status = main(list(args))
    finally:
        os.umask(umask)
    assert status == 0, out.getvalue()
    return out.getvalue()


@contextmanager
def open_directory(prefix: str = "relay-entry-") -> Iterator[Path]:
    """A short directory that every local user may enter (a socket path has 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_template(root: Path, provider: dict[str, Any]) -> Path:
    """A config, state dir and key with USERS in it, made once and copied by each test."""
    template = root / "template"
    write_relay_config(template, provider, listen=[{"address": "127.0.0.1", "port": 0}])
    (template / "secret").write_text(SECRET + "\n")
    (template / "upstream").write_text(UPSTREAM_PASSWORD + "\n")
    config = str(template / "config.yaml")
    relay_cli("--config", config, "init")
    for login, address in USERS.items():
        relay_cli(
            *("--config", config, "user", "add", login, "--provider", "lab", "--email", address),
            *("--upstream-user", USERS["alice"], "--password-file", str(template / "upstream")),
            *("--local-password-file", str(template / "secret")),
        )
    return template


def write_relay_config(root: Path, provider: dict[str, Any], **settings: Any) -> Path:
    """config.yaml for provider `lab` with the given settings; its path."""
    root.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "state_dir": "state",
        "key_file": "relay.key",
        "hostname": "relay.test",
        "providers": {"lab": provider},
        **settings,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def provider_for(upstream: Upstream | None) -> dict[str, Any]:
    """The provider entry for the recording upstream (any endpoint before it runs)."""
    if upstream is None:
        return {"smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"}}
    return {
        "smtp": {"host": upstream.host, "port": upstream.port, "tls": upstream.tls},
        "ca_file": str(upstream.ca_file),
    }


@dataclass
class Lab:
    """The running relay, its upstream and where its config and socket are."""

    setup: RelaySetup
    upstream: Upstream
    daemon: Daemon | None
    socket: Path
    listeners: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        """The config file."""
        return self.setup.config_path

    def port(self, index: int) -> int:
        """The real port of the index-th TCP listener."""
        assert self.daemon is not None
        return self.daemon.addresses[index][1]

    async def sendmail(self, arguments: Sequence[str], message: bytes) -> tuple[int, str]:
        """`relay sendmail ARGUMENTS` with message on stdin, in a thread: (status, stderr)."""
        return await sendmail_in_thread(self.config_path, arguments, message)


async def sendmail_in_thread(
    config: Path, arguments: Sequence[str], message: bytes
) -> tuple[int, str]:
    """run_sendmail off the event loop (the daemon serving it runs on the loop)."""
    out, err = io.StringIO(), io.StringIO()
    status = await asyncio.to_thread(
        run_sendmail, list(arguments), str(config), io.BytesIO(message), out, err, {}
    )
    return status, err.getvalue()


@asynccontextmanager
async def lab(
    template: Path,
    root: Path,
    listeners: list[dict[str, Any]],
    *,
    start: bool = True,
    **settings: Any,
) -> AsyncIterator[Lab]:
    """A copy of the template's state, a recording upstream, and (if start) the daemon."""
    shutil.copytree(template, root)
    socket = root / "relay.sock"
    listen = [
        {**entry, "socket": str(socket)} if "unix_users" in entry else entry for entry in listeners
    ]
    async with recording_upstream(trustme.CA(), root) as upstream:
        write_relay_config(root, provider_for(upstream), listen=listen, **settings)
        setup = RelaySetup(root)
        if not start:
            yield Lab(setup, upstream, None, socket, listen)
            return
        async with running_daemon(setup) as daemon:
            yield Lab(setup, upstream, daemon, socket, listen)
