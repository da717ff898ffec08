"""What every page handler shares: the store, the key, sessions, catalogues and rendering."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from relay.config.live import LiveConfig
from relay.config.model import ProviderConfig, RelayConfig, WebConfig
from relay.model import Secret, User
from relay.state.keys import MasterKey
from relay.state.store import Store
from relay.web.language import Catalogue, Catalogues
from relay.web.ratelimit import AddressLimit
from relay.web.sessions import Attempts, BrowserSession, Sessions

SESSION_COOKIE = "relay_session"
SECURE_SESSION_COOKIE = "__Host-relay_session"  # RFC 6265bis §4.1.3.2: Secure, Path=/, no Domain
CALLBACK_PATH = "/oauth2/callback"


class PageError(Exception):
    """Show the error page with a catalogue message; nothing was changed."""

    def __init__(self, status: int, key: str, **fields: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.fields = fields


@dataclass(slots=True)
class Site:
    """The enrollment site of one running daemon."""

    live: LiveConfig
    store: Store
    key: MasterKey = field(repr=False)
    public_url: str
    catalogues: Catalogues
    templates: jinja2.Environment
    # The SMTP listeners as bound (real ports even where 0 was asked), for the app's settings.
    smtp_addresses: Callable[[], list[tuple[str, int]]] = list
    sessions: Sessions = field(default_factory=Sessions)
    attempts: Attempts = field(default_factory=Attempts)
    address_limit: AddressLimit = field(
        default_factory=lambda: AddressLimit(WebConfig().attempts_per_ip)
    )

    @property
    def config(self) -> RelayConfig:
        """The config in force now (a reload replaces it)."""
        return self.live.current

    @property
    def origin(self) -> str:
        """scheme://host[:port] of public_url, as browsers send it in Origin."""
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    @property
    def host(self) -> str:
        """host[:port] of public_url, as browsers send it in Host."""
        return urlsplit(self.public_url).netloc.lower()

    @property
    def prefix(self) -> str:
        """The path public_url puts before every page, without a trailing slash."""
        return urlsplit(self.public_url).path.rstrip("/")

    @property
    def secure(self) -> bool:
        """Cookies get Secure: the pages are reached over https."""
        return urlsplit(self.public_url).scheme == "https"

    @property
    def cookie_name(self) -> str:
        """The session cookie's name; __Host- where the browser enforces what that promises."""
        return SECURE_SESSION_COOKIE if self.secure and not self.prefix else SESSION_COOKIE

    @property
    def redirect_uri(self) -> str:
        """The OAuth2 redirect URI to register at providers."""
        return self.public_url + CALLBACK_PATH

    def url(self, path: str) -> str:
        """A page's path under public_url."""
        return self.prefix + path

    def provider(self, user: User) -> ProviderConfig | None:
        """The user's provider as configured now."""
        return self.config.providers.get(user.provider)

    def render(
        self,
        request: web.Request,
        template: str,
        status: int = 200,
        **context: object,
    ) -> web.Response:
        """A page in the request's language, escaped by Jinja2's autoescape."""
        catalogue = self.catalogue(request)
        session = session_of(request)
        html = self.templates.get_template(template).render(
            t=catalogue.text,
            items=catalogue.items,
            has=catalogue.has,
            lang=catalogue.language,
            base=self.prefix,
            csrf="" if session is None else session.csrf.reveal(),
            **context,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def catalogue(self, request: web.Request) -> Catalogue:
        """The catalogue Accept-Language asks for."""
        return self.catalogues.choose(request.headers.get("Accept-Language"))


SITE = web.AppKey("relay.site", Site)
SESSION_KEY = web.RequestKey("relay.session", BrowserSession)
NEW_COOKIE_KEY = web.RequestKey("relay.new_cookie", Secret)  # a session cookie to set


def site_of(request: web.Request) -> Site:
    """The site the request came to."""
    return request.app[SITE]


def session_of(request: web.Request) -> BrowserSession | None:
    """The request's browser session (the guard opens one for every page)."""
    return request.get(SESSION_KEY)


def templates() -> jinja2.Environment:
    """The page templates, with autoescape on for every one of them."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("relay.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
