"""`relay user ...`: adding, listing, showing and changing users; never prints a stored secret."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from relay.cli.authorize import add_authorize_command, describe_login
from relay.cli.common import (
    LOGIN_PATTERN,
    UsageError,
    checked_email,
    cli_config,
    open_store,
    organisation_user,
    timestamp,
    user_state,
)
from relay.cli.invite import add_invite_command
from relay.cli.move import moved_user, rebind_user
from relay.cli.secretinput import announce_local_secret, read_local_secret, read_password
from relay.config.model import ProviderConfig
from relay.model import CheckRecord, OAuthGrant, UpstreamAuth, User
from relay.providers.presets import MX_SUFFIXES, SentCopy, address_domain, email_fits, mx_mismatch
from relay.sent.filing import plan_sent_copy
from relay.state.invites import NO_LOCAL_SECRET
from relay.state.localauth import is_slow_hash
from relay.state.sealing import UPSTREAM_CREDENTIAL, user_context

SENT_COPY_CHOICES = ("provider", "auto", "always", "never")
MX_LOOKUP_SECONDS = 3.0  # a warning is not worth a long wait at 'user add'


def add_user_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay user ACTION`."""
    user_parser = commands.add_parser("user", help="manage users")
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
    _add_password_source(add, oauth2=True)
    _add_sent_options(add)
    add.set_defaults(run=cmd_user_add)
    add_authorize_command(users)
    add_invite_command(users)

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

    set_sent = users.add_parser(
        "set", help="change a user's provider, upstream user or Sent copy settings"
    )
    set_sent.add_argument("login")
    set_sent.add_argument("--provider", help="move the user to this provider from config.yaml")
    set_sent.add_argument("--upstream-user", help="the provider login relay logs in as")
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


def _add_password_source(parser: argparse.ArgumentParser, *, oauth2: bool = False) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--password-file", type=Path, help="read the upstream password from FILE")
    source.add_argument(
        "--password-stdin", action="store_true", help="read the upstream password from stdin"
    )
    if oauth2:
        source.add_argument(
            "--oauth2",
            action="store_true",
            help="log in upstream with OAuth2, no password; then run 'relay user authorize'",
        )


def cmd_user_add(args: argparse.Namespace) -> int:
    """Add a user and print their local secret once."""
    config = cli_config(args)
    provider = config.providers.get(args.provider)
    if provider is None:
        known = ", ".join(sorted(config.providers)) or "none configured"
        raise UsageError(f"unknown provider {args.provider!r} (known: {known})")
    login = _checked_login(args.login)
    email = checked_email(args.email, "--email")
    problem = email_fits(email, provider.domains)
    if problem is not None:
        raise UsageError(f"--email: {problem}")
    aliases = tuple(checked_email(a, "--alias") for a in args.alias)
    display_name = _checked_text(args.display_name, "--display-name")
    upstream_user = _checked_text(args.upstream_user, "--upstream-user") or email
    if args.oauth2 and provider.oauth2 is None:
        raise UsageError(
            f"--oauth2: provider {provider.name!r} has no oauth2 section in {config.source}"
        )
    # The organisation's app or service account logs in for everyone: no password, no sign-in.
    organisation = provider.oauth2 is not None and provider.oauth2.organisation
    given = args.password_file is not None or args.password_stdin
    no_password = args.oauth2 or (organisation and not given)
    password = None if no_password else read_password(args, f"upstream password for {email}: ")
    local_secret, local_hash = read_local_secret(args.local_password_file)
    domain = address_domain(email)
    mx_hosts = lookup_mx(domain) if provider.preset in MX_SUFFIXES else None
    mx_warning = mx_mismatch(provider.preset, domain, mx_hosts)
    if mx_warning is not None:
        print(f"relay: warning: {mx_warning}", file=sys.stderr)
    awaiting = config.enable_after_check
    user = User(
        login=login,
        provider=args.provider,
        email=email,
        upstream_user=upstream_user,
        display_name=display_name,
        aliases=aliases,
        rewrite_from=args.rewrite_from,
        local_hash=local_hash,
        sealed_secret=None,
        auth=UpstreamAuth.PASSWORD if password else UpstreamAuth.OAUTH2,
        sent_copy=_sent_copy_choice(args.sent_copy, provider),
        sent_folder=_checked_text(args.sent_folder, "--sent-folder"),
        enabled=not awaiting,
        awaiting_check=awaiting,
    )
    with open_store(config) as (store, key):
        if password is not None:
            sealed = key.seal(password, user_context(user, UPSTREAM_CREDENTIAL))
            user = replace(user, sealed_secret=sealed)
        store.add_user(user)
    announce_local_secret(login, local_secret, sys.stdout, sys.stderr)
    if awaiting:
        print(f"user {login}: disabled until 'relay check {login}' passes", file=sys.stderr)
    if password is None and organisation:
        note = f"user {login}: logs in with provider {provider.name}'s organisation credential"
        print(note, file=sys.stderr)
    elif password is None:
        print(f"user {login}: now run 'relay user authorize {login}' to sign in", file=sys.stderr)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """Print one line per user."""
    config = cli_config(args)
    with open_store(config) as (store, _):
        users = store.list_users()
        checks = store.last_checks()
        grants = {user.login: store.grants.get(user.login) for user in users}
        invited = store.invitations.pending()
    print(f"{'LOGIN':<20} {'PROVIDER':<16} {'EMAIL':<32} {'STATE':<14} LAST CHECK")
    for user in users:
        state = user_state(user, grants[user.login], organisation_user(config, user))
        if user.login in invited and user.local_hash == NO_LOCAL_SECRET:
            state = "awaiting-enrollment"  # `relay user invite` made them; the page waits
        check = _last_check(checks.get(user.login))
        print(f"{user.login:<20} {user.provider:<16} {user.email:<32} {state:<14} {check}")
    return 0


