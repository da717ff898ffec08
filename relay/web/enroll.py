"""The Test button: `relay check`'s stages for the user, and on a pass their enrollment."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from relay.check.diagnosis import run_check
from relay.check.report import CheckReport, StageResult
from relay.model import CheckRecord, OAuthGrant, Secret, UpstreamAuth, User
from relay.state.invites import NO_LOCAL_SECRET, Invitation
from relay.state.localauth import generate_local_secret, hash_generated_secret
from relay.state.sealing import UPSTREAM_CREDENTIAL, user_context
from relay.tls import TlsContexts
from relay.upstream.credentials import Credentials, UpstreamSecret, open_credentials
from relay.web.outcome import LocalLogin, Outcome
from relay.web.site import Site

logger = logging.getLogger(__name__)

SUMMARY_CHARS = 300  # as `relay check` keeps for `relay user list`


class _Candidate:
    """A password typed on the page, checked before anything is stored."""

    def __init__(self, password: Secret) -> None:
        self._password = password

    async def open(self) -> UpstreamSecret:
        return UpstreamSecret(self._password, bearer=False, identity="web-candidate")

    def grant(self) -> OAuthGrant | None:
        return None


class _Stored:
    """What relay holds for the user (password, or OAuth2 grant renewed as `relay check` does)."""

    def __init__(self, site: Site, user: User) -> None:
        self._site = site
        self._user = user
        self._credentials: Credentials | None = None

    async def open(self) -> UpstreamSecret:
        provider = self._site.config.providers[self._user.provider]  # the config stage checked
        if self._credentials is None:
            self._credentials = open_credentials(
                self._site.config, self._site.store, self._site.key, TlsContexts()
            )
        return await self._credentials.open(self._user, provider)

    def grant(self) -> OAuthGrant | None:
        return self._site.store.grants.get(self._user.login)

    async def close(self) -> None:
        if self._credentials is not None:
            await self._credentials.tokens.close()


async def run_test(
    site: Site,
    user: User,
    password: Secret | None,
    *,
    send_to: str | None = None,
    on_stage: Callable[[StageResult], Awaitable[None]] | None = None,
) -> Outcome:
    """Check the user with the typed password (or what relay holds); enroll them if it passes."""
    sealed = None
    if password is not None:
        sealed = site.key.seal(password, user_context(user, UPSTREAM_CREDENTIAL))
        candidate = replace(user, auth=UpstreamAuth.PASSWORD, sealed_secret=sealed)
        report = await run_check(
            site.config, candidate, _Candidate(password), send_to=send_to, on_stage=on_stage
        )
    else:
        stored = _Stored(site, user)
        try:
            report = await run_check(site.config, user, stored, send_to=send_to, on_stage=on_stage)
        finally:
            await stored.close()
    _record(site, report)
    if not report.passed:
        stage = report.failed.name if report.failed else "-"
        logger.info("web.test_failed user=%s stage=%s", user.login, stage)
        return Outcome(report)
    return Outcome(report, _enroll(site, user.login, sealed))


def _record(site: Site, report: CheckReport) -> None:
    failed = report.failed
    site.store.record_check(
        CheckRecord(
            login=report.login,
            checked_at=report.started_at,
            passed=report.passed,
            failed_stage=None if failed is None else failed.name,
            summary=report.summary()[:SUMMARY_CHARS],
            report=json.dumps(report.as_json()),
        )
    )


def _enroll(site: Site, login: str, sealed: bytes | None) -> LocalLogin | None:
    """Store what passed, enable a user who waited for it; a first local secret, shown once."""
    store = site.store
    user = store.get_user(login)  # as it is now: the admin may have changed it meanwhile
    method = "oauth2" if user.auth is UpstreamAuth.OAUTH2 else "app-password"
    if sealed is not None:
        user = replace(user, sealed_secret=sealed, auth=UpstreamAuth.PASSWORD)
        method = "app-password"
    first = user.local_hash == NO_LOCAL_SECRET
    secret = generate_local_secret() if first else None
    if secret is not None:
        user = replace(user, local_hash=hash_generated_secret(secret))
    if user.awaiting_check:  # a user the admin disabled stays disabled
        user = replace(user, enabled=True, awaiting_check=False)
    store.update_user(user)
    if sealed is not None:
        store.grants.forget(login)  # the password replaces an OAuth2 grant, if there was one
    store.invitations.enrolled(login)
    site.attempts.passed(login)
    if first or sealed is not None:
        logger.info("web.enrolled user=%s method=%s", login, method)
    else:
        logger.info("web.test_passed user=%s method=%s", login, method)
    return None if secret is None else local_login(site, user, secret)


def issue_new_secret(site: Site, login: str) -> LocalLogin:
    """A new generated local secret for an enrolled user; the old one stops working."""
    user = site.store.get_user(login)
    secret = generate_local_secret()
    user = replace(user, local_hash=hash_generated_secret(secret))
    site.store.update_user(user)
    logger.info("web.new_secret user=%s", login)
    return local_login(site, user, secret)


def local_login(site: Site, user: User, secret: Secret) -> LocalLogin:
    """The first SMTP listener as the app reaches it, with the user's login and secret."""
    bound = site.smtp_addresses()
    listen = site.config.listen
    host, port = bound[0] if bound else (listen[0].address, listen[0].port)
    starttls = bool(listen) and listen[0].tls_cert is not None
    return LocalLogin(host=host, port=port, starttls=starttls, login=user.login, secret=secret)


def user_state(user: User, grant: OAuthGrant | None, pending: Invitation | None) -> str:
    """The state the page names: awaiting-enrollment, needs-authorize, enabled, ..."""
    if pending is not None and not user.enabled and user.local_hash == NO_LOCAL_SECRET:
        return "awaiting-enrollment"
    if user.auth is UpstreamAuth.OAUTH2 and (
        grant is None or grant.sealed_refresh is None or grant.needs_authorization is not None
    ):
        return "needs-authorize"
    if user.enabled:
        return "enabled"
    return "awaiting-check" if user.awaiting_check else "disabled"


def holds_secret(user: User, grant: OAuthGrant | None) -> bool:
    """Whether relay holds something to test the user with: a password or a live grant."""
    if user.auth is UpstreamAuth.PASSWORD:
        return user.sealed_secret is not None
    return grant is not None and grant.sealed_refresh is not None
