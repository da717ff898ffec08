"""The `relay` command line: argument parsing and output only."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from relay import __version__
from relay.cli.check import add_check_command
from relay.cli.common import UsageError, cli_config
from relay.cli.demo import add_demo_command
from relay.cli.queue import add_queue_commands
from relay.cli.sendmail import add_sendmail_command
from relay.cli.status import add_status_command
from relay.cli.users import add_user_commands
from relay.config.load import render_config
from relay.daemon import run_daemon
from relay.errors import RelayError
from relay.queue.admin import create_queue
from relay.state.keys import create_key_file
from relay.state.store import Store

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one relay command; return its exit status."""
    os.umask(0o077)  # every file relay creates may hold or lead to secrets
    arguments = list(sys.argv[1:] if argv is None else argv)
    if Path(prog or sys.argv[0]).name == "sendmail":
        # /usr/sbin/sendmail as a symlink to relay: sendmail's command line, as is.
        arguments = ["sendmail", *arguments]
    args = build_parser().parse_args(arguments)
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
    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument(
        "--accept-damaged-spool",
        action="store_true",
        help="start even if the start-up check finds the spool damaged (its log is kept aside)",
    )
    serve.set_defaults(run=cmd_serve)
    config = commands.add_parser("config", help="configuration").add_subparsers(
        required=True, metavar="ACTION"
    )
    config.add_parser("check", help="validate and print the resolved config").set_defaults(
        run=cmd_config_check
    )
    # Each further command registers itself from its own module, as these do.
    add_user_commands(commands)
    add_check_command(commands)
    add_queue_commands(commands.add_parser("queue", help="inspect and steer the mail queue"))
    add_status_command(commands)
    add_demo_command(commands)
    add_sendmail_command(commands)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    """Create state dir, database and key file."""
    config = cli_config(args)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.create(config.database_path).close()
    create_queue(config.spool_path)
    create_key_file(config.key_file)
    print(f"created {config.state_dir} (database {config.database_path})")
    print(f"created key file {config.key_file}: back it up; without it stored secrets are lost")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    run_daemon(cli_config(args), os.environ, accept_damaged_spool=args.accept_damaged_spool)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config and print what it resolves to."""
    config = cli_config(args)
    print(f"# {config.source}: valid")
    print(render_config(config), end="")
    return 0
