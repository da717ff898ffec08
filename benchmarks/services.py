"""Starting and stopping what a benchmark measures: the sink, relay, and the load generator."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trustme
import yaml

from benchmarks.loadgen import LoadSpec

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE = 20.0
STOP_DEADLINE = 30.0
SINK_LOGIN = "bench@example.org"
RELAY_LOGIN = "bench"


class BenchmarkError(RuntimeError):
    """Something the benchmark needs did not start or answer."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA made for the run, and the sink's certificate for localhost and 127.0.0.1."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path) -> TlsFiles:
    """Write a fresh CA and a sink certificate; readable by Postfix's unprivileged processes."""
    directory.mkdir(mode=0o755)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = TlsFiles(directory / "ca.pem", directory / "sink.pem", directory / "sink.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    files.ca_file.chmod(0o644)
    files.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key_file))
    files.key_file.chmod(0o600)
    return files


Stream = int | IO[Any] | None


def python_child(
    argv: list[str],
    *,
    stdin: Stream,
    stdout: Stream,
    stderr: Stream,
    cwd: Path = REPO,
    **env: str,
) -> subprocess.Popen[bytes]:
    """Start `python ARGV` in cwd (the repository root: `-m benchmarks...` and `-m relay` work)."""
    # `python -m` puts the working directory first on sys.path, so cwd also picks which relay
    # package runs: the working tree's, or a snapshot of a commit (see snapshot_relay).
    return subprocess.Popen(  # noqa: S603  (our own interpreter and a fixed argv, no shell)
        [sys.executable, *argv],
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


def stop_process(process: subprocess.Popen[bytes], deadline: float = STOP_DEADLINE) -> None:
    """SIGTERM a child we started, then SIGKILL it if it lingers; always reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


class SinkProcess:
    """The running sink and its control pipe."""

    def __init__(self, process: subprocess.Popen[bytes], password: str) -> None:
        self.process = process
        self.password = password
        hello = self._read()
        self.port = int(hello["port"])  # STARTTLS before AUTH, as providers want
        self.plain_port = int(hello["plain_port"])  # AUTH in the clear: the direct-plain baseline
        self.pid = process.pid

    def _read(self) -> dict[str, Any]:
        if self.process.stdout is None:
            raise BenchmarkError("sink has no stdout pipe")
        line = self.process.stdout.readline()
        if not line:
            raise BenchmarkError(f"sink exited ({self.process.poll()}); see its log")
        document: dict[str, Any] = json.loads(line)
        return document

    def _ask(self, line: str) -> dict[str, Any]:
        if self.process.stdin is None:
            raise BenchmarkError("sink has no stdin pipe")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        return self._read()

    def stats(self, start: float | None = None, end: float | None = None) -> dict[str, int]:
        """Totals since the last reset, and arrivals within [start, end] if given."""
        window = f" {start!r} {end!r}" if start is not None and end is not None else ""
        return {k: int(v) for k, v in self._ask("stats" + window).items()}

    def reset(self) -> None:
        """Forget what was counted."""
        self._ask("reset")

    def set_delay(self, data_ms: float, command_ms: float = 0.0) -> None:
        """Answer the end of DATA (and MAIL, RCPT) after this long, as a distant provider."""
        self._ask(f"delay {data_ms} {command_ms}")

    def wait_for(self, mails: int, timeout: float) -> tuple[dict[str, int], float]:
        """Wait until mails arrived (or timeout); return the stats and the seconds waited."""
        started = time.monotonic()
        while True:
            stats = self.stats()
            waited = time.monotonic() - started
            if stats["mails"] >= mails or waited > timeout:
                return stats, waited
            time.sleep(0.05)


@contextmanager
def running_sink(tls: TlsFiles, log_path: Path) -> Iterator[SinkProcess]:
    """Start the sink process; quit and reap it afterwards."""
    password = secrets.token_urlsafe(18)
    argv = ["-m", "benchmarks.sink", "--cert", str(tls.cert_file), "--key", str(tls.key_file)]
    with log_path.open("wb") as log:
        process = python_child(
            [*argv, "--login", SINK_LOGIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            BENCH_SINK_PASSWORD=password,
        )
    try:
        yield SinkProcess(process, password)
    finally:
        if process.stdin is not None and process.poll() is None:
            try:
                process.stdin.write(b"quit\n")
                process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


@dataclass(frozen=True)
class RelaySetup:
    """A relay state directory and user that forward to the sink."""

    root: Path
    secret: str
    sink_port: int
    ca_file: Path
    overrides: tuple[tuple[str, Any], ...] = ()
    source: Path = REPO  # the directory holding the relay package that runs

    @property
    def config_path(self) -> Path:
        """The config file."""
        return self.root / "config.yaml"


def write_relay_config(
    root: Path,
    sink_port: int,
    ca_file: Path,
    *,
    port: int = 0,
    level: str | None = None,
    overrides: tuple[tuple[str, Any], ...] = (),
) -> Path:
    """Write relay's config.yaml: a loopback listener, the sink as the one provider."""
    document: dict[str, Any] = {
        "listen": [{"address": "127.0.0.1", "port": port}],
        "state_dir": "state",
        "key_file": "relay.key",
        "hostname": "relay.bench.test",
        "shutdown_grace": 5,
        "providers": {
            "sink": {
                "smtp": {"host": "127.0.0.1", "port": sink_port, "tls": "starttls"},
                "ca_file": str(ca_file),
            }
        },
    }
    if level is not None:  # None: relay's default level, as a new user runs it
        document["logging"] = {"level": level}
    for dotted, value in overrides:
        *parents, last = dotted.split(".")
        section: Any = document
        for name in parents:  # a number steps into a list: listen.0.reply
            section = section[int(name)] if name.isdigit() else section.setdefault(name, {})
        section[int(last) if last.isdigit() else last] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def relay_cli(config: Path, *args: str, source: Path = REPO, stdin: str | None = None) -> str:
    """Run `python -m relay --config C ARGS` and return its stdout; raise on failure."""
    done = subprocess.run(  # noqa: S603  (our own interpreter and a fixed argv, no shell)
        [sys.executable, "-m", "relay", "--config", str(config), *args],
        cwd=source,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"relay {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def prepare_relay(
    root: Path,
    sink: SinkProcess,
    ca_file: Path,
    overrides: tuple[tuple[str, Any], ...] = (),
    source: Path = REPO,
) -> RelaySetup:
    """`relay init` and `relay user add` with the sink's login as the upstream account."""
    root.mkdir(mode=0o700)
    config = write_relay_config(root, sink.port, ca_file, overrides=overrides)
    relay_cli(config, "init", source=source)
    out = relay_cli(
        config,
        "user",
        "add",
        RELAY_LOGIN,
        "--provider",
        "sink",
        "--email",
        SINK_LOGIN,
        "--password-stdin",
        source=source,
        stdin=sink.password + "\n",
    )
    return RelaySetup(root, out.strip(), sink.port, ca_file, overrides, source)


def relay_resolved_config(setup: RelaySetup) -> dict[str, Any]:
    """The config as `relay config check` resolves it, defaults filled in."""
    resolved = yaml.safe_load(relay_cli(setup.config_path, "config", "check", source=setup.source))
    return resolved if isinstance(resolved, dict) else {}


@dataclass(frozen=True)
class RelayProcess:
    """A running `relay serve`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def log_problems(self) -> list[str]:
        """The WARNING and ERROR lines (and tracebacks) relay has logged so far."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [
            line for line in lines if " WARNING " in line or " ERROR " in line or "Trace" in line
        ]


