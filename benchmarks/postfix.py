"""A private Postfix configured the way ops relay apps' mail today: a smarthost with SASL.

Apps submit to Postfix on loopback without AUTH (permit_mynetworks), Postfix queues the mail on
disk and its smtp client forwards it to the sink with STARTTLS (`smtp_tls_security_level =
verify` against the run's CA) and SASL PLAIN. Nothing is read from /etc/postfix.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from benchmarks.services import BenchmarkError, accepts, free_port, stop_process

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
START_DEADLINE = 30.0

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
alias_maps =
alias_database =
biff = no
maillog_file = {log}
maillog_file_prefixes = {log_dir}
message_size_limit = 52428800
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [localhost]:{sink_port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{sasl_passwd}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = verify
smtp_tls_CAfile = {ca_file}
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
"""

# Debian's master.cf services, without chroot (a chroot would need copies of /etc inside).
SERVICES = (
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "tlsmgr unix - - n 1000? 1 tlsmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "proxywrite unix - - n - 1 proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
)


def find_postfix() -> str | None:
    """The postfix command, looking in the sbin directories too."""
    return shutil.which("postfix", path=f"{os.environ.get('PATH', '')}:{SBIN}")


def postfix_unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if find_postfix() is None:
        return "postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix needs root (it switches to the postfix user)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix system user is missing"
    return None


@dataclass
class PostfixProcess:
    """A running private Postfix: where it listens and the process tree to measure."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    pid_file: Path
    master: int | None = None  # master's pid; its services run below it
    master_started: str = ""  # its start time, so a reused pid is never signalled

    @property
    def pid(self) -> int:
        """The master process, whose tree holds every Postfix service."""
        if self.master is None:
            raise BenchmarkError("postfix master is not running")
        return self.master


def write_config(root: Path, sink_port: int, ca_file: Path, login: str, password: str) -> int:
    """Write main.cf, master.cf and the SASL password table; return the smtpd port."""
    conf, queue, logs = root / "conf", root / "queue", root / "log"
    for directory in (conf, queue, logs):
        directory.mkdir(parents=True, mode=0o755)
    sasl_passwd = conf / "sasl_passwd"
    sasl_passwd.write_text(f"[localhost]:{sink_port} {login}:{password}\n")
    sasl_passwd.chmod(0o600)
    (conf / "main.cf").write_text(
        MAIN_CF.format(
            queue=queue,
            data=root / "data",
            log=logs / "postfix.log",
            log_dir=logs,
            sink_port=sink_port,
            sasl_passwd=sasl_passwd,
            ca_file=ca_file,
        )
    )
    port = free_port()
    smtpd = f"127.0.0.1:{port} inet n - n - - smtpd\n"
    (conf / "master.cf").write_text(smtpd + "".join(f"{line}\n" for line in SERVICES))
    # Postfix naps in 0.3 s steps at start while main.cf is younger than a second or so.
    past = time.time() - 10
    for name in ("main.cf", "master.cf"):
        os.utime(conf / name, (past, past))
    return port


@contextmanager
def running_postfix(
    root: Path, sink_port: int, ca_file: Path, login: str, password: str
) -> Iterator[PostfixProcess]:
    """Start Postfix in the foreground from root; stop it and wait for it afterwards."""
    postfix = find_postfix()
    if postfix is None:
        raise BenchmarkError("postfix is not installed")
    port = write_config(root, sink_port, ca_file, login, password)
    log_path = root / "log" / "postfix.log"
    with (root / "start.log").open("wb") as start_log:
        process = subprocess.Popen(  # noqa: S603  (the postfix binary and a fixed argv)
            [postfix, "-c", str(root / "conf"), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=start_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = PostfixProcess(process, port, log_path, root / "queue" / "pid" / "master.pid")
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "start.log").read_text(errors="replace")[-2000:]
                raise BenchmarkError(f"postfix did not start ({process.poll()}): {tail}")
            time.sleep(0.05)
        running.master, running.master_started = _find_master(running)
        yield running
    finally:
        _stop(running)


def _stop(running: PostfixProcess) -> None:
    """SIGTERM master (what `postfix stop` does, without its 1 s polling), then reap."""
    # master calls setsid(), so it is not in the process group of what we started: it is
    # signalled by pid, after checking the pid still names the same process.
    master = running.master
    if master is not None and _started(master) == running.master_started:
        with suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _started(master) == running.master_started and time.monotonic() < deadline:
            time.sleep(0.05)
        if _started(master) == running.master_started:
            with suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)
    stop_process(running.process, deadline=15)


def _started(pid: int) -> str:
    """A process's start time in clock ticks since boot, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _find_master(running: PostfixProcess) -> tuple[int, str]:
    """Master's pid from its pid file, checked to be below the process we started."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        try:
            pid = int(running.pid_file.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
            continue
        if comm == "master" and _has_ancestor(pid, running.process.pid):
            return pid, _started(pid)
        time.sleep(0.05)
    raise BenchmarkError(f"postfix master not found below pid {running.process.pid}")


def _has_ancestor(pid: int, ancestor: int) -> bool:
    current = pid
    for _ in range(8):
        try:
            current = int(Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if current == ancestor:
            return True
    return False


def queue_size(root: Path) -> int:
    """How many messages sit in the queue's incoming, active and deferred directories."""
    total = 0
    for name in ("incoming", "active", "deferred"):
        for _, _, files in os.walk(root / "queue" / name):
            total += len(files)
    return total
