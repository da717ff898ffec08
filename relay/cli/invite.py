"""`relay user invite LOGIN`: a one-time link to the enrollment page, for a new or known user."""

from __future__ import annotations

import argparse
import sys

from relay.cli.common import LOGIN_PATTERN, UsageError, checked_email, cli_config, open_store
from relay.cli.common import timestamp as when
from relay.config.model import RelayConfig
from relay.model import UpstreamAuth, User
from relay.providers.presets import email_fits
from relay.state.invites import NO_LOCAL_SECRET


def add_invite_command(users: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay user invite`."""
    invite = users.add_parser(
        "invite", help="print a one-time link where the user connects their own mailbox"
    )
    invite.add_argument("login")
    invite.add_argument("--provider", help="provider name from config.yaml (for a new user)")
    invite.add_argument("--email", help="the user's address at the provider (for a new user)")
    invite.add_argument("--display-name", help="name shown in From when rewriting it")
    invite.add_argument("--upstream-user", help="provider login, if not the email address")
    invite.set_defaults(run=cmd_user_invite)


def cmd_user_invite(args: argparse.Namespace) -> int:
    """Create the user awaiting enrollment if new; print a link that works once."""
    config = cli_config(args)
    link, user, created, expires = _invite(config, args)
    print(link)
    state = "created, awaiting enrollment" if created else "invited to enroll again"
    print(
        f"user {user.login}: {state}; the link works once, until {when(expires)}", file=sys.stderr
    )
    if not config.web.enabled:
        print(
            f"relay: warning: web.enabled is false in {config.source}: the link opens nothing "
            "until the web pages are turned on",
            file=sys.stderr,
        )
    return 0


def invitation(config: RelayConfig, login: str, provider: str | None, email: str) -> str:
    """A one-time link for login, creating them with provider and email if they are new."""
    args = argparse.Namespace(
        login=login, provider=provider, email=email, display_name=None, upstream_user=None
    )
    return _invite(config, args)[0]


def _invite(config: RelayConfig, args: argparse.Namespace) -> tuple[str, User, bool, float]:
    """(the link, the user, whether they were created, when the link expires)."""
    base = page_url(config)
    with open_store(config) as (store, _):
        user = store.find_user(args.login)
        if user is None:
            user = _new_user(config, args)
            store.add_user(user)
            created = True
        else:
            _same_account(user, args)
            created = False
        token = store.invitations.issue(user.login, config.web.invite_lifetime)
        expires = store.invitations.pending()[user.login].expires_at
    return f"{base}/enroll/{token.reveal()}", user, created, expires


def page_url(config: RelayConfig) -> str:
    """Where people open the pages: web.public_url, else the listener's own address."""
    web = config.web
    if web.public_url:
        return web.public_url
    if web.port == 0:
        raise UsageError(
            f"web.public_url: needed in {config.source} to print a link while web.port is 0"
        )
    host = f"[{web.address}]" if ":" in web.address else web.address
    return f"{'https' if web.tls_cert else 'http'}://{host}:{web.port}"


def _new_user(config: RelayConfig, args: argparse.Namespace) -> User:
    if args.provider is None or args.email is None:
        raise UsageError(f"no user {args.login!r} yet: give --provider and --email to invite one")
    provider = config.providers.get(args.provider)
    if provider is None:
        known = ", ".join(sorted(config.providers)) or "none configured"
        raise UsageError(f"unknown provider {args.provider!r} (known: {known})")
    if not LOGIN_PATTERN.fullmatch(args.login):
        raise UsageError(
            f"login {args.login!r}: use 1-64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    email = checked_email(args.email, "--email")
    problem = email_fits(email, provider.domains)
    if problem is not None:
        raise UsageError(f"--email: {problem}")
    for flag, text in (
        ("--display-name", args.display_name),
        ("--upstream-user", args.upstream_user),
    ):
        if text is not None and (not text.isprintable() or not text.strip()):
            raise UsageError(f"{flag}: must be printable text without line breaks")
    return User(
        login=args.login,
        provider=provider.name,
        email=email,
        upstream_user=args.upstream_user or email,
        display_name=args.display_name,
        local_hash=NO_LOCAL_SECRET,  # no local login until the page issues one
        sealed_secret=None,
        auth=UpstreamAuth.PASSWORD,
        enabled=False,
        awaiting_check=True,  # the page's passing Test enables them, as `relay check` would
    )


def _same_account(user: User, args: argparse.Namespace) -> None:
    """An existing user keeps their account: a different one is `relay user set`'s job."""
    if args.provider is not None and args.provider != user.provider:
        raise UsageError(
            f"user {user.login} exists with provider {user.provider!r}: move them with "
            f"'relay user set {user.login} --provider {args.provider}' first"
        )
    if args.email is not None and args.email.lower() != user.email.lower():
        raise UsageError(f"user {user.login} exists with address {user.email}, not {args.email}")