@contextmanager
def running_relay(
    setup: RelaySetup, log_path: Path, level: str | None = None
) -> Iterator[RelayProcess]:
    """Start `relay serve` on a free port, wait until it accepts, and stop it afterwards."""
    # Below info level relay does not log its listening line, so port 0 cannot be used.
    port = free_port()
    write_relay_config(
        setup.root,
        setup.sink_port,
        setup.ca_file,
        port=port,
        level=level,
        overrides=setup.overrides,
    )
    with log_path.open("wb") as log:
        process = python_child(
            ["-m", "relay", "--config", str(setup.config_path), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=setup.source,
        )
    try:
        _wait_for_port(process, port, log_path)
        yield RelayProcess(process, port, log_path)
    finally:
        stop_process(process)


def free_port() -> int:
    """A loopback port the OS had free just now."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port now."""
    with closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if accepts(port):
            return
        if process.poll() is not None:
            raise BenchmarkError(f"relay serve exited {process.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    raise BenchmarkError(f"relay serve did not start listening: {log_path.read_text()}")


def snapshot_relay(revision: str, directory: Path) -> str:
    """Extract relay/ as of a git revision into directory; return the commit it resolved to."""
    # Others may be editing relay/ while a long run goes on: a snapshot keeps every run of
    # one benchmark on the same code. git archive only reads the repository.
    git = shutil.which("git")
    if git is None:
        raise BenchmarkError("--relay-rev needs git")
    commit = subprocess.run(  # noqa: S603  (read-only git query, fixed argv)
        [git, "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise BenchmarkError(f"unknown revision {revision!r}: {commit.stderr.strip()}")
    archive = subprocess.run(  # noqa: S603  (read-only git archive, fixed argv)
        [git, "archive", "--format=tar", commit.stdout.strip(), "relay"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchmarkError(f"git archive failed: {archive.stderr.decode().strip()}")
    directory.mkdir(mode=0o755)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    return commit.stdout.strip()


def run_loadgen(spec: LoadSpec) -> dict[str, Any]:
    """Run the load generator process for one workload and return its JSON result."""
    process = python_child(
        ["-m", "benchmarks.loadgen", spec.to_json()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = process.communicate(
            timeout=spec.warmup_max + spec.duration + spec.tail_timeout + 60
        )
    finally:
        stop_process(process)
    if process.returncode != 0 or not out.strip():
        raise BenchmarkError(
            f"load generator failed ({process.returncode}): {err.decode()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


class IdleConnections:
    """A load generator holding authenticated connections until released."""

    def __init__(self, spec: LoadSpec, log_path: Path) -> None:
        with log_path.open("wb") as log:
            self.process = python_child(
                ["-m", "benchmarks.loadgen", spec.to_json()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )

    def ready(self) -> dict[str, Any]:
        """Wait until every connection is open and authenticated (or failed)."""
        if self.process.stdout is None:
            raise BenchmarkError("load generator has no stdout pipe")
        line = self.process.stdout.readline()
        if not line:
            raise BenchmarkError("load generator exited before its connections were ready")
        document: dict[str, Any] = json.loads(line)
        return document

    def release(self) -> dict[str, Any]:
        """Close the connections and return the generator's final report."""
        if self.process.stdin is None:
            raise BenchmarkError("load generator has no stdin pipe")
        out, _ = self.process.communicate(b"close\n", timeout=120)
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
        return result

    def stop(self) -> None:
        """Make sure the generator is gone."""
        stop_process(self.process, deadline=5)
