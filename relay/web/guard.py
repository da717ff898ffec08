"""What stands before every page: Host and Origin checks, the session cookie, CSRF, headers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.web.sessions import BrowserSession
from relay.web.site import (
    CALLBACK_PATH,
    NEW_COOKIE_KEY,
    SESSION_KEY,
    PageError,
    Site,
    session_of,
    site_of,
)

logger = logging.getLogger(__name__)

# Origins a page's forms may lead to (a provider's sign-in), for its CSP form-action.
FORM_ACTION_KEY: web.ResponseKey[tuple[str, ...]] = web.ResponseKey("relay.form_action", tuple)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = ("GET", "HEAD")


class CsrfRefused(PageError):
    """A form came without this session's CSRF token."""

    def __init__(self) -> None:
        super().__init__(403, "error.csrf")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign Host and Origin, open the session, render PageError, add the headers."""
    site = site_of(request)
    try:
        response = await _guarded(site, request, handler)
    except PageError as error:
        logger.info("web.refused path=%s reason=%s", request.path, error.key)
        response = site.render(
            request, "message.html", error.status, message=error.key, fields=error.fields
        )
    except web.HTTPNotFound:
        response = site.render(request, "message.html", 404, message="error.not_found", fields={})
    except web.HTTPMethodNotAllowed:
        response = site.render(request, "message.html", 405, message="error.not_found", fields={})
    if response.prepared:
        return response  # a stream (live Test) sent its headers itself, with security_headers
    cookie = request.get(NEW_COOKIE_KEY)
    if cookie is not None:
        response.set_cookie(
            site.cookie_name,
            cookie.reveal(),
            path=site.prefix or "/",
            httponly=True,
            secure=site.secure,
            samesite="Strict",
        )
    security_headers(site, request, response)
    return response


async def _guarded(site: Site, request: web.Request, handler: Handler) -> web.StreamResponse:
    # DNS rebinding: a page of another name that resolves here must not reach these pages.
    if request.headers.get("Host", "").lower() != site.host:
        raise PageError(421, "error.host")
    if request.method not in SAFE_METHODS:
        # A browser names the page a form was posted from; another site's form is refused
        # before its body is read (the CSRF token is checked as well, by form_of).
        if request.headers.get("Origin", "").lower() != site.origin:
            raise CsrfRefused()
    if not request.path.startswith(site.url("/static/")):
        cookie = request.cookies.get(site.cookie_name)
        session = site.sessions.get(cookie)
        # The provider's redirect back comes without the Strict cookie: a new one would
        # replace the browser's session (relay.web.signin reloads the callback instead).
        if session is None and request.path != site.url(CALLBACK_PATH):
            fresh, session = site.sessions.new()
            request[NEW_COOKIE_KEY] = fresh
        if session is not None:
            request[SESSION_KEY] = session
    return await handler(request)


def rotate_session(request: web.Request) -> BrowserSession:
    """The request's session under a new cookie (and CSRF token); the old cookie is dead."""
    site = site_of(request)
    session = require_session(request)
    old = request.get(NEW_COOKIE_KEY)
    cookie = old.reveal() if old is not None else request.cookies.get(site.cookie_name, "")
    request[NEW_COOKIE_KEY] = site.sessions.rotate(cookie, session)
    return session


def require_session(request: web.Request) -> BrowserSession:
    """The request's session; the guard made sure there is one."""
    session = session_of(request)
    if session is None:
        raise PageError(400, "error.no_session")
    return session


async def form_of(request: web.Request) -> dict[str, str]:
    """A posted form's fields, once its CSRF token matched the session's."""
    session = require_session(request)
    posted = await request.post()
    fields = {name: value for name, value in posted.items() if isinstance(value, str)}
    if not session.csrf_matches(fields.pop("csrf", "")):
        raise CsrfRefused()
    return fields


def security_headers(site: Site, request: web.Request, response: web.StreamResponse) -> None:
    """The strict policy headers every page and stream carries."""
    extra = response.get(FORM_ACTION_KEY, ())
    form_action = " ".join(("'self'", *extra))
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # The enrollment link is in the address bar: no other site may see it in a Referer.
    # (no-referrer would also make Chromium send "Origin: null" with our own forms.)
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if site.secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if not request.path.startswith(site.url("/static/")):
        # Pages show a person's address, and once their secret: no cache keeps them.
        response.headers["Cache-Control"] = "no-store"
