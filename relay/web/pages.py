"""The pages: the link's landing, the user's own page, Test, and a new local secret."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.check.report import CheckReport, StageResult, Status
from relay.errors import InvitationRefused
from relay.model import Secret, UpstreamAuth, User
from relay.state.invites import NO_LOCAL_SECRET, Refusal
from relay.web.enroll import LocalLogin, issue_new_secret, run_test, user_state
from relay.web.guard import FORM_ACTION_KEY, form_of, require_session, rotate_session
from relay.web.language import Catalogue
from relay.web.signin import sign_in_origin
from relay.web.site import PageError, Site, site_of

logger = logging.getLogger(__name__)

MAX_PASSWORD_CHARS = 1024
# Whose sign-in button the page shows, by preset; an explicit provider shows its own name.
SIGN_IN_BRANDS = {
    "gmail": "Google",
    "google-workspace": "Google",
    "office365": "Microsoft",
    "outlook": "Microsoft",
}
LINK_REFUSALS = {
    Refusal.UNKNOWN.value: (404, "error.link_unknown"),
    Refusal.USED.value: (410, "error.link_used"),
    Refusal.EXPIRED.value: (410, "error.link_expired"),
}


async def index(request: web.Request) -> web.StreamResponse:
    """GET /: the user's page once a link was used in this browser, else how to get there."""
    site = site_of(request)
    if require_session(request).login is not None:
        return web.Response(status=303, headers={"Location": site.url("/me")})
    return site.render(request, "message.html", message="error.no_session", fields={})


async def landing(request: web.Request) -> web.StreamResponse:
    """GET /enroll/TOKEN: who the link is for, and a button; looking does not use it up."""
    site, token = site_of(request), request.match_info["token"]
    user = _invited_user(site, token, consume=False)
    return site.render(
        request,
        "landing.html",
        user=user,
        provider=provider_label(site, user),
        action=site.url(f"/enroll/{token}"),
    )


async def redeem(request: web.Request) -> web.StreamResponse:
    """POST /enroll/TOKEN: use the link up and bind this browser's session to its user."""
    await form_of(request)
    site = site_of(request)
    user = _invited_user(site, request.match_info["token"], consume=True)
    session = rotate_session(request)
    session.login = user.login
    logger.info("web.link_used user=%s", user.login)
    return web.Response(status=303, headers={"Location": site.url("/me")})


async def me(request: web.Request) -> web.StreamResponse:
    """GET /me: the user's page."""
    site = site_of(request)
    return _page(request, site, _session_user(request, site))


async def test(request: web.Request) -> web.StreamResponse:
    """POST /test: run the staged check with the typed app password, or the stored sign-in."""
    fields = await form_of(request)
    site = site_of(request)
    user = _session_user(request, site)
    wait = site.attempts.wait(user.login)
    if wait > 0:
        raise PageError(429, "error.throttled", seconds=f"{wait:.0f}")
    password = _password(fields.get("password", ""))
    if password is None and not _has_grant(site, user):
        return _page(request, site, user, notice=("password.missing", {}))
    outcome = await run_test(site, user, password)
    if not outcome.report.passed:
        site.attempts.failed(user.login)
        return _page(request, site, user, report=outcome.report)
    if outcome.issued is not None:
        return _credentials(request, site, outcome.issued)
    kept: tuple[str, dict[str, str]] = (
        ("password.kept", {}) if password is not None else ("test.passed", {})
    )
    return _page(request, site, site.store.get_user(user.login), report=outcome.report, notice=kept)


async def new_secret(request: web.Request) -> web.StreamResponse:
    """POST /secret: a new local secret for an enrolled user, shown once."""
    await form_of(request)
    site = site_of(request)
    user = _session_user(request, site)
    if user.local_hash == NO_LOCAL_SECRET:
        raise PageError(409, "error.no_session")
    return _credentials(request, site, issue_new_secret(site, user.login))


def provider_label(site: Site, user: User) -> str:
    """The provider as people know it: Google, Microsoft, or its name in the config."""
    provider = site.provider(user)
    preset = provider.preset if provider else None
    return SIGN_IN_BRANDS.get(preset or "", user.provider)


