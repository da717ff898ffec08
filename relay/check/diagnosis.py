"""`relay check`: one user's setup, stage by stage, on the code paths real delivery uses.

SMTP goes through aiosmtplib exactly as the pool opens sessions (pool.smtp_client, the same
TlsContexts, the same error classification in relay.upstream.replies), IMAP through
relay.sent.imap and relay.sent.filing, and the test mail through UpstreamPool.send and
append_sent_copy. Each stage is bounded in time; the first that fails ends the check, and every
failure gets the hints table's fix when one is known.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from relay.check.appcredential import certificate_facts
from relay.check.graphstages import graph_stages, not_run_because
from relay.check.mailstages import MailStages
from relay.check.report import (
    STAGES,
    CheckContext,
    CheckReport,
    Found,
    StageFailure,
    StageResult,
    StageSkipped,
    Status,
)
from relay.check.smtpstages import SmtpStages
from relay.config.model import OAuthSettings, ProviderConfig, RelayConfig
from relay.errors import AuthorizationNeeded, MasterKeyError, StoreError, UpstreamError
from relay.model import OAuthGrant, UpstreamAuth, User
from relay.oauth.lifetimes import expiry_warning
from relay.providers.hints import find_rule
from relay.providers.presets import Transport, email_fits
from relay.sent.filing import plan_sent_copy
from relay.tls import TlsContexts
from relay.upstream.credentials import UpstreamSecret

Stage = Callable[[], Awaitable[Found]]


class CheckSecrets(Protocol):
    """Opens the user's upstream secret for the check, and reads their OAuth2 grant."""

    async def open(self) -> UpstreamSecret:
        """The password, or a freshly renewed access token."""

    def grant(self) -> OAuthGrant | None:
        """The user's grant as stored now."""


async def run_check(
    config: RelayConfig,
    user: User,
    secrets: CheckSecrets,
    *,
    send_to: str | None = None,
    tls: TlsContexts | None = None,
    on_stage: Callable[[StageResult], Awaitable[None]] | None = None,
) -> CheckReport:
    """Run every stage in order for user, stopping at the first that fails; on_stage hears each."""
    started, clock = time.time(), time.monotonic()
    provider = config.providers.get(user.provider)
    opened: list[UpstreamSecret] = []
    oauth2 = user.auth is UpstreamAuth.OAUTH2

    async def config_stage() -> Found:
        found = _check_config(config, user, provider)
        if not oauth2:
            opened.append(await _open_password(user, secrets))
        return found

    async def oauth2_stage() -> Found:
        if not oauth2:
            raise StageSkipped("logs in with a password")
        found, secret = await _open_token(user, provider, secrets)
        opened.append(secret)
        return found

    results: list[StageResult] = []

    async def finished(result: StageResult) -> None:
        results.append(result)
        if on_stage is not None:
            await on_stage(result)  # the web page shows each stage as it ends

    timeout = config.upstream.timeout
    await finished(await _run_stage("config", config_stage, timeout, None))
    if results[-1].status is not Status.FAIL:
        preset = None if provider is None else provider.preset
        # Up to three token requests with pauses between them (relay/oauth/client.py).
        await finished(await _run_stage("oauth2", oauth2_stage, 3 * timeout + 3, preset))
    if provider is not None and opened:
        secret = opened[0]
        context = CheckContext(
            config, user, provider, secret.secret, tls or TlsContexts(), bearer=secret.bearer
        )
        smtp, mail = SmtpStages(context), MailStages(context, send_to)
        connect, command = context.connect_timeout, context.timeout
        graph = provider.transport is Transport.GRAPH
        stages: dict[str, tuple[Stage, float]] = (
            graph_stages(context, send_to)
            if graph
            else {
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
        )
        try:
            for name, (stage, limit) in stages.items():
                if results[-1].status is Status.FAIL:
                    break
                await finished(await _run_stage(name, stage, limit, provider.preset))
        finally:
            await smtp.close()
            await mail.close()
    ran = {result.name for result in results}
    not_run = [name for name in STAGES if name not in ran]
    graph = provider is not None and provider.transport is Transport.GRAPH
    results += [
        StageResult(name, Status.SKIP, 0.0, not_run_because(name, graph)) for name in not_run
    ]
    results.sort(key=lambda result: STAGES.index(result.name))  # the documented order
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
    rule = find_rule(preset, failure.reply or failure.summary) if failure.hints else None
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


def _check_config(config: RelayConfig, user: User, provider: ProviderConfig | None) -> Found:
    """The user's provider is configured, with what the user's way of logging in needs."""
    if provider is None:
        raise StageFailure(
            f"provider {user.provider!r} is not configured",
            None,
            fix=f"add {user.provider!r} under providers: in {config.source}",
        )
    if user.auth is UpstreamAuth.OAUTH2 and provider.oauth2 is None:
        raise StageFailure(
            f"{user.login} logs in with OAuth2; provider {provider.name!r} has no oauth2 section",
            None,
            fix=f"add providers.{provider.name}.oauth2 with relay's client_id to {config.source} "
            "(README: OAuth2), or store a password with 'relay user set-password'",
        )
    if user.auth is UpstreamAuth.PASSWORD and user.sealed_secret is None:
        fix = f"store one with 'relay user set-password {user.login}'"
        raise StageFailure("no upstream password is stored", None, fix=fix)
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
        "login": user.auth.value,
    }
    kind = f"preset {provider.preset}" if provider.preset else "explicit"
    summary = f"provider {provider.name} ({kind}): smtp {facts['smtp']}, "
    summary += f"imap {facts['imap']}" if imap else "no imap"
    return Found(f"{summary}; Sent copy: {plan.value}", facts, tuple(warnings))


