"""Reading the secrets a CLI command is given: upstream passwords and local secrets."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TextIO

from relay.cli.common import UsageError
from relay.model import Secret
from relay.state.localauth import generate_local_secret, hash_chosen_secret, hash_generated_secret


def read_password(args: argparse.Namespace, prompt: str) -> Secret:
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


def read_local_secret(chosen_file: Path | None) -> tuple[Secret | None, str]:
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


def announce_local_secret(login: str, secret: Secret | None, out: TextIO, err: TextIO) -> None:
    if secret is None:
        print(f"user {login}: local secret set from file", file=err)
        return
    print(
        f"user {login}: local SMTP login {login!r}; its secret follows, shown only this once",
        file=err,
    )
    print(secret.reveal(), file=out)
