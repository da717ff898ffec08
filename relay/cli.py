"""The `relay` command line: argument parsing and output only."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from relay import __version__
from relay.cli_status import add_status_command
from relay.config import ProviderConfig, RelayConfig, config_path_from, load_config, render_config
from relay.daemon import run_daemon
from relay.errors import RelayError
from relay.keys import MasterKey, Secret, create_key_file, key_path, load_key
from relay.localauth import (
    generate_local_secret,
    hash_chosen_secret,
    hash_generated_secret,
    is_slow_hash,
)
from relay.providers import SentCopy, email_fits
from relay.sent import plan_sent_copy
from relay.sentqueue import count_jobs
from relay.spool import delete_message, make_id_due, open_database, select_entries
from relay.store import UPSTREAM_CREDENTIAL, Store, User, secret_context

LOGIN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
SENT_COPY_CHOICES = ("provider", "auto", "always", "never")
# Deliberately strict: an address that goes into an SMTP envelope must not carry controls or spaces.
EMAIL_PATTERN = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class UsageError(RelayError):
    """The command line asks for something that cannot be done as asked."""


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
    _add_user_commands(commands.add_parser("user", help="manage users"))
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


def _add_user_commands(user_parser: argparse.ArgumentParser) -> None:
    users = user_parser.add_subparsers(required=True, metavar="ACTION")
    add = users.add_parser("add", help="add a user; prints the local secret once")
    add.add_argument("login")
    add.add_argument("--provider", required=True, help="provider name from config.yaml")
    add.add_argument("--email", required=True, help="the user's address at the provider")
    add.add_argument("--display-name", help="name shown in From when --rewrite-from is on")
    add.add_argument("--upstream-user", help="provider login, if not the email address")
    add.add_argument("--alias", action="append", default=[], help="another allowed sender")
    add.add_argument(
        "--rewrite-from", action="store_true", help="set From and envelope sender to --email"
    )
    add.add_argument("--local-password-file", type=Path, help="choose the local secret")
    _add_password_source(add)
    _add_sent_options(add)
    add.set_defaults(run=cmd_user_add)

    users.add_parser("list", help="list users").set_defaults(run=cmd_user_list)
    for name, run, text in (
        ("show", cmd_user_show, "show one user (never a secret)"),
        ("remove", cmd_user_remove, "delete a user and their stored secrets"),
        ("enable", cmd_user_enable, "allow a user to send"),
        ("disable", cmd_user_disable, "refuse a user's logins"),
    ):
        sub = users.add_parser(name, help=text)
        sub.add_argument("login")
        sub.set_defaults(run=run)

    set_password = users.add_parser("set-password", help="replace the stored upstream secret")
    set_password.add_argument("login")
    _add_password_source(set_password)
    set_password.set_defaults(run=cmd_user_set_password)

    new_secret = users.add_parser("new-secret", help="issue a new local secret")
    new_secret.add_argument("login")
    new_secret.add_argument("--local-password-file", type=Path, help="choose the local secret")
    new_secret.set_defaults(run=cmd_user_new_secret)

    set_sent = users.add_parser("set", help="change a user's Sent copy settings")
    set_sent.add_argument("login")
    _add_sent_options(set_sent)
    set_sent.add_argument(
        "--no-sent-folder", action="store_true", help="find the Sent folder again by itself"
    )
    set_sent.set_defaults(run=cmd_user_set)


def _add_sent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sent-copy",
        choices=SENT_COPY_CHOICES,
        help="file a copy in Sent: auto, always or never; provider (default): as the provider says",
    )
    parser.add_argument(
        "--sent-folder", metavar="NAME", help="the IMAP folder for Sent copies (default: found)"
    )


def _add_password_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--password-file", type=Path, help="read the upstream password from FILE")
    source.add_argument(
        "--password-stdin", action="store_true", help="read the upstream password from stdin"
    )


def cmd_init(args: argparse.Namespace) -> int:
    """Create state dir, database and key file."""
    config = _config(args)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.create(config.database_path).close()
    open_database(config.spool_path).close()
    create_key_file(config.key_file)
    print(f"created {config.state_dir} (database {config.database_path})")
    print(f"created key file {config.key_file}: back it up; without it stored secrets are lost")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    run_daemon(_config(args), os.environ)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config and print what it resolves to."""
    config = _config(args)
    print(f"# {config.source}: valid")
    print(render_config(config), end="")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    """Add a user and print their local secret once."""
    config = _config(args)
    provider = config.providers.get(args.provider)
    if provider is None:
        known = ", ".join(sorted(config.providers)) or "none configured"
        raise UsageError(f"unknown provider {args.provider!r} (known: {known})")
    login = _checked_login(args.login)
    email = _checked_email(args.email, "--email")
    problem = email_fits(email, provider.domains)
    if problem is not None:
        raise UsageError(f"--email: {problem}")
    aliases = tuple(_checked_email(a, "--alias") for a in args.alias)
    display_name = _checked_text(args.display_name, "--display-name")
    upstream_user = _checked_text(args.upstream_user, "--upstream-user") or email
    password = _read_password(args, f"upstream password for {email}: ")
    local_secret, local_hash = _local_secret(args.local_password_file)
    with _open_store(config) as (store, key):
        store.add_user(
            User(
                login=login,
                provider=args.provider,
                email=email,
                upstream_user=upstream_user,
                display_name=display_name,
                aliases=aliases,
                rewrite_from=args.rewrite_from,
                local_hash=local_hash,
                sealed_secret=key.seal(password, secret_context(login, UPSTREAM_CREDENTIAL)),
                sent_copy=_sent_copy_choice(args.sent_copy, provider),
                sent_folder=_checked_text(args.sent_folder, "--sent-folder"),
            )
        )
    _announce_local_secret(login, local_secret, sys.stdout, sys.stderr)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """Print one line per user."""
    with _open_store(_config(args)) as (store, _):
        users = store.list_users()
    print(f"{'LOGIN':<20} {'PROVIDER':<16} {'EMAIL':<32} STATE")
    for user in users:
        state = "enabled" if user.enabled else "disabled"
        print(f"{user.login:<20} {user.provider:<16} {user.email:<32} {state}")
    return 0


