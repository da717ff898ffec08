"""The pages: the link's landing, the user's own page, and a new local secret."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.check.report import CheckReport
from relay.errors import InvitationRefused
from relay.model import UpstreamAuth, User
from relay.state.invites import NO_LOCAL_SECRET, Refusal
from relay.web.activity import read_activity
from relay.web.device import offers_device
from relay.web.enroll import holds_secret, issue_new_secret, user_state
from relay.web.grantage import grant_age
from relay.web.guard import FORM_ACTION_KEY, form_of, require_session, rotate_session
from relay.web.outcome import LocalLogin
from relay.web.signin import sign_in_origin
from relay.web.site import PageError, Site, site_of
from relay.web.stages import shown_stages
from relay.web.users import provider_label, session_user

logger = logging.getLogger(__name__)

LINK_REFUSALS = {
    Refusal.UNKNOWN.value: (404, "error.link_unknown"),
    Refusal.USED.value: (410, "error.link_used"),
    Refusal.EXPIRED.value: (410, "error.link_expired"),
}


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
    """GET /me: the user's page, with the last Test's report (or the new login) shown once."""
    site = site_of(request)
    user = session_user(request, site)
    session = require_session(request)
    outcome, session.outcome = session.outcome, None
    if outcome is not None and outcome.issued is not None:
        return _credentials(request, site, outcome.issued, outcome.report)
    return await _page(request, site, user, None if outcome is None else outcome.report)


async def new_secret(request: web.Request) -> web.StreamResponse:
    """POST /secret: a new local secret for an enrolled user, shown once."""
    await form_of(request)
    site = site_of(request)
    user = session_user(request, site)
    if user.local_hash == NO_LOCAL_SECRET:
        raise PageError(409, "error.no_session")
    return _credentials(request, site, issue_new_secret(site, user.login), None)


async def _page(
    request: web.Request, site: Site, user: User, report: CheckReport | None
) -> web.Response:
    session = require_session(request)
    notice, session.notice = session.notice, None
    catalogue = site.catalogue(request)
    provider = site.provider(user)
    preset = provider.preset if provider else None
    steps_key = f"steps.{preset}" if catalogue.has(f"steps.{preset}") else "steps.generic"
    grant = site.store.grants.get(user.login)
    pending = site.store.invitations.pending().get(user.login)
    failed = report.failed if report else None
    enrolled = user.local_hash != NO_LOCAL_SECRET
    holds = holds_secret(user, grant)
    response = site.render(
        request,
        "page.html",
        user=user,
        state=user_state(user, grant, pending),
        provider=provider_label(site, user),
        oauth=provider is not None and provider.oauth2 is not None,
        has_grant=user.auth is UpstreamAuth.OAUTH2 and holds,
        holds_password=user.auth is UpstreamAuth.PASSWORD and holds,
        redirect_uri=site.redirect_uri,
        steps=catalogue.items(steps_key),
        mistakes=catalogue.items(steps_key.replace("steps.", "mistakes.", 1)),
        stages=None if report is None else shown_stages(report, catalogue),
        failed=None if failed is None else catalogue.text(f"stage.{failed.name}"),
        notice=notice,
        enrolled=enrolled,
        activity=await read_activity(site, user.login) if enrolled else None,
        device_offered=offers_device(provider),
        grant_age=grant_age(site, user, grant),
    )
    origin = sign_in_origin(provider)
    response[FORM_ACTION_KEY] = () if origin is None else (origin,)
    return response


def _credentials(
    request: web.Request, site: Site, issued: LocalLogin, report: CheckReport | None
) -> web.Response:
    catalogue = site.catalogue(request)
    return site.render(
        request,
        "credentials.html",
        issued=issued,
        secret=issued.secret.reveal(),
        stages=None if report is None else shown_stages(report, catalogue),
    )


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
