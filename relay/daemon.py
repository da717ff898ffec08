"""The daemon's lifecycle: start listeners, serve, drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import warnings
from collections.abc import Mapping
from contextlib import suppress

from relay.config import ListenerConfig, RelayConfig
from relay.delivery import TlsContexts, UpstreamTimeouts
from relay.keys import key_path, load_key
from relay.localauth import LocalVerifier
from relay.pool import UpstreamPool
from relay.runner import QueueRunner
from relay.server import RelayHandler, RelaySMTP, Services, SessionTracker
from relay.spool import Spool
from relay.store import Store

logger = logging.getLogger(__name__)

START_DEADLINE = 10.0
IDLE_CLIENT_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes


def open_services(config: RelayConfig, environ: Mapping[str, str]) -> Services:
    """Open the store, master key and spool, and build the queue runner on them."""
    master_key = load_key(key_path(config.key_file, environ))
    store = Store.open(config.database_path)
    pool = UpstreamPool(
        local_hostname=config.hostname,
        timeouts=UpstreamTimeouts(config.upstream.connect_timeout, config.upstream.timeout),
        tls=TlsContexts(),
        max_per_key=config.queue.max_connections_per_user,
        idle_timeout=config.queue.connection_idle_timeout,
    )
    spool = Spool.open(config.spool_path)
    runner = QueueRunner(config, store, master_key, spool, pool)
    return Services(config=config, store=store, verifier=LocalVerifier(), runner=runner)


class Daemon:
    """relay's listeners and their sessions: start() -> serve() -> drain() -> stop()."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.tracker = SessionTracker(services.config.limits)
        self.handler = RelayHandler(services)
        self._servers: list[asyncio.Server] = []
        self._shutdown = asyncio.Event()
        self._force = asyncio.Event()
        self._runner_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (address, port) pairs actually bound, with real ports even when 0 was asked."""
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    async def start(self) -> None:
        """Bind every listener; return once all accept connections."""
        async with asyncio.timeout(START_DEADLINE):
            for listener in self.services.config.listen:
                self._servers.append(await self._bind(listener))
        # Queued mail from before a stop or crash is due at once: the runner resumes it.
        self._runner_task = asyncio.create_task(self.services.runner.run())
        for address, port in self.addresses:
            logger.info("relay.listening address=%s port=%d", address, port)

    async def _bind(self, listener: ListenerConfig) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        config = self.services.config
        tls = _listener_tls(listener)

        def protocol() -> RelaySMTP:
            return RelaySMTP(
                self.handler,
                self.tracker,
                data_size_limit=config.limits.max_message_bytes,
                hostname=config.hostname,
                ident="relay",
                tls_context=tls,
                require_starttls=tls is not None,
                auth_required=True,
                # Plaintext AUTH is safe only where it never leaves the machine; config.py
                # refuses a non-loopback listener without a certificate.
                auth_require_tls=not listener.is_loopback,
                timeout=IDLE_CLIENT_TIMEOUT,
                loop=loop,
            )

        return await loop.create_server(protocol, listener.address, listener.port)

    def request_shutdown(self) -> None:
        """Ask serve() to drain and return; a second request skips the wait."""
        if self._shutdown.is_set():
            logger.warning("relay.force_stop sessions=%d", len(self.tracker.sessions))
            self._force.set()
        self._shutdown.set()

    async def serve(self) -> None:
        """Run until shutdown is requested, then drain within the configured grace time."""
        await self._shutdown.wait()
        await self.drain(self.services.config.shutdown_grace)
        await self.stop()

    async def drain(self, grace: float) -> None:
        """Stop accepting; let sessions in a mail transaction finish, up to grace seconds."""
        self.tracker.draining = True
        for server in self._servers:
            server.close()
        for session in list(self.tracker.sessions):
            session.close_idle()
        logger.info("relay.draining sessions=%d grace=%.0fs", len(self.tracker.sessions), grace)
        deadline = asyncio.get_running_loop().time() + grace
        closed = asyncio.ensure_future(self.tracker.all_closed.wait())
        forced = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait({closed, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            forced.cancel()
        left = 0.0 if self._force.is_set() else deadline - asyncio.get_running_loop().time()
        # Attempts cut short stay queued: nothing is recorded until an attempt completes.
        await self.services.runner.stop(max(0.0, left))

    async def stop(self) -> None:
        """Close whatever is left; safe to call more than once."""
        self.tracker.draining = True
        for server in self._servers:
            server.close()
        for session in list(self.tracker.sessions):
            session.close_now()
        await asyncio.sleep(0)  # let connection_lost callbacks run before the loop goes away
        if self._stopped:
            return
        self._stopped = True
        await self.services.runner.stop(0.0)
        if self._runner_task is not None:
            self._runner_task.cancel()
            await asyncio.gather(self._runner_task, return_exceptions=True)
        self.services.runner.spool.close()
        self.services.store.close()
        logger.info("relay.stopped")


async def serve_until_signalled(daemon: Daemon) -> None:
    """Start the daemon and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_shutdown)
    try:
        await daemon.start()
        await daemon.serve()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):
                loop.remove_signal_handler(signum)


def configure_logging(level: str) -> None:
    """One line per event on stderr; aiosmtpd's own chatter only when it matters."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning
    )


def _listener_tls(listener: ListenerConfig) -> ssl.SSLContext | None:
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(listener.tls_cert, listener.tls_key)
    return context
