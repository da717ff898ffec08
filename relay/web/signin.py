"""Sign in with the provider from the page: authorization code + PKCE to public_url."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from relay.errors import OAuthError, WrongAccount
from relay.model import OAuthClient, Secret, User
from relay.oauth.client import Pkce, TokenEndpoint, TokenGrant, authorization_url, token_http_client
from relay.oauth.tokens import refresh_token_context
from relay.tls import TlsContexts
from relay.web.guard import FORM_ACTION_KEY, form_of, require_session
from relay.web.identity import IDENTITY_SCOPES, require_account, signed_in_account
from relay.web.sessions import SIGN_IN_LIFETIME, BrowserSession, PendingSignIn
from relay.web.site import PageError, Site, session_of, site_of

logger = logging.getLogger(__name__)

BOUNCE = "resumed"  # query flag of the callback reloaded from relay's own page


def client_for(site: Site, user: User) -> OAuthClient:
    """The provider's OAuth2 client, asking for who signed in as well; PageError if none."""
    provider = site.provider(user)
    if provider is None or provider.oauth2 is None:
        raise PageError(404, "error.not_found")
    try:
        client = provider.oauth2.client()
    except OAuthError as error:
        raise PageError(503, "oauth.failed", reason=error.description) from None
    scopes = tuple(dict.fromkeys((*client.scopes, *IDENTITY_SCOPES)))
    return replace(client, scopes=scopes)


def sign_in_origin(site: Site, user: User) -> str | None:
    """scheme://host of the provider's authorization endpoint, for the page's form-action."""
    provider = site.provider(user)
    if provider is None or provider.oauth2 is None:
        return None
    parts = urlsplit(provider.oauth2.authorize_url)
    return f"{parts.scheme}://{parts.netloc}"


async def start(request: web.Request) -> web.StreamResponse:
    """POST /oauth2/start: to the provider, with state and PKCE kept in this browser's session."""
    await form_of(request)
    site, session = site_of(request), require_session(request)
    user = _user(site, session)
    client = client_for(site, user)
    state, pkce = secrets.token_urlsafe(24), Pkce.new()
    session.sign_in = PendingSignIn(Secret(state), pkce, site.redirect_uri, time.time())
    url = authorization_url(client, site.redirect_uri, state, pkce, user.upstream_user)
    logger.info("web.sign_in_started user=%s", user.login)
    response = web.Response(status=303, headers={"Location": url})
    origin = sign_in_origin(site, user)
    response[FORM_ACTION_KEY] = () if origin is None else (origin,)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """GET /oauth2/callback: check state and account, then keep the grant sealed."""
    site = site_of(request)
    session = session_of(request)
    if session is None or session.sign_in is None:
        if BOUNCE not in request.query:
            # Coming back from the provider is a cross-site navigation, so the browser kept the
            # SameSite=Strict cookie back; a reload from this origin's own page carries it.
            query = urlencode([*request.query.items(), (BOUNCE, "1")])
            return site.render(request, "bounce.html", target=f"{request.path}?{query}")
        raise PageError(400, "oauth.lost_session")
    pending, session.sign_in = session.sign_in, None  # one answer per request, whatever it is
    user = _user(site, session)
    offered = request.query.get("state", "")
    if not secrets.compare_digest(offered.encode(), pending.state.reveal().encode()):
        raise PageError(400, "oauth.lost_session")
    if "error" in request.query or "code" not in request.query:
        reason = request.query.get("error", "no code")
        logger.info("web.sign_in_failed user=%s error=%s", user.login, reason)
        raise PageError(400, "oauth.failed", reason=reason)
    if time.time() - pending.started > SIGN_IN_LIFETIME:
        raise PageError(400, "oauth.failed", reason="too slow")
    client = client_for(site, user)
    grant = await _exchange(site, client, request.query["code"], pending)
    try:
        signed_in = signed_in_account(grant.id_token, client.client_id)
        require_account(user, signed_in)
    except WrongAccount as wrong:
        logger.warning("web.wrong_account user=%s signed_in=%s", user.login, wrong.signed_in)
        raise PageError(
            403, "oauth.wrong_account", signed_in=wrong.signed_in or "?", expected=wrong.expected
        ) from None
    except OAuthError as error:
        raise PageError(400, "oauth.failed", reason=error.description) from None
    if grant.refresh_token is None:
        raise PageError(400, "oauth.no_refresh")
    sealed = site.key.seal(grant.refresh_token, refresh_token_context(user))
    site.store.grants.authorized(user.login, sealed, grant.scopes, grant.expires_at)
    site.store.switch_to_oauth2(user.login)  # a stored password is of no more use
    logger.info("web.signed_in user=%s", user.login)
    session.notice = ("oauth.signed_in", {"address": signed_in})
    return web.Response(status=303, headers={"Location": site.url("/me")})


async def _exchange(
    site: Site, client: OAuthClient, code: str, pending: PendingSignIn
) -> TokenGrant:
    upstream = site.config.upstream
    tls = TlsContexts().for_ca_file(None)
    endpoint = TokenEndpoint(token_http_client(tls, upstream.connect_timeout, upstream.timeout))
    try:
        return await endpoint.exchange_code(client, code, pending.redirect_uri, pending.pkce)
    except OAuthError as error:
        raise PageError(400, "oauth.failed", reason=error.error) from None
    finally:
        await endpoint.close()


def _user(site: Site, session: BrowserSession) -> User:
    if session.login is None:
        raise PageError(403, "error.no_session")
    user = site.store.find_user(session.login)
    if user is None:
        raise PageError(410, "error.gone")
    return user