async def _open_password(user: User, secrets: CheckSecrets) -> UpstreamSecret:
    try:
        return await secrets.open()
    except (MasterKeyError, StoreError) as error:
        raise StageFailure(
            "the stored upstream password cannot be opened",
            str(error),
            fix="use the key file 'relay init' made, or store the password again with "
            f"'relay user set-password {user.login}'",
        ) from None


async def _open_token(
    user: User, provider: ProviderConfig | None, secrets: CheckSecrets
) -> tuple[Found, UpstreamSecret]:
    """Renew the access token and say what the grant holds."""
    before = secrets.grant()
    try:
        opened = await secrets.open()
    except AuthorizationNeeded as error:
        raise StageFailure(
            f"relay is not authorized to send as {user.upstream_user}: {error.reason}",
            error.reason,
            fix=f"run 'relay user authorize {user.login}'; queued mail goes out once it is done",
        ) from None
    except (MasterKeyError, StoreError) as error:
        raise StageFailure(
            "the stored refresh token cannot be opened",
            str(error),
            fix=f"use the key file 'relay init' made, or run 'relay user authorize {user.login}'",
        ) from None
    except UpstreamError as error:
        fix = error.hint or f"run 'relay user authorize {user.login}' if this persists"
        # An organisation credential's failure comes with its own fix; passwords' hints do not.
        oauth2 = provider.oauth2 if provider is not None else None
        organisation = oauth2 is not None and oauth2.organisation
        raise StageFailure(error.text, error.text, fix=fix, hints=not organisation) from None
    if provider is not None and provider.oauth2 is not None and provider.oauth2.organisation:
        return organisation_token(provider.oauth2, user), opened
    grant = secrets.grant() or OAuthGrant(user.login, None)
    return _token_state(before, grant, provider), opened


def organisation_token(settings: OAuthSettings, user: User) -> Found:
    """What the oauth2 stage found for a user of an organisation credential: no grant."""
    if settings.service_account_file is not None:
        how = f"service account (domain-wide delegation) for {user.upstream_user}"
    else:
        how = f"app-only token of client {settings.client_id} (client credentials)"
    facts: dict[str, object] = {"scopes": list(settings.scopes), "organisation": how}
    facts_more, warnings = certificate_facts(settings, time.time())
    summary = f"got an access token: {how}; scopes {' '.join(settings.scopes)}"
    return Found(summary, facts | facts_more, warnings)


def _token_state(
    before: OAuthGrant | None, grant: OAuthGrant, provider: ProviderConfig | None
) -> Found:
    """The grant after the renewal: scopes granted, expiry, and when it was refreshed before."""
    now = time.time()
    expires = grant.access_expires_at or now
    asked = provider.oauth2.scopes if provider and provider.oauth2 else ()
    # offline_access only asks for a refresh token; providers do not list it among the granted.
    missing = [s for s in asked if s != "offline_access" and not _granted(s, grant.scopes)]
    warnings = tuple(
        f"the provider did not grant {scope}: sign in again with 'relay user authorize "
        f"{grant.login}' and accept every permission"
        for scope in missing
    )
    ending = expiry_warning(provider, grant, grant.login, now)
    warnings += () if ending is None else (ending,)
    previous = before.refreshed_at if before else None
    facts: dict[str, object] = {
        "scopes": list(grant.scopes),
        "access_expires_at": _iso(expires),
        "refreshed_at": _iso(grant.refreshed_at),
        "previous_refresh_at": _iso(previous),
        "authorized_at": _iso(grant.authorized_at),
    }
    summary = (
        f"access token renewed, good for {_minutes(expires - now)}; "
        f"scopes {' '.join(grant.scopes) or '(none listed)'}; "
        f"authorized {facts['authorized_at'] or 'at an unknown time'}; "
        f"last refresh before this check {_ago(previous, now)}"
    )
    return Found(summary, facts, warnings)


def _granted(scope: str, granted: tuple[str, ...]) -> bool:
    """Whether scope is among those granted, however the server spells it back."""
    # A server may answer with another case, or without the resource prefix (SMTP.Send).
    short = scope.rsplit("/", 1)[-1].lower()
    return any(g.lower() in (scope.lower(), short) for g in granted)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")


def _minutes(seconds: float) -> str:
    return f"{max(seconds, 0) / 60:.0f} min"


def _ago(moment: float | None, now: float) -> str:
    return "never" if moment is None else f"{_minutes(now - moment)} ago"
