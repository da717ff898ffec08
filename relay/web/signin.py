"""Sign in with the provider from the page: authorization code + PKCE to public_url.

Two journeys share the callback: a user on their page authorizes relay to send (the grant is
kept), and a returning user proves who they are (their page opens; an OAuth2 user's grant is
renewed on the way).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from relay.config.model import ProviderConfig
from relay.errors import OAuthError, WrongAccount
from relay.model import OAuthClient, Secret, UpstreamAuth, User
from relay.oauth.client import Pkce, TokenEndpoint, TokenGrant, authorization_url, token_http_client
from relay.oauth.tokens import refresh_token_context
from relay.tls import TlsContexts
from relay.web.guard import FORM_ACTION_KEY, form_of, require_session, rotate_session
from relay.web.identity import IDENTITY_SCOPES, require_account, signed_in_account
from relay.web.proof import user_with_address
from relay.web.sessions import SIGN_IN_LIFETIME, BrowserSession, PendingSignIn
from relay.web.site import PageError, Site, session_of, site_of
from relay.web.users import session_user

logger = logging.getLogger(__name__)

BOUNCE = "resumed"  # query flag of the callback reloaded from relay's own page


def client_for(provider: ProviderConfig | None) -> OAuthClient:
    """The provider's OAuth2 client, asking for who signed in as well; PageError if none."""
    if provider is None or provider.oauth2 is None:
        raise PageError(404, "error.not_found")
    try:
        client = provider.oauth2.client()
    except OAuthError as error:
        raise PageError(503, "oauth.failed", reason=error.description) from None
    scopes = tuple(dict.fromkeys((*client.scopes, *IDENTITY_SCOPES)))
    return replace(client, scopes=scopes)


def sign_in_origin(provider: ProviderConfig | None) -> str | None:
    """scheme://host of the provider's authorization endpoint, for the page's form-action."""
    if provider is None or provider.oauth2 is None:
        return None
    parts = urlsplit(provider.oauth2.authorize_url)
    return f"{parts.scheme}://{parts.netloc}"


def sign_in_providers(site: Site) -> list[ProviderConfig]:
    """Providers a returning user can sign in at: those with each user's own OAuth2 sign-in."""
    return [
        provider
        for provider in site.config.providers.values()
        if provider.oauth2 is not None and not provider.oauth2.organisation
    ]


async def start(request: web.Request) -> web.StreamResponse:
    """POST /oauth2/start: to the provider, with state and PKCE kept in this browser's session."""
    await form_of(request)
    site = site_of(request)
    user = session_user(request, site)
    logger.info("web.sign_in_started user=%s", user.login)
    return _authorize(site, require_session(request), site.provider(user), user.upstream_user)


async def start_returning(request: web.Request) -> web.StreamResponse:
    """POST /signin/oauth2: a returning user signs in at the provider they chose."""
    fields = await form_of(request)
    site = site_of(request)
    provider = site.config.providers.get(fields.get("provider", ""))
    if provider is None or provider not in sign_in_providers(site):
        raise PageError(404, "error.not_found")
    return _authorize(site, require_session(request), provider, None)


def _authorize(
    site: Site, session: BrowserSession, provider: ProviderConfig | None, hint: str | None
) -> web.Response:
    client = client_for(provider)
    returning = None if hint is not None or provider is None else provider.name
    state, pkce = secrets.token_urlsafe(24), Pkce.new()
    session.sign_in = PendingSignIn(
        Secret(state), pkce, site.redirect_uri, time.time(), provider=returning
    )
    url = authorization_url(client, site.redirect_uri, state, pkce, hint)
    response = web.Response(status=303, headers={"Location": url})
    origin = sign_in_origin(provider)
    response[FORM_ACTION_KEY] = () if origin is None else (origin,)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """GET /oauth2/callback: check state and account, then keep the grant or open the page."""
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
    offered = request.query.get("state", "")
    if not secrets.compare_digest(offered.encode(), pending.state.reveal().encode()):
        raise PageError(400, "oauth.lost_session")
    if pending.provider is not None:
        return await _returning(request, site, session, pending, pending.provider)
    user = session_user(request, site)
    client = client_for(site.provider(user))
    grant, signed_in = await _signed_in(request, site, client, pending, user.login)
    accept_sign_in(site, session, user, grant, signed_in)
    return web.Response(status=303, headers={"Location": site.url("/me")})


