"""Private Postfix and Dovecot servers on loopback, run as real mail peers for relay's tests."""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import NoReturn

import trustme

from tests.peers.configs import (
    DOVECOT_COMMON,
    DOVECOT_DELIVERY,
    DOVECOT_IMAP,
    DOVECOT_OAUTH2,
    DOVECOT_OAUTH2_APP,
    POSTFIX_MAIN,
    POSTFIX_SERVICES,
)
from tests.peers.oauthserver import MAIL_SCOPE, AuthorizationServer

HOST = "127.0.0.1"
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0
USERS = (
    ("alice", "example.org"),
    ("bob", "example.org"),
    ("carol", "example.net"),
    ("dave", "example.net"),
    ("erin", "example.net"),
    ("sales", "example.org"),  # a shared mailbox: users send as it (Send As), none logs in
)
# Postfix files a copy of everything erin submits in her Sent folder, as Gmail and Microsoft 365
# do: sender_bcc_maps sends it to erin+Sent, which Dovecot's LMTP saves into "Sent".
SELF_FILING_USERS = frozenset({"erin"})
# An internationalised address (RFC 6531) that Postfix delivers to bob's INBOX (his Maildir).
UTF8_ALIASES = (("jörg@example.org", "bob"),)
GMAIL_SIZE = 35882577  # what smtp.gmail.com's EHLO announces
# carol's mailbox has "Itens Enviados" and no special-use flags, for name-based Sent discovery.
PLAIN_NAMESPACE_USERS = frozenset({"carol"})
PROGRAMS = (("postfix", "postfix"), ("dovecot", "dovecot-core"), ("script", "bsdutils"))
DOVECOT_HELPERS = (("imap", "dovecot-imapd"), ("lmtp", "dovecot-lmtpd"))
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<name>.*)$')

Endpoint = int | Path  # a TCP port on HOST, or a unix socket
DELIVERY_SOCKETS = ("lmtp-postfix", "auth-postfix")


class PeerStartError(RuntimeError):
    """A mail peer did not come up; the message carries its log tail."""


@dataclass(frozen=True)
class MailAccount:
    """A mailbox on the peers: its address is also its SASL and IMAP login."""

    address: str
    password: str = field(repr=False)


