"""Prometheus metrics: what relay counts, and a tiny loopback HTTP server for /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from relay.config.model import MetricsConfig, RelayConfig
from relay.errors import ConfigError
from relay.model import Secret

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger("relay.metrics")  # the name shows in log lines: kept from 0.1

NAMESPACE = "relay"
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 8192
REPLY_CLASSES = ("2xx", "4xx", "5xx", "error")


class Metrics:
    """relay's counters; with enabled=False they count nothing (metrics off in the config)."""

    def __init__(self, enabled: bool = True, user_labels: str = "login") -> None:
        # prometheus-client costs megabytes of RSS: a daemon with metrics off never imports it.
        self.instruments = Instruments(user_labels != "drop") if enabled else None
        self.user_labels = user_labels

    @property
    def registry(self) -> CollectorRegistry:
        """The registry that /metrics exposes; RuntimeError when metrics are off."""
        if self.instruments is None:
            raise RuntimeError("metrics are disabled")
        return self.instruments.registry

    def session_opened(self) -> None:
        """An app connected."""
        if self.instruments is not None:
            self.instruments.sessions.inc()

    def auth_failed(self) -> None:
        """An app's AUTH was refused (unknown login, bad secret, disabled user)."""
        if self.instruments is not None:
            self.instruments.auth_failures.inc()

    def mail_accepted(self, user: str, provider: str) -> None:
        """A mail was spooled for delivery."""
        if self.instruments is not None:
            self.instruments.mails_accepted.labels(**self._mail_labels(user, provider)).inc()

    def mail_delivered(self, user: str, provider: str) -> None:
        """The provider accepted a mail."""
        if self.instruments is not None:
            self.instruments.mails_delivered.labels(**self._mail_labels(user, provider)).inc()

    def mail_deferred(self, user: str, provider: str) -> None:
        """An attempt failed temporarily and the mail stays queued."""
        if self.instruments is not None:
            self.instruments.mails_deferred.labels(**self._mail_labels(user, provider)).inc()

    def mail_bounced(self, user: str, provider: str) -> None:
        """A mail was refused for good or expired."""
        if self.instruments is not None:
            self.instruments.mails_bounced.labels(**self._mail_labels(user, provider)).inc()

    def upstream_reply(self, provider: str, code: int | None) -> None:
        """A provider's final reply code to a mail, or None when it never replied."""
        if self.instruments is not None:
            labels = {"provider": provider, "class": reply_class(code)}
            self.instruments.upstream_replies.labels(**labels).inc()

    def delivery_attempted(self, provider: str, seconds: float) -> None:
        """One delivery attempt took this long, whatever its outcome."""
        if self.instruments is not None:
            self.instruments.delivery_seconds.labels(provider=provider).observe(seconds)

    def sent_copy_failed(self, provider: str) -> None:
        """An APPEND to the Sent folder failed."""
        if self.instruments is not None:
            self.instruments.sent_copy_failures.labels(provider=provider).inc()

    def oauth_refresh_failed(self, provider: str) -> None:
        """Renewing an OAuth2 access token failed."""
        if self.instruments is not None:
            self.instruments.oauth_refresh_failures.labels(provider=provider).inc()

    def job_crashed(self, kind: str) -> None:
        """A delivery attempt or Sent-copy job ended in an unexpected exception."""
        if self.instruments is not None:
            self.instruments.job_crashes.labels(kind=kind).inc()

    def in_doubt(self, outcome: str) -> None:
        """Mail an earlier attempt may have delivered: found in Sent, or sent again."""
        if self.instruments is not None:
            self.instruments.in_doubt.labels(outcome=outcome).inc()

    def user_delivery(
        self, user: str, provider: str, sessions: int, limit: int, waiting: bool
    ) -> None:
        """A user's upstream sessions in use, the limit now, and whether pace or quota holds."""
        if self.instruments is not None:
            labels = self._mail_labels(user, provider)
            self.instruments.upstream_sessions.labels(**labels).set(sessions)
            self.instruments.upstream_session_limit.labels(**labels).set(limit)
            self.instruments.paced.labels(**labels).set(1 if waiting else 0)

    def _mail_labels(self, user: str, provider: str) -> dict[str, str]:
        if self.user_labels == "drop":
            return {"provider": provider}
        return {"user": user_label(user, self.user_labels), "provider": provider}

    def watch_queue(self, size: Callable[[], float], oldest_age: Callable[[], float]) -> None:
        """Read the queue gauges from these callbacks at each scrape (in the event loop)."""
        if self.instruments is not None:
            self.instruments.queue_size.set_function(size)
            self.instruments.queue_oldest_age.set_function(oldest_age)


