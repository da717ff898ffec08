"""The enrollment pages' listener: aiohttp on the daemon's own event loop, TLS off loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Protocol

from aiohttp import web

from relay.config.live import LiveConfig
from relay.config.model import WebConfig
from relay.state.keys import key_path, load_key
from relay.state.store import Store
from relay.web import device, pages, returning, signin, testpage
from relay.web.guard import guard
from relay.web.language import Catalogues
from relay.web.ratelimit import AddressLimit
from relay.web.site import CALLBACK_PATH, SITE, Site, templates

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024  # a password form is far smaller; a bigger body is refused unread
SHUTDOWN_SECONDS = 5.0


class WebServer:
    """The pages of one daemon: start() binds and returns once it accepts, stop() closes."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        environ: Mapping[str, str],
        smtp_addresses: Callable[[], list[tuple[str, int]]],
    ) -> None:
        self._live = live
        self._store = store
        self._environ = environ
        self._smtp_addresses = smtp_addresses
        self._runner: web.AppRunner | None = None
        self.site: Site | None = None
        self.port = 0

    @property
    def settings(self) -> WebConfig:
        """The web section the listener was started with."""
        return self._live.current.web

    async def start(self) -> None:
        """Bind web.address:web.port and serve the pages."""
        settings = self.settings
        config = self._live.current
        site = Site(
            live=self._live,
            store=self._store,
            key=load_key(key_path(config.key_file, self._environ)),
            public_url=settings.public_url or "",
            catalogues=Catalogues.shipped(),
            templates=templates(),
            smtp_addresses=self._smtp_addresses,
            address_limit=AddressLimit(settings.attempts_per_ip),
        )
        app = web.Application(middlewares=[guard], client_max_size=MAX_FORM_BYTES)
        app[SITE] = site
        _routes(app, site.prefix)
        family = socket.AF_INET6 if ":" in settings.address else socket.AF_INET
        sock = socket.create_server((settings.address, settings.port), family=family)
        self.port = sock.getsockname()[1]
        if not settings.public_url:
            scheme = "https" if settings.tls_cert else "http"
            site.public_url = f"{scheme}://{_host(settings.address)}:{self.port}"
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=_tls(settings)).start()
        self.site = site
        logger.info(
            "web.listening address=%s port=%d public_url=%s",
            settings.address,
            self.port,
            site.public_url,
        )

    async def stop(self) -> None:
        """Close the listener and open connections; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _routes(app: web.Application, prefix: str) -> None:
    static = resources.files("relay.web").joinpath("static")
    app.router.add_get(prefix + "/", returning.welcome)
    app.router.add_post(prefix + "/signin", returning.sign_in_with_password)
    app.router.add_post(prefix + "/signin/oauth2", signin.start_returning)
    app.router.add_get(prefix + "/enroll/{token}", pages.landing)
    app.router.add_post(prefix + "/enroll/{token}", pages.redeem)
    app.router.add_get(prefix + "/me", pages.me)
    app.router.add_post(prefix + "/test", testpage.test)
    app.router.add_post(prefix + "/test/live", testpage.test_live)
    app.router.add_post(prefix + "/secret", pages.new_secret)
    app.router.add_post(prefix + "/oauth2/start", signin.start)
    app.router.add_get(prefix + CALLBACK_PATH, signin.callback)
    app.router.add_post(prefix + device.WAITING_PATH, device.start)
    app.router.add_get(prefix + device.WAITING_PATH, device.waiting)
    app.router.add_post(prefix + device.WAITING_PATH + "/status", device.status)
    app.router.add_post(prefix + device.WAITING_PATH + "/check", device.check)
    app.router.add_static(prefix + "/static/", str(static), show_index=False)


def _tls(settings: WebConfig) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


async def start_web(
    live: LiveConfig,
    store: Store,
    environ: Mapping[str, str],
    smtp_addresses: Callable[[], list[tuple[str, int]]],
) -> WebServer | None:
    """The started web listener when the config turns it on; None otherwise."""
    if not live.current.web.enabled:
        return None
    server = WebServer(live, store, environ, smtp_addresses)
    await server.start()
    return server


class DaemonParts(Protocol):
    """What the web pages use of the daemon's services (relay.listener.handler.Services)."""

    @property
    def live(self) -> LiveConfig:
        """The config in force."""

    @property
    def store(self) -> Store:
        """The daemon's open store."""


async def run_web(
    parts: DaemonParts,
    environ: Mapping[str, str],
    smtp_addresses: Callable[[], list[tuple[str, int]]],
) -> asyncio.Task[None]:
    """Start the pages if the config turns them on; the task holds them until it is cancelled."""
    server = await start_web(parts.live, parts.store, environ, smtp_addresses)

    async def hold() -> None:
        if server is None:
            return
        try:
            await asyncio.get_running_loop().create_future()  # until the daemon cancels it
        finally:
            await server.stop()

    task = asyncio.create_task(hold())
    await asyncio.sleep(0)  # into hold's try: a cancel from now on stops the server
    return task