def cmd_user_show(args: argparse.Namespace) -> int:
    """Print one user's settings, never a secret."""
    config = _config(args)
    with _open_store(config) as (store, _):
        user = store.get_user(args.login)
    for label, value in describe_user(user, config.providers.get(user.provider)):
        print(f"{label + ':':<18} {value}")
    return 0


def describe_user(user: User, provider: ProviderConfig | None = None) -> list[tuple[str, str]]:
    """Label/value pairs that describe a user without revealing any secret."""
    local = "chosen (scrypt hash)" if is_slow_hash(user.local_hash) else "generated (sha256 hash)"
    return [
        ("login", user.login),
        ("provider", user.provider),
        ("email", user.email),
        ("display name", user.display_name or "-"),
        ("upstream user", user.upstream_user),
        ("aliases", ", ".join(user.aliases) or "-"),
        ("rewrite from", "yes" if user.rewrite_from else "no"),
        ("state", "enabled" if user.enabled else "disabled"),
        ("upstream secret", "stored, sealed" if user.sealed_secret else "none"),
        ("local secret", local),
        ("sent copy", _describe_sent_copy(user, provider)),
        ("sent folder", user.sent_folder or "- (found by relay)"),
        ("sent folder found", user.sent_folder_found or "-"),
        ("created", _timestamp(user.created_at)),
        ("updated", _timestamp(user.updated_at)),
    ]


def _describe_sent_copy(user: User, provider: ProviderConfig | None) -> str:
    if provider is None:
        setting = user.sent_copy.value if user.sent_copy else "as provider"
        return f"{setting} (provider {user.provider!r} is not configured)"
    choice, whose = (user.sent_copy, "user") if user.sent_copy else (provider.sent_copy, "provider")
    return f"{choice.value} ({whose} setting): {plan_sent_copy(provider, user.sent_copy).value}"


def cmd_user_set(args: argparse.Namespace) -> int:
    """Change a user's Sent copy settings."""
    if args.sent_folder is not None and args.no_sent_folder:
        raise UsageError("give either --sent-folder or --no-sent-folder, not both")
    if args.sent_copy is None and args.sent_folder is None and not args.no_sent_folder:
        raise UsageError("nothing to change: give --sent-copy, --sent-folder or --no-sent-folder")
    config = _config(args)
    with _open_store(config) as (store, _):
        user = store.get_user(args.login)
        if args.sent_copy is not None:
            provider = config.providers.get(user.provider)
            user = replace(user, sent_copy=_sent_copy_choice(args.sent_copy, provider))
        if args.sent_folder is not None or args.no_sent_folder:
            folder = _checked_text(args.sent_folder, "--sent-folder")
            user = replace(user, sent_folder=folder)
        store.update_user(user)
    copy = user.sent_copy.value if user.sent_copy else "as provider"
    print(f"user {user.login}: sent copy {copy}, sent folder {user.sent_folder or '(found)'}")
    return 0


def _sent_copy_choice(choice: str | None, provider: ProviderConfig | None) -> SentCopy | None:
    if choice is None or choice == "provider":
        return None
    sent_copy = SentCopy(choice)
    if sent_copy is SentCopy.ALWAYS and provider is not None and provider.imap is None:
        raise UsageError(
            f"--sent-copy always: provider {provider.name!r} has no imap endpoint to append to"
        )
    return sent_copy


def cmd_user_remove(args: argparse.Namespace) -> int:
    """Delete a user."""
    with _open_store(_config(args)) as (store, _):
        store.remove_user(args.login)
    print(f"user {args.login} removed")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    """Allow a user's logins again."""
    return _set_enabled(args, enabled=True)