def _last_check(record: CheckRecord | None) -> str:
    """When the user was last checked, and pass or the stage that failed."""
    if record is None:
        return "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.checked_at))
    return f"{when} {'pass' if record.passed else f'fail at {record.failed_stage}'}"


def cmd_user_show(args: argparse.Namespace) -> int:
    """Print one user's settings, never a secret."""
    config = cli_config(args)
    with open_store(config) as (store, _):
        user = store.get_user(args.login)
        check = store.last_check(user.login)
        grant = store.grants.get(user.login)
    provider = config.providers.get(user.provider)
    organisation = organisation_user(config, user)
    for label, value in describe_user(user, provider, check, grant, organisation):
        print(f"{label + ':':<18} {value}")
    return 0


def describe_user(
    user: User,
    provider: ProviderConfig | None = None,
    check: CheckRecord | None = None,
    grant: OAuthGrant | None = None,
    organisation: bool = False,
) -> list[tuple[str, str]]:
    """Label/value pairs that describe a user without revealing any secret."""
    login = describe_login(user, grant)
    if organisation:
        login = f"OAuth2, with the organisation credential of provider {user.provider}"
    local = "chosen (scrypt hash)" if is_slow_hash(user.local_hash) else "generated (sha256 hash)"
    local = "none yet (awaiting enrollment)" if user.local_hash == NO_LOCAL_SECRET else local
    return [
        ("login", user.login),
        ("provider", user.provider),
        ("email", user.email),
        ("display name", user.display_name or "-"),
        ("upstream user", user.upstream_user),
        ("aliases", ", ".join(user.aliases) or "-"),
        ("rewrite from", "yes" if user.rewrite_from else "no"),
        ("state", user_state(user, grant, organisation)),
        ("upstream login", login),
        ("local secret", local),
        ("sent copy", _describe_sent_copy(user, provider)),
        ("sent folder", user.sent_folder or "- (found by relay)"),
        ("sent folder found", user.sent_folder_found or "-"),
        ("last check", "-" if check is None else f"{_last_check(check)}: {check.summary}"),
        ("created", timestamp(user.created_at)),
        ("updated", timestamp(user.updated_at)),
    ]


def _describe_sent_copy(user: User, provider: ProviderConfig | None) -> str:
    if provider is None:
        setting = user.sent_copy.value if user.sent_copy else "as provider"
        return f"{setting} (provider {user.provider!r} is not configured)"
    choice, whose = (user.sent_copy, "user") if user.sent_copy else (provider.sent_copy, "provider")
    return f"{choice.value} ({whose} setting): {plan_sent_copy(provider, user.sent_copy).value}"


