"""Sign in with a code (RFC 8628 device flow) from the user's page, for hosts with no redirect URI.

The page shows the provider's verification address and the user code. device.js then asks
/oauth2/device/status, which polls the token endpoint no faster than the provider asked, until
there is an answer; without JavaScript, "I have signed in" asks the same. The account that
signed in must be the user's, and the grant is kept as the code flow's callback keeps it.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass

from aiohttp import web

from relay.config.model import ProviderConfig
from relay.errors import OAuthError, TokenEndpointUnavailable
from relay.model import OAuthClient, User
from relay.oauth.client import TokenGrant
from relay.oauth.devicepoll import DevicePoll, poll_once
from relay.web.guard import form_of, require_session
from relay.web.identity import signed_in_account
from relay.web.sessions import BrowserSession
from relay.web.signin import accept_sign_in, client_for, token_endpoint
from relay.web.site import PageError, Site, site_of
from relay.web.users import provider_label, session_user

logger = logging.getLogger(__name__)

WAITING_PATH = "/oauth2/device"
# RFC 8628 §3.5 names these; anything else ends the wait as a failed sign-in.
REFUSALS = {
    "access_denied": (403, "device.denied"),
    "expired_token": (410, "device.expired"),
}


class Progress(enum.Enum):
    """Where a sign-in with a code stands after one look."""

    PENDING = "pending"  # the user has not answered at the provider yet
    SIGNED_IN = "signed_in"  # the grant is kept: on to the user's page
    REFUSED = "refused"  # it ended without a grant; nothing was stored
    ENDED = "ended"  # another request (the button, a second tab) ended it: to the user's page


@dataclass(frozen=True, slots=True)
class Answer:
    """One look at a sign-in with a code: its progress, and what to show or wait."""

    progress: Progress
    wait: float = 0.0  # seconds before it is worth asking again (pending)
    refusal: PageError | None = None  # what to show (refused)


def offers_device(provider: ProviderConfig | None) -> bool:
    """Whether the page offers a sign-in with a code: the provider has a device flow for mail."""
    oauth2 = provider.oauth2 if provider is not None else None
    return oauth2 is not None and oauth2.device_url is not None and not oauth2.organisation


async def start(request: web.Request) -> web.StreamResponse:
    """POST /oauth2/device: ask the provider for a user code, then show it."""
    await form_of(request)
    site = site_of(request)
    user = session_user(request, site)
    provider = site.provider(user)
    if not offers_device(provider):
        raise PageError(404, "error.not_found")
    client = client_for(provider)
    endpoint = token_endpoint(site)
    try:
        device = await endpoint.start_device(client)
    except OAuthError as error:
        logger.info("web.sign_in_failed user=%s error=%s", user.login, error.error)
        raise PageError(400, "oauth.failed", reason=error.error) from None
    finally:
        await endpoint.close()
    require_session(request).device = DevicePoll.started(device)
    logger.info("web.device_started user=%s", user.login)
    return web.Response(status=303, headers={"Location": site.url(WAITING_PATH)})


async def waiting(request: web.Request) -> web.StreamResponse:
    """GET /oauth2/device: the address to open and the code to enter there, while it waits."""
    site = site_of(request)
    user = session_user(request, site)
    poll = require_session(request).device
    if poll is None:
        return web.Response(status=303, headers={"Location": site.url("/me")})
    return _waiting_page(request, site, user, poll, asked=False)


async def status(request: web.Request) -> web.StreamResponse:
    """POST /oauth2/device/status (device.js): wait this long, go there, or why not, as JSON."""
    await form_of(request)
    site = site_of(request)
    answer = await _look(request, site)
    body: dict[str, object] = {"state": answer.progress.value}
    if answer.progress is Progress.PENDING:
        body["wait"] = answer.wait
    elif answer.refusal is not None:
        catalogue = site.catalogue(request)
        body["message"] = catalogue.text(answer.refusal.key, **answer.refusal.fields)
    else:
        body["location"] = site.url("/me")
    return web.json_response(body)


async def check(request: web.Request) -> web.StreamResponse:
    """POST /oauth2/device/check: the same look without JavaScript; the code again if pending."""
    await form_of(request)
    site = site_of(request)
    answer = await _look(request, site)
    if answer.refusal is not None:
        raise answer.refusal
    poll = require_session(request).device
    if answer.progress is Progress.PENDING and poll is not None:
        return _waiting_page(request, site, session_user(request, site), poll, asked=True)
    return web.Response(status=303, headers={"Location": site.url("/me")})


async def _look(request: web.Request, site: Site) -> Answer:
    """Ask the provider (when its pace allows) and act on its answer; nothing kept on failure."""
    session = require_session(request)
    user = session_user(request, site)
    poll = session.device
    if poll is None:
        return Answer(Progress.ENDED)
    if poll.wait() > 0 and time.time() < poll.device.expires_at:
        return Answer(Progress.PENDING, wait=poll.wait())  # too soon: no connection opened
    client = client_for(site.provider(user))
    endpoint = token_endpoint(site)
    try:
        grant = await poll_once(endpoint, client, poll)
    except TokenEndpointUnavailable as error:
        # The provider is unreachable for now; the code stays good until it expires.
        logger.info("web.device_retry user=%s problem=%s", user.login, error.description)
        return Answer(Progress.PENDING, wait=max(poll.interval, poll.wait()))
    except OAuthError as error:
        session.device = None
        logger.info("web.sign_in_failed user=%s error=%s", user.login, error.error)
        status, key = REFUSALS.get(error.error, (400, "oauth.failed"))
        return Answer(Progress.REFUSED, refusal=PageError(status, key, reason=error.error))
    finally:
        await endpoint.close()
    if grant is None:
        return Answer(Progress.PENDING, wait=poll.wait())
    session.device = None  # one grant per code, whatever becomes of it
    refusal = _keep(site, session, user, client, grant)
    if refusal is not None:
        return Answer(Progress.REFUSED, refusal=refusal)
    return Answer(Progress.SIGNED_IN)


def _keep(
    site: Site, session: BrowserSession, user: User, client: OAuthClient, grant: TokenGrant
) -> PageError | None:
    """Keep the grant if the user's own mailbox signed in; what to show instead if not."""
    try:
        signed_in = signed_in_account(grant.id_token, client.client_id)
    except OAuthError as error:
        return PageError(400, "oauth.failed", reason=error.description)
    try:
        accept_sign_in(site, session, user, grant, signed_in, flow="device")
    except PageError as refused:
        return refused
    return None


def _waiting_page(
    request: web.Request, site: Site, user: User, poll: DevicePoll, *, asked: bool
) -> web.Response:
    minutes = max(1, math.ceil((poll.device.expires_at - time.time()) / 60))
    return site.render(
        request,
        "device.html",
        user=user,
        provider=provider_label(site, user),
        device=poll.device,
        wait=f"{max(poll.wait(), 1.0):g}",
        minutes=minutes,
        asked=asked,
    )