class Instruments:
    """The Prometheus counters, gauges and histograms, in a registry of their own."""

    def __init__(self, per_user: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        mail = ("user", "provider") if per_user else ("provider",)
        self.sessions = self._counter("sessions", "SMTP sessions opened by local apps")
        self.auth_failures = self._counter("auth_failures", "Failed local AUTH attempts")
        self.mails_accepted = self._counter("mails_accepted", "Mails accepted from apps", mail)
        self.mails_delivered = self._counter("mails_delivered", "Mails providers took", mail)
        self.mails_deferred = self._counter(
            "mails_deferred", "Delivery attempts that left the mail queued", mail
        )
        self.mails_bounced = self._counter(
            "mails_bounced", "Mails given up on: refused or expired", mail
        )
        self.upstream_sessions = self._gauge(
            "upstream_sessions", "Upstream sessions a user has in use now", mail
        )
        self.upstream_session_limit = self._gauge(
            "upstream_session_limit",
            "Sessions a user may open now: grows with demand, lowered when a provider pushes back",
            mail,
        )
        self.paced = self._gauge(
            "paced", "1 while a user's mail waits for their pace or their provider's quota", mail
        )
        self.upstream_replies = self._counter(
            "upstream_replies",
            "Final replies from providers by class; error means no reply (network, TLS, timeout)",
            ("provider", "class"),
        )
        self.sent_copy_failures = self._counter(
            "sent_copy_failures", "Failed IMAP APPENDs of Sent copies", ("provider",)
        )
        self.oauth_refresh_failures = self._counter(
            "oauth_refresh_failures", "Failed OAuth2 token refreshes", ("provider",)
        )
        self.job_crashes = self._counter(
            "job_crashes",
            "Delivery attempts (kind=delivery) and Sent copies (kind=sent_copy) that crashed",
            ("kind",),
        )
        self.in_doubt = self._counter(
            "in_doubt",
            "Mail whose earlier attempt got no answer: found in Sent, or resent (may be twice)",
            ("outcome",),
        )
        self.delivery_seconds = Histogram(
            "delivery_seconds",
            "Duration of one delivery attempt to a provider, connection included",
            ("provider",),
            namespace=NAMESPACE,
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.queue_size = self._gauge("queue_size", "Mails waiting in the queue")
        self.queue_oldest_age = self._gauge(
            "queue_oldest_age_seconds", "Age of the oldest queued mail; 0 when the queue is empty"
        )

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        from prometheus_client import Counter

        return Counter(name, doc, labels, namespace=NAMESPACE, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        from prometheus_client import Gauge

        return Gauge(name, doc, labels, namespace=NAMESPACE, registry=self.registry)


def user_label(login: str, mode: str) -> str:
    """What the `user` label shows for a login: the login itself, or a short hash of it."""
    if mode != "hash":
        return login
    # Unkeyed, so an operator can work out which login a series belongs to; by the same token
    # anyone who reads /metrics can test a guessed login (README: Metrics).
    digest = hashlib.blake2b(login.encode(), digest_size=6, person=b"relay-metrics")
    return "u" + digest.hexdigest()


def metrics_token(config: RelayConfig) -> Secret | None:
    """The bearer token scrapers must present, read from metrics.token_file; None if unset."""
    try:
        return config.metrics.token()
    except ValueError as error:
        raise ConfigError(config.source, [("metrics.token_file", str(error))]) from None


def exposure_warning(settings: MetricsConfig) -> str | None:
    """Why a non-loopback metrics address is a risk, in its current settings; None on loopback."""
    if settings.is_loopback:
        return None
    if settings.token_file is None:
        names = "" if settings.user_labels == "drop" else " and the user labels"
        return (
            f"anyone who can reach it reads the counters{names}: set metrics.token_file, "
            "or listen on loopback behind a proxy"
        )
    # /metrics is plain HTTP: the token and the counters cross the network unencrypted.
    return "the bearer token crosses the network in plaintext: keep the path to the scraper private"


def reply_class(code: int | None) -> str:
    """The label for an SMTP reply code: 2xx, 4xx, 5xx, or error when there was none."""
    if code is not None and code // 100 in (2, 4, 5):
        return f"{code // 100}xx"
    return "error"


class MetricsServer:
    """Serves GET /metrics over plain HTTP from the daemon's own event loop."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._token: Secret | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int | None:
        """The port actually bound, or None when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, token: Secret | None = None) -> int:
        """Listen on host:port (0 for any free port), asking for token if given; the bound port."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        self._token = token
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop scrapes in progress; safe to call more than once."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        scrapes = list(self._tasks)
        for task in scrapes:
            task.cancel()
        await asyncio.gather(*scrapes, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_head(reader)
                writer.write(self._respond(request))
                await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a scraper that hung up or sent junk gets nothing more
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: list[str]) -> bytes:
        parts = head[0].split() if head else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", "text/plain", b"bad request\n")
        method, target = parts[0], parts[1]
        if not self._authorized(head):
            # RFC 6750 §3: a request without (or with a wrong) token gets a challenge.
            challenge = 'Bearer realm="relay metrics"'
            body = b"a bearer token is required\n"
            return _response("401 Unauthorized", "text/plain", body, challenge=challenge)
        if target.partition("?")[0] != "/metrics":
            return _response("404 Not Found", "text/plain", b"only /metrics lives here\n")
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "text/plain", b"GET only\n", "GET, HEAD")
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(_header(head, "accept"))
        try:
            body = encoder(self.metrics.registry)
        except Exception:  # a queue callback the daemon gave failed; the scrape says so
            logger.exception("metrics.scrape_failed")
            return _response("500 Internal Server Error", "text/plain", b"scrape failed\n")
        return _response("200 OK", content_type, body, head_only=method == "HEAD")

    def _authorized(self, head: list[str]) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = _header(head, "authorization").partition(" ")
        # RFC 7235 §2.1: the scheme is case-insensitive; the token is compared in constant time.
        return scheme.lower() == "bearer" and secrets.compare_digest(
            credentials.strip().encode(), self._token.reveal().encode()
        )


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
    """The request line and header lines, up to the blank line that ends them."""
    lines: list[str] = []
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_REQUEST_BYTES:
            raise ValueError("request head too long")
        if not line.strip():
            if line:
                return lines
            raise asyncio.IncompleteReadError(b"", None)
        lines.append(line.decode("latin-1").strip())


def _header(head: list[str], name: str) -> str:
    for line in head[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def _response(
    status: str,
    content_type: str,
    body: bytes,
    allow: str = "",
    head_only: bool = False,
    challenge: str = "",
) -> bytes:
    headers = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        headers.append(f"Allow: {allow}")
    if challenge:
        headers.append(f"WWW-Authenticate: {challenge}")
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + (b"" if head_only else body)
