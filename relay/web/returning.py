"""Coming back: a returning user proves who they are with their mailbox, no new password.

The same answer for an unknown address, a wrong password and an unreachable provider, after
the same minimum time, so the page does not tell who has an account.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from relay.web.forms import count_password_post, typed_password
from relay.web.guard import FORM_ACTION_KEY, form_of, require_session, rotate_session
from relay.web.identity import canonical_address
from relay.web.proof import password_opens_mailbox, user_with_address
from relay.web.signin import sign_in_origin, sign_in_providers
from relay.web.site import PageError, Site, site_of
from relay.web.users import brand

logger = logging.getLogger(__name__)

REFUSAL_SECONDS = 1.0  # every refused sign-in takes at least this long, known address or not
MAX_ADDRESS_SHOWN = 254


async def welcome(request: web.Request) -> web.StreamResponse:
    """GET /: the user's page once this browser is signed in, else the sign-in page."""
    site = site_of(request)
    if require_session(request).login is not None:
        return web.Response(status=303, headers={"Location": site.url("/me")})
    return _sign_in_page(request, site)


async def sign_in_with_password(request: web.Request) -> web.StreamResponse:
    """POST /signin: the address and the mailbox's password, checked at the provider's SMTP."""
    fields = await form_of(request)
    site = site_of(request)
    began = time.monotonic()
    address = fields.get("address", "").strip()[:MAX_ADDRESS_SHOWN]
    password = typed_password(fields.get("password", ""))
    if not address or password is None:
        return _sign_in_page(request, site, address, ("signin.missing", {}), 400)
    count_password_post(site, request)
    # Delays by the address typed, whether or not it has an account, so they name nobody.
    key = "signin:" + canonical_address(address)
    wait = site.attempts.wait(key)
    if wait > 0:
        raise PageError(429, "error.throttled", seconds=f"{wait:.0f}")
    user = user_with_address(site, address)
    if user is None or not await password_opens_mailbox(site, user, password):
        site.attempts.failed(key)
        logger.info(
            "web.sign_in_refused user=%s method=app-password", "-" if user is None else user.login
        )
        await asyncio.sleep(max(0.0, REFUSAL_SECONDS - (time.monotonic() - began)))
        return _sign_in_page(request, site, address, ("signin.refused", {}), 403)
    site.attempts.passed(key)
    rotate_session(request).login = user.login
    require_session(request).notice = ("signin.welcome", {"address": user.email})
    logger.info("web.signed_in user=%s method=app-password", user.login)
    return web.Response(status=303, headers={"Location": site.url("/me")})


def _sign_in_page(
    request: web.Request,
    site: Site,
    address: str = "",
    notice: tuple[str, dict[str, str]] | None = None,
    status: int = 200,
) -> web.Response:
    providers = sign_in_providers(site)
    response = site.render(
        request,
        "signin.html",
        status,
        address=address,
        notice=notice,
        providers=[(provider.name, brand(provider, provider.name)) for provider in providers],
    )
    origins = {sign_in_origin(provider) for provider in providers} - {None}
    response[FORM_ACTION_KEY] = tuple(sorted(origin for origin in origins if origin))
    return response
