"""The daemon's lifecycle: start listeners, serve, drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, replace

from relay.config.live import LiveConfig
from relay.config.load import load_config
from relay.config.model import ListenerConfig, OAuthSettings, RelayConfig
from relay.errors import ConfigError, LibraryMismatch
from relay.listener.commandlog import quiet_command_log
from relay.listener.handler import RelayHandler, Services
from relay.listener.protocol import RelaySMTP, aiosmtpd_gaps
from relay.listener.sockets import open_server, session_class, tcp_addresses
from relay.listener.tracker import SessionTracker
from relay.model import UpstreamAuth
from relay.oauth.tokens import AccessTokens, keep_grants_alive
from relay.ops.channels import Ops
from relay.ops.host import (
    check_private,
    ensure_open_file_limit,
    inherited_sockets,
    listener_for,
    lock_state_dir,
)
from relay.ops.logs import configure_logging
from relay.ops.metrics import MetricsServer, exposure_warning, metrics_token
from relay.ops.status import DaemonStatus, remove_status, write_delivery, write_status
from relay.providers.facts import ProviderFacts
from relay.queue.integrity import verify_spool
from relay.queue.pause import PauseState
from relay.queue.runner import QueueRunner
from relay.queue.spool import Spool
from relay.renewal.notifier import RenewalNotices
from relay.state.keys import key_path, load_key
from relay.state.localauth import LocalVerifier
from relay.state.store import Store
from relay.state.writer import StoreWriter
from relay.tls import TlsContexts, listener_tls
from relay.upstream.credentials import open_credentials
from relay.upstream.pipelining import pipelining_gaps
from relay.upstream.pool import UpstreamPool, pool_settings
from relay.upstream.senddata import aiosmtplib_gaps

logger = logging.getLogger(__name__)

START_DEADLINE = 10.0
IDLE_CLIENT_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes
STATUS_INTERVAL = 5.0  # how often systemd's STATUS= line is refreshed


@dataclass(frozen=True, slots=True)
class Parts:
    """What the daemon is built from: the listener's services, and the parts it stops itself."""

    services: Services
    pool: UpstreamPool
    spool: Spool
    tokens: AccessTokens
    writer: StoreWriter


def open_services(config: RelayConfig, environ: Mapping[str, str], ops: Ops | None = None) -> Parts:
    """Open the store, master key and spool, and build the queue runner on them."""
    ops = ops or Ops.from_environ(
        environ, metrics=config.metrics.enabled, user_labels=config.metrics.user_labels
    )
    check_private(config.state_dir, config.database_path, config.spool_path)
    master_key = load_key(key_path(config.key_file, environ))
    store = Store.open(config.database_path, master_key)
    tls = TlsContexts()
    facts = ProviderFacts()  # written by the pool at each EHLO, read by the listener
    pool = UpstreamPool(pool_settings(config), tls, facts)
    spool = Spool.open(config.spool_path)
    writer = StoreWriter(config.database_path)
    credentials = open_credentials(
        config,
        store,
        master_key,
        tls,
        ops.opened_secret,
        ops.metrics.oauth_refresh_failed,
        writer=writer,
        publish_to=config.state_dir,
    )
    live = LiveConfig(config)
    runner = QueueRunner(live, store, credentials, spool, pool, ops, writer)
    ops.login_failed = RenewalNotices(live, store, runner.submit, writer).observe
    services = Services(
        live=live, store=store, verifier=LocalVerifier(), runner=runner, ops=ops, facts=facts
    )
    return Parts(services, pool, spool, credentials.tokens, writer)


