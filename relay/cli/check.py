"""`relay check LOGIN [--send-to ADDR] [--json]`: wiring, storing the result, and its output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from relay.cli.common import checked_email, cli_config
from relay.config.model import RelayConfig
from relay.errors import RelayError
from relay.model import CheckRecord, OAuthGrant, User
from relay.state.keys import MasterKey, key_path, load_key
from relay.state.store import Store
from relay.tls import TlsContexts
from relay.upstream.credentials import Credentials, UpstreamSecret, open_credentials

if TYPE_CHECKING:
    from relay.check.report import CheckReport, StageResult

SUMMARY_CHARS = 300  # of the one-line summary kept for `relay user list` and `user show`


def add_check_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `relay check`."""
    check = commands.add_parser(
        "check", help="diagnose one user's setup stage by stage (DNS, TLS, AUTH, IMAP, Sent)"
    )
    check.add_argument("login")
    check.add_argument(
        "--send-to",
        metavar="ADDR",
        help="also send a test mail to ADDR and look for its copy in the Sent folder",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON (schema: docs/check-report.schema.json)",
    )
    check.set_defaults(run=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Check one user; store the result; exit 1 when a stage failed."""
    config = cli_config(args)
    send_to = None if args.send_to is None else checked_email(args.send_to, "--send-to")
    key = _master_key(config.key_file)
    store = Store.open(config.database_path, key if isinstance(key, MasterKey) else None)
    try:
        user = store.get_user(args.login)
        secrets = _Secrets(config, store, user, key)
        report = asyncio.run(_checked(config, user, secrets, send_to))
        if report.passed and user.awaiting_check:
            store.update_user(replace(user, enabled=True, awaiting_check=False))
            report = replace(report, user_enabled=True)
        store.record_check(
            CheckRecord(
                login=user.login,
                checked_at=report.started_at,
                passed=report.passed,
                failed_stage=None if report.failed is None else report.failed.name,
                summary=report.summary()[:SUMMARY_CHARS],
                report=json.dumps(report.as_json()),
            )
        )
    finally:
        store.close()
    if args.json:
        json.dump(report.as_json(), sys.stdout, indent=2)
        print()
    else:
        print_report(report, sys.stdout)
    return 0 if report.passed else 1


async def _checked(
    config: RelayConfig, user: User, secrets: _Secrets, send_to: str | None
) -> CheckReport:
    # Imported here: `relay serve` should not carry the diagnosis code (and x509) in memory.
    from relay.check.diagnosis import run_check

    try:
        return await run_check(config, user, secrets, send_to=send_to)
    finally:
        await secrets.close()


def _master_key(configured: Path) -> MasterKey | RelayError:
    """The master key, or why it cannot be loaded (the config stage reports that)."""
    try:
        return load_key(key_path(configured, os.environ))
    except RelayError as error:
        return error


class _Secrets:
    """Opens the user's upstream secret when the check needs it (relay.check.CheckSecrets)."""

    def __init__(
        self, config: RelayConfig, store: Store, user: User, key: MasterKey | RelayError
    ) -> None:
        self._config = config
        self._store = store
        self._user = user
        self._key = key
        self._credentials: Credentials | None = None

    async def open(self) -> UpstreamSecret:
        if isinstance(self._key, RelayError):
            raise self._key
        provider = self._config.providers[self._user.provider]  # the config stage checked it
        if self._credentials is None:
            self._credentials = open_credentials(
                self._config, self._store, self._key, TlsContexts()
            )
        return await self._credentials.open(self._user, provider)

    def grant(self) -> OAuthGrant | None:
        return self._store.grants.get(self._user.login)

    async def close(self) -> None:
        if self._credentials is not None:
            await self._credentials.tokens.close()


def print_report(report: CheckReport, out: TextIO) -> None:
    """The report for people: one line per stage, with the reply and a fix under a failure."""
    kind = f"preset {report.preset}" if report.preset else "explicit"
    print(f"relay check {report.login}: provider {report.provider} ({kind})", file=out)
    for stage in report.stages:
        _print_stage(stage, out)
    failed = report.failed
    if failed is None:
        warnings = sum(len(stage.warnings) for stage in report.stages)
        note = f" with {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
        print(f"passed in {report.seconds:.2f}s{note}", file=out)
    else:
        print(f"failed at {failed.name} after {report.seconds:.2f}s", file=out)
    if report.user_enabled:
        print(f"user {report.login} enabled: the check passed", file=out)


def _print_stage(stage: StageResult, out: TextIO) -> None:
    from relay.check.report import Status

    ran = stage.status is not Status.SKIP or stage.seconds > 0
    seconds = f"{stage.seconds:6.2f}s" if ran else f"{'-':>7}"
    status = stage.status.value.upper()
    print(f"{status:<4}  {stage.name:<11} {seconds}  {stage.summary}", file=out)
    indent = " " * 6
    if stage.reply and stage.reply not in stage.summary:
        print(f"{indent}reply: {stage.reply}", file=out)
    if stage.fix:
        print(f"{indent}fix: {stage.fix}", file=out)
    if stage.source:
        print(f"{indent}source: {stage.source}", file=out)
    for warning in stage.warnings:
        print(f"{indent}warning: {warning}", file=out)