def accept_sign_in(
    site: Site,
    session: BrowserSession,
    user: User,
    grant: TokenGrant,
    signed_in: str,
    flow: str = "",
) -> None:
    """Keep the grant as user's if their own mailbox signed in; else PageError, nothing kept."""
    try:
        require_account(user, signed_in)
    except WrongAccount as wrong:
        logger.warning("web.wrong_account user=%s signed_in=%s", user.login, wrong.signed_in)
        raise PageError(
            403, "oauth.wrong_account", signed_in=wrong.signed_in or "?", expected=wrong.expected
        ) from None
    keep_grant(site, user, grant)
    site.store.switch_to_oauth2(user.login)  # a stored password is of no more use
    logger.info("web.signed_in user=%s method=oauth2%s", user.login, flow and f" flow={flow}")
    session.notice = ("oauth.signed_in", {"address": signed_in})


async def _returning(
    request: web.Request,
    site: Site,
    session: BrowserSession,
    pending: PendingSignIn,
    provider_name: str,
) -> web.StreamResponse:
    """A returning user signed in at the provider: open the page of the user it names."""
    provider = site.config.providers.get(provider_name)
    client = client_for(provider)
    grant, signed_in = await _signed_in(request, site, client, pending, "-")
    user = user_with_address(site, signed_in, provider_name)
    if user is None:
        logger.info("web.sign_in_refused user=- method=oauth2 reason=no user")
        raise PageError(403, "signin.no_account", address=signed_in)
    if user.auth is UpstreamAuth.OAUTH2 and grant.refresh_token is not None:
        keep_grant(site, user, grant)  # signing in again renews what relay sends with
    rotate_session(request).login = user.login
    logger.info("web.signed_in user=%s method=oauth2", user.login)
    session.notice = ("signin.welcome", {"address": signed_in})
    return web.Response(status=303, headers={"Location": site.url("/me")})


async def _signed_in(
    request: web.Request, site: Site, client: OAuthClient, pending: PendingSignIn, login: str
) -> tuple[TokenGrant, str]:
    """The provider's answer exchanged for tokens, and the address that signed in."""
    if "error" in request.query or "code" not in request.query:
        reason = request.query.get("error", "no code")
        logger.info("web.sign_in_failed user=%s error=%s", login, reason)
        raise PageError(400, "oauth.failed", reason=reason)
    if time.time() - pending.started > SIGN_IN_LIFETIME:
        raise PageError(400, "oauth.failed", reason="too slow")
    grant = await _exchange(site, client, request.query["code"], pending)
    try:
        return grant, signed_in_account(grant.id_token, client.client_id)
    except OAuthError as error:
        raise PageError(400, "oauth.failed", reason=error.description) from None


def keep_grant(site: Site, user: User, grant: TokenGrant) -> None:
    """Seal and keep the grant's refresh token for user; PageError when the provider sent none."""
    if grant.refresh_token is None:
        raise PageError(400, "oauth.no_refresh")
    sealed = site.key.seal(grant.refresh_token, refresh_token_context(user))
    site.store.grants.authorized(user.login, sealed, grant.scopes, grant.expires_at)


async def _exchange(
    site: Site, client: OAuthClient, code: str, pending: PendingSignIn
) -> TokenGrant:
    endpoint = token_endpoint(site)
    try:
        return await endpoint.exchange_code(client, code, pending.redirect_uri, pending.pkce)
    except OAuthError as error:
        raise PageError(400, "oauth.failed", reason=error.error) from None
    finally:
        await endpoint.close()


def token_endpoint(site: Site) -> TokenEndpoint:
    """The providers' token endpoints as the pages reach them, with relay's upstream timeouts."""
    upstream = site.config.upstream
    tls = TlsContexts().for_ca_file(None)
    return TokenEndpoint(token_http_client(tls, upstream.connect_timeout, upstream.timeout))