def cmd_user_disable(args: argparse.Namespace) -> int:
    """Refuse a user's logins from now on."""
    return _set_enabled(args, enabled=False)


def _set_enabled(args: argparse.Namespace, *, enabled: bool) -> int:
    with _open_store(_config(args)) as (store, _):
        store.update_user(replace(store.get_user(args.login), enabled=enabled))
    print(f"user {args.login} {'enabled' if enabled else 'disabled'}")
    return 0


def cmd_user_set_password(args: argparse.Namespace) -> int:
    """Replace a user's stored upstream secret."""
    config = _config(args)
    with _open_store(config) as (store, key):
        user = store.get_user(args.login)
        password = _read_password(args, f"upstream password for {user.email}: ")
        sealed = key.seal(password, secret_context(user.login, UPSTREAM_CREDENTIAL))
        store.update_user(replace(user, sealed_secret=sealed))
    print(f"upstream password of {args.login} replaced")
    return 0


def cmd_user_new_secret(args: argparse.Namespace) -> int:
    """Issue a new local secret; the old one stops working."""
    with _open_store(_config(args)) as (store, _):
        user = store.get_user(args.login)
        local_secret, local_hash = _local_secret(args.local_password_file)
        store.update_user(replace(user, local_hash=local_hash))
    _announce_local_secret(user.login, local_secret, sys.stdout, sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> RelayConfig:
    return load_config(config_path_from(args.config, os.environ))


@contextmanager
def _open_store(config: RelayConfig) -> Iterator[tuple[Store, MasterKey]]:
    key = load_key(key_path(config.key_file, os.environ))
    store = Store.open(config.database_path)
    try:
        yield store, key
    finally:
        store.close()


def _read_password(args: argparse.Namespace, prompt: str) -> Secret:
    if args.password_file is not None:
        try:
            text = args.password_file.read_text()
        except OSError as error:
            raise UsageError(
                f"--password-file: cannot read {args.password_file}: {error.strerror}"
            ) from None
    elif args.password_stdin:
        text = sys.stdin.read()
    elif sys.stdin.isatty():
        text = getpass.getpass(prompt)
    else:
        raise UsageError("give the upstream password with --password-file FILE or --password-stdin")
    # Only the line ending a file or pipe adds; a password may legitimately contain spaces.
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError("the upstream password is empty")
    if any(c in password for c in "\r\n\0"):
        raise UsageError("the upstream password contains a line break or NUL")
    return Secret(password)


def _local_secret(chosen_file: Path | None) -> tuple[Secret | None, str]:
    """The secret to announce (None when chosen by the operator) and the hash to store."""
    if chosen_file is None:
        secret = generate_local_secret()
        return secret, hash_generated_secret(secret)
    try:
        chosen = chosen_file.read_text().removesuffix("\n").removesuffix("\r")
    except OSError as error:
        raise UsageError(
            f"--local-password-file: cannot read {chosen_file}: {error.strerror}"
        ) from None
    if len(chosen) < 12:
        raise UsageError("--local-password-file: a local secret needs at least 12 characters")
    return None, hash_chosen_secret(Secret(chosen))


def _announce_local_secret(login: str, secret: Secret | None, out: TextIO, err: TextIO) -> None:
    if secret is None:
        print(f"user {login}: local secret set from file", file=err)
        return
    print(
        f"user {login}: local SMTP login {login!r}; its secret follows, shown only this once",
        file=err,
    )
    print(secret.reveal(), file=out)


def _checked_login(login: str) -> str:
    if not LOGIN_PATTERN.fullmatch(login):
        raise UsageError(
            f"login {login!r}: use 1-64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return login


def _checked_email(address: str, flag: str) -> str:
    if not EMAIL_PATTERN.fullmatch(address):
        raise UsageError(f"{flag}: {address!r} is not a plain address like name@example.org")
    return address


def _checked_text(text: str | None, flag: str) -> str | None:
    if text is not None and (not text.isprintable() or not text.strip()):
        raise UsageError(f"{flag}: must be printable text without line breaks")
    return text


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def cmd_queue_list(args: argparse.Namespace) -> int:
    """Print the queue: id, user, age, attempts, next try, last reply."""
    with _open_spool(_config(args)) as db:
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
    with _open_spool(_config(args)) as db:
        ids = [e.id for e in select_entries(db, None)] if args.all else [args.id]
        moved = sum(make_id_due(db, queue_id, time.time()) for queue_id in ids)
    if not args.all and moved == 0:
        raise UsageError(f"no queued message with id {args.id!r}")
    print(f"{moved} message(s) due for retry now")
    return 0


def cmd_queue_drop(args: argparse.Namespace) -> int:
    """Delete one queued message; says who dropped what."""
    with _open_spool(_config(args)) as db:
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
