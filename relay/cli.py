"""The `relay` command line: argument parsing and output only."""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from relay import __version__
from relay.cli_check import add_check_command
from relay.cli_common import UsageError, cli_config
from relay.cli_status import add_status_command
from relay.cli_users import add_user_commands
from relay.config import RelayConfig
from relay.configfile import render_config
from relay.daemon import run_daemon
from relay.errors import RelayError
from relay.keys import create_key_file
from relay.sentqueue import count_jobs
from relay.spooldb import open_database
from relay.spoolsql import delete_message, make_id_due, select_entries
from relay.store import Store

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one relay command; return its exit status."""
    os.umask(0o077)  # every file relay creates may hold or lead to secrets
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except RelayError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    parser.add_argument(
        "--config", help="config file (default: $RELAY_CONFIG, else /etc/relay/config.yaml)"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    commands.add_parser("init", help="create the state dir, database and key file").set_defaults(
        run=cmd_init
    )
    commands.add_parser("serve", help="run the daemon in the foreground").set_defaults(
        run=cmd_serve
    )
    config = commands.add_parser("config", help="configuration").add_subparsers(
        required=True, metavar="ACTION"
    )
    config.add_parser("check", help="validate and print the resolved config").set_defaults(
        run=cmd_config_check
    )
    # Each further command registers itself from its own module, as these do.
    add_user_commands(commands)
    add_check_command(commands)
    _add_queue_commands(commands.add_parser("queue", help="inspect and steer the mail queue"))
    add_status_command(commands)
    return parser


def _add_queue_commands(queue_parser: argparse.ArgumentParser) -> None:
    actions = queue_parser.add_subparsers(required=True, metavar="ACTION")
    actions.add_parser("list", help="queued mail, oldest first").set_defaults(run=cmd_queue_list)
    retry = actions.add_parser("retry", help="try queued mail again now")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", help="queue id from 'relay queue list'")
    target.add_argument("--all", action="store_true", help="every queued message")
    retry.set_defaults(run=cmd_queue_retry)
    drop = actions.add_parser("drop", help="delete a queued message without sending it")
    drop.add_argument("id")
    drop.set_defaults(run=cmd_queue_drop)


def cmd_init(args: argparse.Namespace) -> int:
    """Create state dir, database and key file."""
    config = cli_config(args)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.create(config.database_path).close()
    open_database(config.spool_path).close()
    create_key_file(config.key_file)
    print(f"created {config.state_dir} (database {config.database_path})")
    print(f"created key file {config.key_file}: back it up; without it stored secrets are lost")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    run_daemon(cli_config(args), os.environ)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config and print what it resolves to."""
    config = cli_config(args)
    print(f"# {config.source}: valid")
    print(render_config(config), end="")
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    """Print the queue: id, user, age, attempts, next try, last reply."""
    with _open_spool(cli_config(args)) as db:
        entries = select_entries(db, None)
        pending_copies = count_jobs(db)
    now = time.time()
    print(f"{'ID':<17} {'USER':<16} {'AGE':>7} {'TRIES':>5} {'NEXT':>7}  LAST REPLY")
    for entry in entries:
        next_try = "now" if entry.next_attempt <= now else _duration(entry.next_attempt - now)
        print(
            f"{entry.id:<17} {entry.login:<16} {_duration(now - entry.received_at):>7} "
            f"{entry.attempts:>5} {next_try:>7}  {entry.last_reply or '-'}"
        )
        for address in entry.pending:
            print(f"{'':<17} -> {address}")
    print(f"{len(entries)} queued, {pending_copies} Sent copies pending")
    return 0


def cmd_queue_retry(args: argparse.Namespace) -> int:
    """Make queued mail due now; the running daemon picks it up within a second."""
    with _open_spool(cli_config(args)) as db:
        ids = [e.id for e in select_entries(db, None)] if args.all else [args.id]
        moved = sum(make_id_due(db, queue_id, time.time()) for queue_id in ids)
    if not args.all and moved == 0:
        raise UsageError(f"no queued message with id {args.id!r}")
    print(f"{moved} message(s) due for retry now")
    return 0


def cmd_queue_drop(args: argparse.Namespace) -> int:
    """Delete one queued message; says who dropped what."""
    with _open_spool(cli_config(args)) as db:
        entries = select_entries(db, None, args.id)
        if not entries or not delete_message(db, args.id):
            raise UsageError(f"no queued message with id {args.id!r}")
    entry = entries[0]
    operator = os.environ.get("SUDO_USER") or getpass.getuser()
    print(
        f"queue.dropped id={entry.id} by={operator} user={entry.login} "
        f"msg_id={entry.message_id} rcpts={','.join(entry.pending) or '-'}",
        file=sys.stderr,
    )
    return 0


@contextmanager
def _open_spool(config: RelayConfig) -> Iterator[sqlite3.Connection]:
    if not config.spool_path.is_file():
        raise UsageError(f"no queue at {config.spool_path} (run 'relay init' first)")
    db = open_database(config.spool_path)
    try:
        yield db
    finally:
        db.close()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
