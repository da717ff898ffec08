"""relay queue list | retry | drop: the queue as a person sees it."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from relay.cli.common import UsageError, cli_config
from relay.config.model import RelayConfig
from relay.queue.admin import QueueAdmin, open_queue_admin


def add_queue_commands(queue_parser: argparse.ArgumentParser) -> None:
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


def cmd_queue_list(args: argparse.Namespace) -> int:
    """Print the queue: id, user, age, attempts, next try, last reply."""
    with _open_queue(cli_config(args)) as queue:
        entries = queue.entries()
        pending_copies = queue.sent_copies_pending()
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
    with _open_queue(cli_config(args)) as queue:
        ids = [entry.id for entry in queue.entries()] if args.all else [args.id]
        moved = sum(queue.retry(queue_id, time.time()) for queue_id in ids)
    if not args.all and moved == 0:
        raise UsageError(f"no queued message with id {args.id!r}")
    print(f"{moved} message(s) due for retry now")
    return 0


def cmd_queue_drop(args: argparse.Namespace) -> int:
    """Delete one queued message; says who dropped what."""
    with _open_queue(cli_config(args)) as queue:
        entries = queue.entries(args.id)
        if not entries or not queue.drop(args.id):
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
def _open_queue(config: RelayConfig) -> Iterator[QueueAdmin]:
    if not config.spool_path.is_file():
        raise UsageError(f"no queue at {config.spool_path} (run 'relay init' first)")
    with open_queue_admin(config.spool_path) as queue:
        yield queue


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
