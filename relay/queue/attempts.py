"""One delivery attempt: sending a queued message as its user, and what the attempt came to."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from relay.config.delivery import session_ceiling
from relay.config.live import LiveConfig
from relay.config.model import ProviderConfig, RelayConfig
from relay.errors import (
    LoginRefused,
    PermanentFailure,
    PermanentLoginRefusal,
    PolicyRejection,
    RelayError,
    TemporaryLoginRefusal,
    UpstreamError,
    smtp_reply,
)
from relay.message import MessageData, whole
from relay.model import NO_PARAMS, EnvelopeParams, User
from relay.ops.channels import Ops
from relay.providers.presets import GRAPH_URL, Transport
from relay.queue.records import QueueEntry
from relay.queue.spool import Spool
from relay.reply import Reply, provider_not_configured
from relay.state.store import Store
from relay.upstream.account import SendOutcome, UpstreamAccount
from relay.upstream.credentials import Credentials, UpstreamSecret
from relay.upstream.graph import GraphAccount, GraphTransport
from relay.upstream.pool import UpstreamPool
from relay.upstream.replies import refusal_reply
from relay.upstream.sasl import bearer_refused_fix
from relay.upstream.sendas import copy_mailbox, message_header

logger = logging.getLogger("relay.attempts")  # the name shows in log lines: kept from 0.1
LOGGED_RECIPIENTS = 5  # the addresses a delivery.attempt line names; then "+N"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One attempt's result per recipient, and the whole-message error if there was one."""

    outcome: SendOutcome
    error: UpstreamError | None
    remote: str
    user: User | None  # as the attempt found them; None once the user is gone
    size: int | None = None  # octets sent, where the attempt had the mail in memory