@dataclass
class _Daemon:
    """One daemon we start, wait for, and stop by the pid in its pid file."""

    name: str
    argv: list[str]
    log: Path
    pid_file: Path
    program: str
    endpoints: tuple[Endpoint, ...]
    diagnose: Callable[[], str]
    fresh_dir: Path | None = None
    signal_group: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and return once every endpoint accepts connections."""
        if self.process is not None:
            return
        if self.fresh_dir is not None:
            # A stale auth socket left in base_dir makes the first login wait 5 s.
            shutil.rmtree(self.fresh_dir, ignore_errors=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        while not all(_accepts(endpoint) for endpoint in self.endpoints):
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                self._fail(f"exited with status {status}" if status is not None else "timed out")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the daemon if running and wait until its endpoints refuse connections."""
        process, self.process = self.process, None
        if process is None:
            return
        master = self._master_pid(process)
        if master is None:
            process.terminate()
        else:
            # Dovecot's master alone takes a second to see its children out.
            self._signal(master, signal.SIGTERM, group=self.signal_group)
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            if master is not None:
                self._signal(master, signal.SIGKILL, group=True)
            process.kill()
            process.wait()
        _wait_closed(self.endpoints)

    @staticmethod
    def _signal(master: int, signum: signal.Signals, group: bool) -> None:
        """Signal master, or its whole process group when it leads one."""
        with suppress(ProcessLookupError):
            if group and os.getpgid(master) == master:
                os.killpg(master, signum)
            else:
                os.kill(master, signum)

    def _master_pid(self, process: subprocess.Popen[bytes]) -> int | None:
        """The pid in the pid file, if it is still our program started by process."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pid if comm == self.program and process.pid in (pid, ppid) else None

    def _fail(self, reason: str) -> NoReturn:
        """Stop what was started and raise with the log tail and diagnostics."""
        self.stop()
        log = _tail(self.log)
        raise PeerStartError(f"{self.name} {reason}\n--- {self.log} ---\n{log}\n{self.diagnose()}")


class MailPeers:
    """Postfix for submission and Dovecot for delivery and IMAP, in one temp directory."""

    host: str
    submission_port: int  # Postfix, STARTTLS required before AUTH
    submissions_port: int  # Postfix, implicit TLS
    # Postfix, implicit TLS, announcing SIZE 35882577 as smtp.gmail.com does (issue 22)
    submissions_35mb_port: int
    imap_port: int  # Dovecot, plain and STARTTLS
    imaps_port: int  # Dovecot, implicit TLS
    ca_file: Path
    accounts: dict[str, MailAccount]  # by local part
    oauth: AuthorizationServer  # issues the bearer tokens both Dovecots accept
    workdir: Path
    startup_seconds: float

    def __init__(self, workdir: Path, oauth: AuthorizationServer) -> None:
        self.host = HOST
        self.workdir = workdir
        self.oauth = oauth
        ports = _free_ports(5)
        self.submission_port, self.submissions_port, self.imap_port, self.imaps_port = ports[:4]
        self.submissions_35mb_port = ports[4]
        self.accounts = {
            local: MailAccount(f"{local}@{domain}", f"{local}-{secrets.token_urlsafe(9)}")
            for local, domain in USERS
        }
        self.ca_file, key, cert = _write_tls(workdir / "tls")
        self.startup_seconds = 0.0
        self._postfix_conf = workdir / "postfix" / "conf"
        self._postfix_log = workdir / "postfix" / "log" / "postfix.log"
        users = self._write_users()
        self._oauth2_conf, self._oauth2_app_conf = self._write_oauth2_conf()
        lmtp, auth = (workdir / "dovecot-delivery" / "run" / name for name in DELIVERY_SOCKETS)
        self._delivery = self._dovecot("delivery", users, DOVECOT_DELIVERY, (lmtp, auth))
        imap_conf = DOVECOT_IMAP.format(
            cert=cert, key=key, imap_port=self.imap_port, imaps_port=self.imaps_port
        )
        imap_ports = (self.imap_port, self.imaps_port)
        self._imap = self._dovecot("imap", users, imap_conf, imap_ports)
        self._postfix = self._postfix_daemon(lmtp, auth, key, cert)

    def stop_postfix(self) -> None:
        """Stop Postfix; both submission ports then refuse connections."""
        self._postfix.stop()

    def start_postfix(self) -> None:
        """Start Postfix again with its queue as it was."""
        self._postfix.start()

    def stop_imap(self) -> None:
        """Stop the IMAP Dovecot; delivery through Postfix keeps working."""
        self._imap.stop()

    def start_imap(self) -> None:
        """Start the IMAP Dovecot again."""
        self._imap.start()

    def postfix_log(self) -> str:
        """Everything Postfix has logged so far."""
        try:
            return self._postfix_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def imap(self, account: MailAccount) -> imaplib.IMAP4_SSL:
        """A client logged in as account over implicit TLS; the caller logs out."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        client = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=context, timeout=10)
        try:
            client.login(account.address, account.password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def mailbox_messages(self, account: MailAccount, mailbox: str = "INBOX") -> list[bytes]:
        """The full bytes of every message in mailbox, fetched over IMAP."""
        client = self.imap(account)
        try:
            status, data = client.select(_quoted(mailbox), readonly=True)
            if status != "OK" or not isinstance(data[0], bytes):
                raise imaplib.IMAP4.error(f"cannot select {mailbox!r}: {data!r}")
            count = int(data[0])
            if count == 0:
                return []
            _, fetched = client.fetch(f"1:{count}", "(BODY.PEEK[])")
            return [item[1] for item in fetched if isinstance(item, tuple)]
        finally:
            client.logout()

    def wait_for_messages(
        self, account: MailAccount, count: int, mailbox: str = "INBOX", timeout: float = 15.0
    ) -> list[bytes]:
        """Poll mailbox until it holds at least count messages; else fail with what was found."""
        deadline = time.monotonic() + timeout
        found: list[bytes] = []
        problem = ""
        while True:
            try:
                found, problem = self.mailbox_messages(account, mailbox), ""
            except (OSError, imaplib.IMAP4.error) as exc:
                problem = f"last IMAP error: {exc!r}\n"
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if len(found) < count:
            subjects = "".join(f"  {_subject(message)}\n" for message in found)
            raise AssertionError(
                f"{account.address} {mailbox}: {len(found)} of {count} messages after {timeout}s\n"
                f"{subjects}{problem}--- postfix log ---\n{_tail(self._postfix_log)}"
            )
        return found

    def list_mailboxes(self, account: MailAccount) -> list[tuple[str, str]]:
        """(flags, name) of each mailbox, from LIST with the SPECIAL-USE return option."""
        client = self.imap(account)
        try:
            # imaplib has no LIST-EXTENDED call; xatom sends it and response() collects the lines.
            status, data = client.xatom("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
            if status != "OK":
                raise imaplib.IMAP4.error(f"LIST failed: {data!r}")
            _, lines = client.response("LIST")
        finally:
            client.logout()
        return [_parse_list_line(line) for line in lines if line is not None]

    def _daemons(self) -> tuple[_Daemon, ...]:
        """The daemons in start order."""
        return (self._delivery, self._imap, self._postfix)

    def _write_users(self) -> Path:
        """Write the passwd-file and each user's home, owned by the mail user."""
        mail = pwd.getpwnam("mail")
        users = self.workdir / "users"
        lines = []
        for local, account in self.accounts.items():
            domain = account.address.split("@", 1)[1]
            home = self.workdir / "mail" / domain / local
            home.mkdir(parents=True)
            for directory in (home, home.parent, home.parent.parent):
                os.chown(directory, mail.pw_uid, mail.pw_gid)
            extra = ""
            if local in PLAIN_NAMESPACE_USERS:
                extra = "userdb_namespace/inbox/disabled=yes userdb_namespace/plain/disabled=no"
            lines.append(
                f"{account.address}:{{PLAIN}}{account.password}:{mail.pw_uid}:{mail.pw_gid}"
                f"::{home}::{extra}\n"
            )
        users.write_text("".join(lines))
        # Dovecot's auth process reads it as the dovecot user.
        os.chown(users, 0, pwd.getpwnam("dovecot").pw_gid)
        users.chmod(0o640)
        return users

    def _write_oauth2_conf(self) -> tuple[Path, Path]:
        """Write both oauth2 passdbs' settings (users', apps'), pointing at the server."""
        confs = []
        for name, template, url in (
            ("dovecot-oauth2.conf.ext", DOVECOT_OAUTH2, self.oauth.introspect_url),
            ("dovecot-oauth2-app.conf.ext", DOVECOT_OAUTH2_APP, self.oauth.app_introspect_url),
        ):
            conf = self.workdir / name
            conf.write_text(
                template.format(
                    url=url,
                    client_id=self.oauth.resource_client_id,
                    client_secret=self.oauth.resource_client_secret,
                    scope=MAIL_SCOPE,
                )
            )
            # It holds the introspection secret; Dovecot's auth reads it as the dovecot user.
            os.chown(conf, 0, pwd.getpwnam("dovecot").pw_gid)
            conf.chmod(0o640)
            confs.append(conf)
        return confs[0], confs[1]

    def _dovecot(
        self, role: str, users: Path, config: str, endpoints: tuple[Endpoint, ...]
    ) -> _Daemon:
        """A Dovecot instance of its own base_dir, sharing the users and their Maildirs."""
        root = self.workdir / f"dovecot-{role}"
        (root / "state").mkdir(parents=True)
        log = root / "dovecot.log"
        common = DOVECOT_COMMON.format(
            run=root / "run",
            state=root / "state",
            log=log,
            host=HOST,
            uid=pwd.getpwnam("mail").pw_uid,
            users=users,
            oauth2=self._oauth2_conf,
            oauth2_app=self._oauth2_app_conf,
        )
        conf = root / "dovecot.conf"
        conf.write_text(common + config)
        return _Daemon(
            name=f"dovecot ({role})",
            argv=[_program("dovecot"), "-F", "-c", str(conf)],
            log=log,
            pid_file=root / "run" / "master.pid",
            program="dovecot",
            endpoints=endpoints,
            diagnose=lambda: "",
            fresh_dir=root / "run",
            signal_group=True,
        )

    def _postfix_daemon(self, lmtp: Path, auth: Path, key: Path, cert: Path) -> _Daemon:
        """Postfix reading only its own main.cf and master.cf."""
        conf, queue = self._postfix_conf, self.workdir / "postfix" / "queue"
        for directory in (conf, queue, self._postfix_log.parent):
            directory.mkdir(parents=True)
        mailboxes = ", ".join(
            [f"{account.address}=ok" for account in self.accounts.values()]
            + [
                f"{alias}={self.accounts[local].address.split('@')[1]}/{local}/Maildir/"
                for alias, local in UTF8_ALIASES
            ]
        )
        mail = pwd.getpwnam("mail")
        bcc = ", ".join(
            f"{self.accounts[local].address}={_detail(self.accounts[local].address, 'Sent')}"
            for local in sorted(SELF_FILING_USERS)
        )
        main = POSTFIX_MAIN.format(
            queue=queue,
            data=self.workdir / "postfix" / "data",
            host=HOST,
            log=self._postfix_log,
            log_dir=self._postfix_log.parent,
            mailboxes=mailboxes,
            sent_bcc=bcc,
            utf8_transports=", ".join(f"{alias}=virtual:" for alias, _ in UTF8_ALIASES),
            mail_base=self.workdir / "mail",
            uid=mail.pw_uid,
            gid=mail.pw_gid,
            lmtp=lmtp,
            key=key,
            cert=cert,
            auth=auth,
        )
        submission = (
            f"{HOST}:{self.submission_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_tls_auth_only=yes\n  -o smtpd_sasl_auth_enable=yes\n"
            f"{HOST}:{self.submissions_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submissions\n  -o smtpd_tls_wrappermode=yes\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            f"{HOST}:{self.submissions_35mb_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submissions35\n  -o smtpd_tls_wrappermode=yes\n"
            f"  -o smtpd_sasl_auth_enable=yes\n  -o message_size_limit={GMAIL_SIZE}\n"
        )
        (conf / "main.cf").write_text(main)
        (conf / "master.cf").write_text(submission + "".join(f"{s}\n" for s in POSTFIX_SERVICES))
        # Postfix naps in 0.3 s steps at start while main.cf is younger than a second or so.
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            os.utime(conf / name, (past, past))
        return _Daemon(
            name="postfix",
            argv=[_program("postfix"), "-c", str(conf), "start-fg"],
            log=self.workdir / "postfix" / "start.log",
            pid_file=queue / "pid" / "master.pid",
            program="master",
            endpoints=(self.submission_port, self.submissions_port, self.submissions_35mb_port),
            diagnose=self._postfix_check,
        )

    def _postfix_check(self) -> str:
        """What `postfix check` says; it reports fatal errors only on a terminal."""
        command = shlex.join([_program("postfix"), "-c", str(self._postfix_conf), "check"])
        result = subprocess.run(
            ["script", "-qc", command, "/dev/null"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return (
            f"--- postfix check (status {result.returncode}) ---\n{result.stdout}{result.stderr}"
            f"--- {self._postfix_log} ---\n{_tail(self._postfix_log)}"
        )


def peers_available() -> str | None:
    """None when Postfix and Dovecot can run here, else what to install or change."""
    missing = [package for name, package in PROGRAMS if not _find_program(name)]
    missing += [p for name, p in DOVECOT_HELPERS if not Path("/usr/lib/dovecot", name).exists()]
    if missing:
        return f"real mail peers need: apt-get install {' '.join(sorted(set(missing)))}"
    if os.geteuid() != 0:
        return "real mail peers need root (Postfix and Dovecot switch users)"
    try:
        for user in ("mail", "postfix", "dovecot", "dovenull"):
            pwd.getpwnam(user)
    except KeyError as exc:
        return f"real mail peers need the system user {exc}"
    return None


@contextmanager
def running_mail_peers() -> Iterator[MailPeers]:
    """Start the OAuth2 server, Dovecot and Postfix in a fresh temp directory; stop all after."""
    started = time.monotonic()
    # The postfix, dovecot and mail users must enter it, so not pytest's 0700 tmp_path.
    workdir = Path(tempfile.mkdtemp(prefix="relay-peers-"))
    try:
        workdir.chmod(0o755)
        with ExitStack() as stack:
            # Started first: the Dovecot configs name its introspection URL.
            local, domain = USERS[0]
            oauth = stack.enter_context(AuthorizationServer(signed_in_as=f"{local}@{domain}"))
            peers = MailPeers(workdir, oauth)
            for daemon in peers._daemons():
                stack.callback(daemon.stop)
                daemon.start()
            peers.startup_seconds = time.monotonic() - started
            yield peers
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _find_program(name: str) -> str | None:
    """The path of a program, looking in the sbin directories too."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def _program(name: str) -> str:
    """The path of a program that peers_available() found."""
    path = _find_program(name)
    if path is None:
        raise PeerStartError(f"{name} not found")
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports the OS had free just now."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]


def _write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """Write a CA, and a server key and certificate for localhost and 127.0.0.1."""
    directory.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", HOST)
    ca_file, key, cert = directory / "ca.pem", directory / "server.key", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return ca_file, key, cert


def _accepts(endpoint: Endpoint) -> bool:
    """Whether a TCP port on HOST or a unix socket accepts a connection now."""
    is_unix = isinstance(endpoint, Path)
    family = socket.AF_UNIX if is_unix else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Loopback answers at once; a SYN that races a closing listener waits 1 s to retry.
        probe.settimeout(0.2)
        try:
            probe.connect(str(endpoint) if is_unix else (HOST, endpoint))
        except OSError:
            return False
    return True


def _wait_closed(endpoints: tuple[Endpoint, ...]) -> None:
    """Wait until no endpoint accepts connections any more."""
    deadline = time.monotonic() + STOP_DEADLINE
    while any(_accepts(endpoint) for endpoint in endpoints):
        if time.monotonic() > deadline:
            raise RuntimeError(f"still accepting connections after stop: {endpoints}")
        time.sleep(0.05)


def _detail(address: str, detail: str) -> str:
    local, domain = address.split("@", 1)
    return f"{local}+{detail}@{domain}"


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log file)"


def _quoted(mailbox: str) -> str:
    """An IMAP quoted string, as imaplib sends mailbox names verbatim."""
    escaped = mailbox.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _parse_list_line(line: bytes | tuple[bytes, bytes]) -> tuple[str, str]:
    """(flags, name) from one untagged LIST response."""
    if isinstance(line, tuple):
        # A name sent as a literal arrives as (prefix ending in {n}, name bytes).
        head, literal = line
        line = head[: head.rindex(b"{")] + b'"' + literal.replace(b'"', b'\\"') + b'"'
    match = LIST_LINE.match(line)
    if match is None:
        raise imaplib.IMAP4.error(f"unexpected LIST line: {line!r}")
    name = match["name"].decode()
    if name.startswith('"'):
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return match["flags"].decode(), name


def _subject(message: bytes) -> str:
    """The Subject header of a message, for failure reports."""
    return str(BytesHeaderParser().parsebytes(message).get("Subject", "(no subject)"))