class Daemon:
    """relay's listeners and their sessions: start() -> serve() -> drain() -> stop()."""

    def __init__(self, parts: Parts, environ: Mapping[str, str] | None = None) -> None:
        services = parts.services
        self.services = services
        self.parts = parts
        self.environ: Mapping[str, str] = environ or {}
        self.tracker = SessionTracker(services.config.limits)
        self.handler = RelayHandler(services)
        self._servers: list[asyncio.Server] = []
        self._shutdown = asyncio.Event()
        self._force = asyncio.Event()
        self._runner_task: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._metrics_server = MetricsServer(services.ops.metrics)
        self._stopped = False
        self._status: DaemonStatus | None = None
        self.on_reload: Callable[[RelayConfig], None] | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (address, port) pairs actually bound, with real ports even when 0 was asked."""
        return tcp_addresses(self._servers)

    async def start(self) -> None:
        """Bind every listener; return once all accept connections."""
        ensure_open_file_limit(2 * self.services.config.limits.max_connections + 256)
        async with asyncio.timeout(START_DEADLINE):
            activated = inherited_sockets(self.environ)
            if activated:
                for sock in activated:
                    listener = listener_for(sock, self.services.config.listen)
                    self._servers.append(await self._bind(listener, sock))
            else:
                for listener in self.services.config.listen:
                    self._servers.append(await self._bind(listener))
        # Queued mail from before a stop or crash is due at once: the runner resumes it.
        self._runner_task = asyncio.create_task(self.services.runner.run())
        for address, port in self.addresses:
            logger.info("relay.listening address=%s port=%d", address, port)
        ops, config = self.services.ops, self.services.config
        metrics_port = await self._start_metrics()
        if config.web.enabled:
            # Imported here: aiohttp and Jinja2 cost megabytes a daemon without pages never needs.
            from relay.web.server import run_web

            self._side_tasks.append(
                await run_web(self.services, self.environ, lambda: self.addresses)
            )
        ops.metrics.watch_queue(
            lambda: float(self.services.runner.stats.queued),
            lambda: self.services.runner.stats.oldest_age(),
        )
        self._status = DaemonStatus(os.getpid(), time.time(), self.addresses, metrics_port)
        write_status(config.state_dir, self._status)
        self.services.runner.watch_pause(self._pause_changed)
        # READY=1 only now: listeners accept, store and spool are open (sd_notify(3)).
        ops.notifier.ready(self._status_line())
        self._side_tasks.append(asyncio.create_task(self._report_status()))
        tokens = keep_grants_alive(self.parts.tokens, self._oauth_users, ops.login_failed)
        self._side_tasks.append(asyncio.create_task(tokens))
        interval = ops.notifier.watchdog_interval()
        if interval is not None:
            self._side_tasks.append(asyncio.create_task(self._feed_watchdog(interval / 2)))

    def _oauth_users(self) -> list[tuple[str, str, OAuthSettings]]:
        """Each enabled OAuth2 user with their provider's settings, as the config is now."""
        providers = self.services.config.providers
        found = []
        for user in self.services.store.list_users():
            provider = providers.get(user.provider)
            if user.auth is UpstreamAuth.OAUTH2 and provider and provider.oauth2 and user.enabled:
                found.append((user.login, provider.name, provider.oauth2))
        return found

    async def _start_metrics(self) -> int | None:
        settings = self.services.config.metrics
        if not settings.enabled:
            return None
        token = metrics_token(self.services.config)
        if token is not None:
            self.services.ops.opened_secret(token)
        port = await self._metrics_server.start(settings.address, settings.port, token)
        logger.info("metrics.listening address=%s port=%d", settings.address, port)
        warning = exposure_warning(settings)
        if warning is not None:
            logger.warning("metrics.not_loopback address=%s risk=%s", settings.address, warning)
        return port

    def _pause_changed(self, state: PauseState) -> None:
        """Tell `relay status` and systemd that delivery paused or resumed."""
        if self._status is None:
            return
        self._status = replace(self._status, paused_since=state.since, pause_reason=state.reason)
        try:
            write_status(self.services.config.state_dir, self._status)
        except OSError as error:
            logger.warning("relay.status_unwritable error=%s", error)
        self.services.ops.notifier.status(self._status_line())

    def _status_line(self) -> str:
        stats = self.services.runner.stats
        state = self.services.runner.pause.state
        if state.since is not None:
            return f"delivery paused: {state.reason}"
        return (
            f"{len(self.tracker.sessions)} sessions, {stats.queued} queued, "
            f"{stats.deferred} deferred, {stats.sent_copies} Sent copies pending"
        )

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.services.ops.notifier.status(self._status_line())
            self.publish_delivery()

    def publish_delivery(self) -> None:
        """Each user's sessions and pace, for `relay status` and the metrics."""
        states = self.services.runner.delivery_states()
        metrics = self.services.ops.metrics
        for state in states:
            waiting = state.waiting is not None
            metrics.user_delivery(state.login, state.provider, state.sessions, state.limit, waiting)
        try:
            write_delivery(self.services.config.state_dir, [asdict(state) for state in states])
        except OSError as error:
            logger.debug("relay.delivery_unwritable error=%s", error)

    async def _feed_watchdog(self, period: float) -> None:
        while True:
            self.services.ops.notifier.watchdog()
            await asyncio.sleep(period)

    async def reload(self) -> None:
        """Re-read the config: new sessions and the queue use it; a broken one changes nothing."""
        notifier = self.services.ops.notifier
        notifier.reloading()
        try:
            config = load_config(self.services.config.source)
        except ConfigError as error:
            for line in str(error).splitlines():
                logger.error("config.reload_failed %s (keeping the running config)", line)
            notifier.ready(self._status_line())
            return
        if config.listen != self.services.config.listen:
            logger.warning("config.reload listen changed: takes effect after a restart")
        self.services.live.current = config
        self.tracker.limits = config.limits
        # CA files replaced in place are read again, and no session opened with the old
        # settings is reused: a changed host, port or CA takes effect for the next mail.
        pool = self.parts.pool
        pool.tls.forget()
        await pool.start_afresh(pool_settings(config))
        if self.on_reload is not None:
            self.on_reload(config)
        logger.info("config.reloaded source=%s providers=%d", config.source, len(config.providers))
        notifier.ready(self._status_line())

    async def _bind(
        self, listener: ListenerConfig, sock: socket.socket | None = None
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        config = self.services.config
        tls = listener_tls(listener.tls_cert, listener.tls_key)
        loopback = listener.is_loopback  # parses the address: once, not per connection

        def protocol() -> RelaySMTP:
            return session_class(listener)(
                self.handler,
                self.tracker,
                listener,
                # The size limit is the user's provider's, known only at MAIL: relay's EHLO
                # hook announces it and MAIL and DATA apply it (relay.listener.offers).
                data_size_limit=None,
                enable_SMTPUTF8=True,
                hostname=config.hostname,
                ident="relay",
                tls_context=tls,
                require_starttls=tls is not None,
                auth_required=True,
                # Plaintext AUTH is safe only where it never leaves the machine; the config
                # loader refuses a non-loopback listener without a certificate.
                auth_require_tls=not loopback,
                timeout=IDLE_CLIENT_TIMEOUT,
                loop=loop,
            )

        return await open_server(loop, protocol, listener, sock)

    def request_shutdown(self) -> None:
        """Ask serve() to drain and return; a second request skips the wait."""
        if not self._shutdown.is_set():
            self.services.ops.notifier.stopping()
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
        self.services.ops.notifier.status(f"draining {len(self.tracker.sessions)} sessions")
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
        for task in self._side_tasks:
            task.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        await self._metrics_server.stop()
        remove_status(self.services.config.state_dir)
        await self.services.runner.stop(0.0)
        if self._runner_task is not None:
            self._runner_task.cancel()
            await asyncio.gather(self._runner_task, return_exceptions=True)
        self.parts.spool.close()
        self.parts.writer.close()
        self.services.store.close()
        logger.info("relay.stopped")


async def serve_until_signalled(daemon: Daemon) -> None:
    """Start the daemon and serve until SIGTERM or SIGINT; SIGHUP reloads the config."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_shutdown)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await daemon.start()
        await daemon.serve()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with suppress(ValueError):
                loop.remove_signal_handler(signum)


def run_daemon(
    config: RelayConfig, environ: Mapping[str, str], *, accept_damaged_spool: bool = False
) -> None:
    """`relay serve`: logging as configured, then the daemon until a signal stops it."""
    check_libraries()
    quiet_command_log()
    lock_state_dir(config.state_dir)
    redactor = configure_logging(config.logging.level, config.logging.format, environ)
    verify_spool(config.spool_path, accept_damaged_spool)

    def relog(new: RelayConfig) -> None:
        configure_logging(new.logging.level, new.logging.format, environ, redactor=redactor)

    async def run() -> None:
        daemon = Daemon(
            open_services(
                config,
                environ,
                Ops.from_environ(
                    environ,
                    redactor,
                    metrics=config.metrics.enabled,
                    user_labels=config.metrics.user_labels,
                ),
            ),
            environ,
        )
        daemon.on_reload = relog
        await serve_until_signalled(daemon)

    asyncio.run(run())


def check_libraries() -> None:
    """Refuse to run on an aiosmtpd or aiosmtplib without the internals relay relies on."""
    gaps = aiosmtpd_gaps() + aiosmtplib_gaps() + pipelining_gaps()
    if gaps:
        raise LibraryMismatch(
            f"this install lacks {', '.join(gaps)}, which relay relies on: install the "
            "aiosmtpd and aiosmtplib versions pyproject.toml allows (pip install -e .)"
        )
