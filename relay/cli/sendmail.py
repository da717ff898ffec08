"""`relay sendmail`: a drop-in /usr/sbin/sendmail that hands mail to the daemon's Unix socket.

No password: the daemon knows the caller's Unix user from the socket (SO_PEERCRED) and sends as
the relay user config.yaml maps it to. Exit statuses follow sysexits.h; a failure prints one
line on standard error and leaves the mail with the caller (cron and PHP report it).
"""

from __future__ import annotations

import argparse
import email.utils
import os
import pwd
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from relay.cli.common import UsageError
from relay.cli.handover import (
    DaemonUnreachable,
    Envelope,
    SocketForbidden,
    converse,
    exit_status,
    hand_over,
)
from relay.cli.mailargs import USAGE, Mode, SendmailCall, parse_sendmail
from relay.config.listeners import sendmail_socket
from relay.config.load import config_path_from
from relay.errors import ConfigError
from relay.message import CRLF, field_name, field_value, header_end, header_fields
from relay.message import normalise_line_endings as crlf_lines

PROGRAM = "relay sendmail"
_HEADER_FIELD = re.compile(rb"[!-9;-~]+:")  # RFC 5322 §2.2: a field name, then a colon


def add_sendmail_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay sendmail` (also what `sendmail` runs, through a symlink)."""
    parser = commands.add_parser(
        "sendmail",
        help="a sendmail drop-in: hand the message on stdin to the daemon (see --help)",
        add_help=False,
        # sendmail's own syntax (-oi, -FName, -B8BITMIME) is not argparse's: every word is kept
        # as it is, for relay.cli.mailargs to read as Postfix's sendmail does.
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs="*", help="sendmail's options and recipients")
    parser.set_defaults(run=cmd_sendmail)


def cmd_sendmail(args: argparse.Namespace) -> int:
    """Run sendmail with this process's standard streams."""
    return run_sendmail(args.arguments, args.config, sys.stdin.buffer, sys.stdout, sys.stderr)


def run_sendmail(
    arguments: Sequence[str],
    config: str | None,
    stdin: BinaryIO,
    stdout: TextIO,
    stderr: TextIO,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """One sendmail call; its sysexits.h status, with one line on stderr when not EX_OK."""
    if list(arguments[:1]) == ["--help"]:
        print(USAGE, end="", file=stdout)
        return os.EX_OK
    try:
        call = parse_sendmail(arguments)
    except UsageError as error:
        return _fail(stderr, os.EX_USAGE, str(error))
    if call.mode is Mode.NEWALIASES:
        return os.EX_OK
    try:
        path = sendmail_socket(config_path_from(call.config or config, environ))
    except ConfigError as error:
        return _fail(stderr, os.EX_CONFIG, str(error).splitlines()[0])
    try:
        if call.mode is Mode.SMTP:
            converse(path, stdin.fileno(), stdout.fileno())
            return os.EX_OK
        return _deliver(call, path, stdin, stderr)
    except DaemonUnreachable as error:
        why = f"relay is not running ({error}): the mail was not sent; try again later"
        return _fail(stderr, os.EX_TEMPFAIL, why)
    except SocketForbidden as error:
        why = f"{error}: the socket's directory must be open to this user (mode 0755)"
        return _fail(stderr, os.EX_NOPERM, why)


def _deliver(call: SendmailCall, path: Path, stdin: BinaryIO, stderr: TextIO) -> int:
    raw = read_message(stdin, call.dots_end)
    if not raw.strip():
        return _fail(stderr, os.EX_DATAERR, "empty message on standard input: nothing was sent")
    data = crlf_lines(raw)
    if not _HEADER_FIELD.match(data):
        data = CRLF + data  # no header at all: every line is body (a From is added below)
    recipients = addresses(call.recipients)
    if call.from_headers:
        recipients = list(dict.fromkeys(recipients + header_recipients(data)))
    if not recipients:
        where = "in To, Cc or Bcc" if call.from_headers else "given (name them, or use -t)"
        return _fail(stderr, os.EX_USAGE, f"no recipients {where}: nothing was sent")
    bare = [address for address in recipients if "@" not in address]
    if bare:
        why = f"recipient {bare[0]!r} has no domain: relay sends to full addresses only"
        return _fail(stderr, os.EX_NOUSER, f"{why} (like {bare[0]}@example.org)")
    # Without -f, the caller's login name: the daemon reads a name without a domain as the
    # mapped user's own address, as sendmail qualifies it with its own domain.
    sender = call.sender if call.sender is not None else _login()
    data = with_from(data, call.full_name, sender)
    log: list[str] = []
    reply = hand_over(path, Envelope(sender, tuple(recipients), call.body), data, log)
    if call.verbose:
        for line in log:
            print(f"{PROGRAM}: {line}", file=stderr)
    status = exit_status(reply)
    if status != os.EX_OK:
        return _fail(stderr, status, f"not sent: {reply.line}")
    return status


def read_message(stdin: BinaryIO, dots_end: bool) -> bytes:
    """The message on stdin; without -i, a line of one "." ends it (as sendmail reads)."""
    if not dots_end:
        return stdin.read()
    lines = []
    for line in stdin:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def addresses(words: Sequence[str]) -> list[str]:
    """The addresses in recipient arguments (`a@x`, `A <a@x>`, `a@x, b@y`), each once."""
    found = [address for _, address in email.utils.getaddresses(list(words)) if address]
    return list(dict.fromkeys(found))


def header_recipients(data: bytes) -> list[str]:
    """-t: the addresses in To, Cc and Bcc (the daemon keeps Bcc from every recipient)."""
    values = [
        field_value(field)
        for field in header_fields(data[: header_end(data)])
        if field_name(field) in ("to", "cc", "bcc")
    ]
    return addresses(values)


def with_from(data: bytes, full_name: str | None, sender: str) -> bytes:
    """The message with From added when it has none: -F's name and the envelope sender."""
    end = header_end(data)
    if any(field_name(field) == "from" for field in header_fields(data[:end])):
        return data
    name = " ".join((full_name or "").split())
    mailbox = email.utils.formataddr((name, sender)) if sender else "<>"
    return b"From: " + mailbox.encode() + CRLF + data


def _login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _fail(stderr: TextIO, status: int, why: str) -> int:
    print(f"{PROGRAM}: {' '.join(why.split())}", file=stderr)
    return status