class Attempts:
    """Sends a queued message's pending recipients through the user's account, and logs it."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        credentials: Credentials,
        pool: UpstreamPool,
        spool: Spool,
        ops: Ops,
    ) -> None:
        self._live = live
        self._store = store
        self._credentials = credentials
        self._pool = pool
        self._spool = spool
        self._ops = ops
        self._graph: GraphTransport | None = None  # made for the first Graph provider's mail

    @property
    def config(self) -> RelayConfig:
        """The config in force (a reload replaces it)."""
        return self._live.current

    @property
    def graph(self) -> GraphTransport:
        """The Graph transport, its HTTP clients kept open across mails."""
        if self._graph is None:
            upstream = self.config.upstream
            self._graph = GraphTransport(self._pool.tls, upstream.connect_timeout, upstream.timeout)
        return self._graph

    async def close(self) -> None:
        """Close Graph's kept HTTP clients."""
        if self._graph is not None:
            await self._graph.close()

    async def attempt(self, entry: QueueEntry, data: bytes | None, user: User | None) -> Verdict:
        """Try the pending recipients once, with data in memory or (None) read from the spool.

        user is the one the listener authenticated, for a first attempt; a retry reads the
        store again, since the user may have been disabled or given a new password meanwhile.
        """
        pending = entry.pending
        remote = "unknown"
        if user is None:
            user = self._store.find_user(entry.login)
        try:
            found, provider = self._usable(user, entry.login)
            remote = provider.smtp.host
            outcome = await self._deliver(entry, data, found, provider)
            return Verdict(outcome, None, remote, user, len(data) if data is not None else None)
        except RelayError as error:
            await self._ops.login_failed(entry.login, error)
            if not isinstance(error, UpstreamError | PolicyRejection):
                logger.warning("delivery.local_error id=%s error=%s", entry.id, error)
            reply = smtp_reply(error)
            permanent = isinstance(error, PermanentFailure)
            replies = dict.fromkeys(pending, reply)
            outcome = SendOutcome(
                reply=None,
                failed=replies if permanent else {},
                deferred={} if permanent else replies,
            )
            upstream = error if isinstance(error, UpstreamError) else None
            return Verdict(outcome, upstream, remote, user)

    async def _deliver(
        self, entry: QueueEntry, data: bytes | None, user: User, provider: ProviderConfig
    ) -> SendOutcome:
        # A large mail is read from the spool a piece at a time as it goes out, never whole.
        found: MessageData | None = data
        if found is None:
            found = await self._spool.open_data(entry.id)
        if found is None:
            raise PolicyRejection(451, "4.3.0", "message data missing from the spool")
        opened = await self._credentials.open(user, provider)
        try:
            return await self._send(
                user, provider, opened, entry.sender, entry.pending, found, entry.params
            )
        except LoginRefused:
            # An access token may die before its expiry (revoked, clock skew): one fresh
            # token is worth a second try; a refused password is not.
            if not self._credentials.refused(user, opened):
                raise
            opened = await self._credentials.open(user, provider)
            return await self._send_bearer(user, provider, opened, entry, found)

    def _usable(self, user: User | None, login: str) -> tuple[User, ProviderConfig]:
        if user is None:
            raise PolicyRejection(451, "4.7.0", f"user {login!r} no longer exists")
        provider = self.config.providers.get(user.provider)
        if provider is None:
            raise provider_missing(user)
        return user, provider

    async def _send_bearer(
        self,
        user: User,
        provider: ProviderConfig,
        opened: UpstreamSecret,
        entry: QueueEntry,
        data: MessageData,
    ) -> SendOutcome:
        try:
            return await self._send(
                user, provider, opened, entry.sender, entry.pending, data, entry.params
            )
        except PermanentLoginRefusal as error:
            # A server answers 535 alike for a bad token and for its own trouble checking one
            # (Dovecot's introspection down), and a fresh token was refused too: keep the mail
            # until the login works or someone looks (relay check), rather than bounce it.
            hint = bearer_refused_fix(user.login)
            raise TemporaryLoginRefusal(451, "4.7.0", error.text, hint) from None

    async def _send(
        self,
        user: User,
        provider: ProviderConfig,
        opened: UpstreamSecret,
        sender: str,
        recipients: list[str],
        data: MessageData,
        params: EnvelopeParams = NO_PARAMS,
    ) -> SendOutcome:
        if provider.transport is Transport.GRAPH:
            return await self._send_graph(user, provider, opened, recipients, await whole(data))
        account = UpstreamAccount(
            provider.smtp, user.upstream_user, opened.secret, provider.ca_file, opened.bearer
        )
        # A changed password, grant or provider must never reuse a session logged in with the
        # old one.
        key = f"{user.login}|{provider.smtp.host}:{provider.smtp.port}|{opened.identity}"
        ceiling = session_ceiling(self.config, user.login, provider)
        return await self._pool.send(
            key, account, sender, recipients, data, ceiling=ceiling, params=params
        )

    async def _send_graph(
        self,
        user: User,
        provider: ProviderConfig,
        opened: UpstreamSecret,
        recipients: list[str],
        data: bytes,
    ) -> SendOutcome:
        """Graph sendMail as the user's mailbox (Send As: From's), with the app's token."""
        base = provider.graph_url or GRAPH_URL
        mailbox = copy_mailbox(user, provider, await message_header(data))
        account = GraphAccount(base, mailbox, opened.secret, provider.ca_file)
        return await self.graph.send(account, recipients, data)

    def log(self, entry: QueueEntry, verdict: Verdict, delay: float) -> None:
        """Log the attempt's delivery.attempt line and count it in the metrics."""
        self._count(entry, verdict)
        outcome = verdict.outcome
        # The one INFO line a mail gets (issue 19): the rest of its story is at DEBUG.
        logger.info(
            "delivery.attempt id=%s user=%s msg_id=%s to=%s size=%s attempt=%d delivered=%d "
            "deferred=%d failed=%d reply=%r next_in=%s seconds=%.3f",
            entry.id,
            entry.login,
            entry.message_id,
            _addresses({**outcome.delivered, **outcome.deferred, **outcome.failed}),
            "-" if verdict.size is None else verdict.size,
            entry.attempts,
            len(outcome.delivered),
            len(outcome.deferred),
            len(outcome.failed),
            summary(verdict),
            f"{delay:.1f}s" if entry.pending else "-",
            outcome.seconds,
        )

    def _count(self, entry: QueueEntry, verdict: Verdict) -> None:
        metrics, outcome = self._ops.metrics, verdict.outcome
        provider = verdict.user.provider if verdict.user is not None else "unknown"
        code = verdict.error.code if verdict.error is not None else None
        if code is None and outcome.reply is not None:
            code = outcome.reply.code
        metrics.upstream_reply(provider, code)
        metrics.delivery_attempted(provider, outcome.seconds)
        if outcome.delivered:
            metrics.mail_delivered(entry.login, provider)
        if outcome.deferred:
            metrics.mail_deferred(entry.login, provider)
        if outcome.failed:
            metrics.mail_bounced(entry.login, provider)


def _addresses(recipients: dict[str, Reply]) -> str:
    shown = ",".join(list(recipients)[:LOGGED_RECIPIENTS]) or "-"
    more = len(recipients) - LOGGED_RECIPIENTS
    return f"{shown},+{more}" if more > 0 else shown


def summary(verdict: Verdict) -> str:
    """The attempt's replies in one line: the whole-message error, or each recipient's reply."""
    if verdict.error is not None:
        return verdict.error.reply.line
    outcome = verdict.outcome
    parts = [outcome.reply.line] if outcome.delivered and outcome.reply else []
    others = {**outcome.deferred, **outcome.failed}
    parts += [f"<{r}> {reply.line}" for r, reply in others.items()]
    return "; ".join(parts) or "no recipient accepted"


def app_refusal(verdict: Verdict) -> Reply:
    """The 5xx the waiting app hears when every recipient was refused for good."""
    if verdict.error is not None:
        return verdict.error.reply
    return refusal_reply(verdict.outcome.failed)


def provider_missing(user: User) -> PolicyRejection:
    """The user's provider is not in the config (a reload removed it, say)."""
    reply = provider_not_configured(user.provider, user.login)
    return PolicyRejection(reply.code, reply.enhanced, reply.text)