def shown_stages(report: CheckReport, catalogue: Catalogue) -> list[dict[str, str | None]]:
    """The stages that ran, each with its words and the fix a person can act on."""
    shown = []
    for stage in report.stages:
        if stage.status is Status.SKIP:
            continue
        shown.append(
            {
                "name": stage.name,
                "label": catalogue.text(f"stage.{stage.name}"),
                "status": stage.status.value,
                "status_label": catalogue.text(f"status.{stage.status.value}"),
                "summary": stage.summary,
                "reply": stage.reply,
                "fix": _fix(stage, catalogue),
                "source": stage.source,
            }
        )
    return shown


def _fix(stage: StageResult, catalogue: Catalogue) -> str | None:
    if stage.status is not Status.FAIL:
        return None
    parts = []
    if catalogue.has(f"fix.{stage.name}"):
        parts.append(catalogue.text(f"fix.{stage.name}"))
    # The check's own fix, unless it is an admin's command the user cannot run.
    if stage.fix and "relay " not in stage.fix and "config" not in stage.fix:
        parts.append(stage.fix)
    return " ".join(parts) or catalogue.text("fix.other")


def _page(
    request: web.Request,
    site: Site,
    user: User,
    *,
    report: CheckReport | None = None,
    notice: tuple[str, dict[str, str]] | None = None,
) -> web.Response:
    session = require_session(request)
    if notice is None and session.notice is not None:
        notice, session.notice = session.notice, None
    catalogue = site.catalogue(request)
    provider = site.provider(user)
    preset = provider.preset if provider else None
    steps_key = f"steps.{preset}" if catalogue.has(f"steps.{preset}") else "steps.generic"
    grant = site.store.grants.get(user.login)
    pending = site.store.invitations.pending().get(user.login)
    failed = report.failed if report else None
    response = site.render(
        request,
        "page.html",
        user=user,
        state=user_state(user, grant, pending),
        provider=provider_label(site, user),
        oauth=provider is not None and provider.oauth2 is not None,
        has_grant=_has_grant(site, user),
        redirect_uri=site.redirect_uri,
        steps=catalogue.items(steps_key),
        mistakes=catalogue.items(steps_key.replace("steps.", "mistakes.", 1)),
        stages=None if report is None else shown_stages(report, catalogue),
        failed=None if failed is None else catalogue.text(f"stage.{failed.name}"),
        notice=notice,
        enrolled=user.local_hash != NO_LOCAL_SECRET,
    )
    origin = sign_in_origin(site, user)
    response[FORM_ACTION_KEY] = () if origin is None else (origin,)
    return response


def _credentials(request: web.Request, site: Site, issued: LocalLogin) -> web.Response:
    return site.render(request, "credentials.html", issued=issued, secret=issued.secret.reveal())


def _invited_user(site: Site, token: str, *, consume: bool) -> User:
    try:
        login = site.store.invitations.redeem(token, consume=consume)
    except InvitationRefused as refused:
        event = (
            "web.link_expired" if refused.reason == Refusal.EXPIRED.value else "web.link_refused"
        )
        logger.info("%s user=%s reason=%s", event, refused.login or "-", refused.reason)
        status, key = LINK_REFUSALS[refused.reason]
        raise PageError(status, key) from None
    user = site.store.find_user(login)
    if user is None:
        raise PageError(410, "error.gone")
    return user


def _session_user(request: web.Request, site: Site) -> User:
    login = require_session(request).login
    if login is None:
        raise PageError(403, "error.no_session")
    user = site.store.find_user(login)
    if user is None:
        raise PageError(410, "error.gone")
    return user


def _has_grant(site: Site, user: User) -> bool:
    grant = site.store.grants.get(user.login)
    return (
        user.auth is UpstreamAuth.OAUTH2 and grant is not None and grant.sealed_refresh is not None
    )


def _password(text: str) -> Secret | None:
    """The typed app password without the line break a paste may bring; None when empty."""
    text = text.strip()
    if not text:
        return None
    if len(text) > MAX_PASSWORD_CHARS or not text.isprintable():
        raise PageError(400, "error.input", why="a password is one line of printable text")
    return Secret(text)