def cmd_user_set(args: argparse.Namespace) -> int:
    """Change a user's provider, upstream user or Sent copy settings."""
    if args.sent_folder is not None and args.no_sent_folder:
        raise UsageError("give either --sent-folder or --no-sent-folder, not both")
    moving = args.provider is not None or args.upstream_user is not None
    sent = args.sent_copy is not None or args.sent_folder is not None or args.no_sent_folder
    if not moving and not sent:
        raise UsageError(
            "nothing to change: give --provider, --upstream-user, --sent-copy, --sent-folder "
            "or --no-sent-folder"
        )
    config = cli_config(args)
    with open_store(config) as (store, key):
        user = before = store.get_user(args.login)
        if moving:
            upstream = _checked_text(args.upstream_user, "--upstream-user")
            user = moved_user(config.providers, user, args.provider, upstream)
        if args.sent_copy is not None:
            provider = config.providers.get(user.provider)
            user = replace(user, sent_copy=_sent_copy_choice(args.sent_copy, provider))
        if args.sent_folder is not None or args.no_sent_folder:
            folder = _checked_text(args.sent_folder, "--sent-folder")
            user = replace(user, sent_folder=folder)
        if (user.provider, user.upstream_user) == (before.provider, before.upstream_user):
            store.update_user(user)
        else:
            if config.enable_after_check and (user.enabled or user.awaiting_check):
                user = replace(user, enabled=False, awaiting_check=True)
            rebind_user(store, key, before, user)
            print(f"user {user.login}: provider {user.provider}, upstream {user.upstream_user}")
    copy = user.sent_copy.value if user.sent_copy else "as provider"
    print(f"user {user.login}: sent copy {copy}, sent folder {user.sent_folder or '(found)'}")
    if user.awaiting_check and not before.awaiting_check:
        print(
            f"user {user.login}: disabled until 'relay check {user.login}' passes", file=sys.stderr
        )
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
    with open_store(cli_config(args)) as (store, _):
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
    with open_store(cli_config(args)) as (store, _):
        # Either way the operator decided: a later check neither enables nor keeps waiting.
        user = replace(store.get_user(args.login), enabled=enabled, awaiting_check=False)
        store.update_user(user)
    print(f"user {args.login} {'enabled' if enabled else 'disabled'}")
    return 0


def cmd_user_set_password(args: argparse.Namespace) -> int:
    """Replace a user's stored upstream secret."""
    config = cli_config(args)
    with open_store(config) as (store, key):
        user = store.get_user(args.login)
        password = read_password(args, f"upstream password for {user.email}: ")
        sealed = key.seal(password, user_context(user, UPSTREAM_CREDENTIAL))
        # A user someone disabled stays disabled; an enabled one waits for a passing check.
        awaiting = config.enable_after_check and (user.enabled or user.awaiting_check)
        if awaiting:
            user = replace(user, enabled=False, awaiting_check=True)
        store.update_user(replace(user, sealed_secret=sealed, auth=UpstreamAuth.PASSWORD))
        store.grants.forget(user.login)  # a password replaces an OAuth2 grant, if there was one
    print(f"upstream password of {args.login} replaced")
    if awaiting:
        print(
            f"user {args.login}: disabled until 'relay check {args.login}' passes", file=sys.stderr
        )
    return 0


def cmd_user_new_secret(args: argparse.Namespace) -> int:
    """Issue a new local secret; the old one stops working."""
    with open_store(cli_config(args)) as (store, _):
        user = store.get_user(args.login)
        local_secret, local_hash = read_local_secret(args.local_password_file)
        store.update_user(replace(user, local_hash=local_hash))
    announce_local_secret(user.login, local_secret, sys.stdout, sys.stderr)
    return 0


def lookup_mx(domain: str) -> list[str] | None:
    """The MX hosts of domain, or None when DNS cannot tell (offline, no answer, timeout)."""
    # Imported here: only `user add` needs DNS, and `relay serve` should not carry it.
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(domain, "MX", lifetime=MX_LOOKUP_SECONDS)
    except (dns.exception.DNSException, OSError):
        return None
    return [str(record.exchange).rstrip(".").lower() for record in answer]


def _checked_login(login: str) -> str:
    if not LOGIN_PATTERN.fullmatch(login):
        raise UsageError(
            f"login {login!r}: use 1-64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return login


def _checked_text(text: str | None, flag: str) -> str | None:
    if text is not None and (not text.isprintable() or not text.strip()):
        raise UsageError(f"{flag}: must be printable text without line breaks")
    return text
