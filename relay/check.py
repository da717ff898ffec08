"""`relay check`: one user's setup, stage by stage, on the code paths real delivery uses.

SMTP goes through aiosmtplib exactly as the pool opens sessions (pool.smtp_client, the same
TlsContexts, the same error classification in delivery.py), IMAP through relay/imap.py and
relay/sent.py, and the test mail through UpstreamPool.send and append_sent_copy. Each stage is
bounded in time; the first that fails ends the check, and every failure gets the hints table's
fix when one is known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from relay.checkmail import MailStages
from relay.checkreport import (
    STAGES,
    CheckContext,
    CheckReport,
    Found,
    StageFailure,
    StageResult,
    StageSkipped,
    Status,
)
from relay.checksmtp import SmtpStages
from relay.config import ProviderConfig, RelayConfig
from relay.delivery import TlsContexts
from relay.errors import MasterKeyError, StoreError
from relay.hints import find_rule
from relay.keys import Secret
from relay.providers import email_fits
from relay.sent import plan_sent_copy
from relay.store import User

Stage = Callable[[], Awaitable[Found]]


async def run_check(
    config: RelayConfig,
    user: User,
    open_secret: Callable[[], Secret],
    *,
    send_to: str | None = None,
    tls: TlsContexts | None = None,
) -> CheckReport:
    """Run every stage in order for user, stopping at the first that fails."""
    started, clock = time.time(), time.monotonic()
    provider = config.providers.get(user.provider)
    opened: list[Secret] = []

    async def config_stage() -> Found:
        found, secret = _check_config(config, user, provider, open_secret)
        opened.append(secret)
        return found

    results = [await _run_stage("config", config_stage, config.upstream.timeout, None)]
    if provider is not None and opened:
        context = CheckContext(config, user, provider, opened[0], tls or TlsContexts())
        smtp, mail = SmtpStages(context), MailStages(context, send_to)
        connect, command = context.connect_timeout, context.timeout
        stages: dict[str, tuple[Stage, float]] = {
            "dns": (smtp.dns, connect),
            "tcp": (smtp.tcp, connect),
            "tls": (smtp.tls, connect + command),
            "ehlo": (smtp.ehlo, command),
            "auth": (smtp.auth, command),
            "imap-login": (mail.imap_login, connect + 3 * command),
            "sent-folder": (mail.sent_folder, 2 * command),
            "send": (mail.send, connect + 6 * command),
            "sent-copy": (mail.sent_copy, connect + 8 * command),
        }
        try:
            for name, (stage, limit) in stages.items():
                if results[-1].status is Status.FAIL:
                    break
                results.append(await _run_stage(name, stage, limit, provider.preset))
        finally:
            await smtp.close()
            await mail.close()
    ran = {result.name for result in results}
    not_run = [name for name in STAGES if name not in ran]
    results += [StageResult(name, Status.SKIP, 0.0, "not run: a stage failed") for name in not_run]
    return CheckReport(
        login=user.login,
        provider=user.provider,
        preset=None if provider is None else provider.preset,
        started_at=started,
        seconds=time.monotonic() - clock,
        stages=tuple(results),
    )


async def _run_stage(name: str, stage: Stage, limit: float, preset: str | None) -> StageResult:
    """Run one stage within limit seconds and turn what happened into its result."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            found = await stage()
    except StageSkipped as skipped:
        return StageResult(name, Status.SKIP, time.monotonic() - began, str(skipped))
    except StageFailure as failure:
        return _failed(name, time.monotonic() - began, failure, preset)
    except TimeoutError:
        timed_out = StageFailure(
            f"no answer within {limit:g} s",
            f"stage {name} timed out after {limit:g} s",
            fix="check that the server is up and that the host and port are right",
        )
        return _failed(name, time.monotonic() - began, timed_out, preset)
    seconds = time.monotonic() - began
    return StageResult(
        name, Status.PASS, seconds, found.summary, warnings=found.warnings, facts=found.facts
    )


def _failed(name: str, seconds: float, failure: StageFailure, preset: str | None) -> StageResult:
    rule = find_rule(preset, failure.reply or failure.summary)
    fix, source = (rule.hint.text, rule.hint.source) if rule else (failure.fix, None)
    return StageResult(
        name,
        Status.FAIL,
        seconds,
        failure.summary,
        reply=failure.reply,
        fix=fix,
        source=source,
        facts=failure.facts,
    )


def _check_config(
    config: RelayConfig,
    user: User,
    provider: ProviderConfig | None,
    open_secret: Callable[[], Secret],
) -> tuple[Found, Secret]:
    """The user's provider is configured and their stored password opens."""
    if provider is None:
        raise StageFailure(
            f"provider {user.provider!r} is not configured",
            None,
            fix=f"add {user.provider!r} under providers: in {config.source}",
        )
    if user.sealed_secret is None:
        fix = f"store one with 'relay user set-password {user.login}'"
        raise StageFailure("no upstream password is stored", None, fix=fix)
    try:
        secret = open_secret()
    except (MasterKeyError, StoreError) as error:
        raise StageFailure(
            "the stored upstream password cannot be opened",
            str(error),
            fix="use the key file 'relay init' made, or store the password again with "
            f"'relay user set-password {user.login}'",
        ) from None
    warnings = [] if (misfit := email_fits(user.email, provider.domains)) is None else [misfit]
    if not user.enabled:
        warnings.append(
            "the user is disabled until this check passes"
            if user.awaiting_check
            else f"the user is disabled ('relay user enable {user.login}' enables them)"
        )
    smtp, imap = provider.smtp, provider.imap
    plan = plan_sent_copy(provider, user.sent_copy)
    facts: dict[str, object] = {
        "provider": provider.name,
        "preset": provider.preset,
        "smtp": f"{smtp.host}:{smtp.port} {smtp.tls.value}",
        "imap": None if imap is None else f"{imap.host}:{imap.port} {imap.tls.value}",
        "upstream_user": user.upstream_user,
        "sent_copy": plan.value,
    }
    kind = f"preset {provider.preset}" if provider.preset else "explicit"
    summary = f"provider {provider.name} ({kind}): smtp {facts['smtp']}, "
    summary += f"imap {facts['imap']}" if imap else "no imap"
    return Found(f"{summary}; Sent copy: {plan.value}", facts, tuple(warnings)), secret
