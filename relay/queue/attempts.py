"""One delivery attempt: sending a queued message as its user, and what the attempt came to."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
from relay.model import User
from relay.ops.channels import Ops
from relay.queue.records import QueueEntry
from relay.queue.sentcopies import provider_label
from relay.queue.spool import Spool
from relay.state.store import Store
from relay.upstream.account import SendOutcome, UpstreamAccount
from relay.upstream.credentials import Credentials, UpstreamSecret
from relay.upstream.pool import UpstreamPool
from relay.upstream.replies import refusal_reply
from relay.upstream.sasl import bearer_refused_fix

logger = logging.getLogger("relay.attempts")  # the name shows in log lines: kept from 0.1


@dataclass(frozen=True, slots=True)
class Verdict:
    """One attempt's result per recipient, and the whole-message error if there was one."""

    outcome: SendOutcome
    error: UpstreamError | None
    remote: str


class Attempts:
    """Sends a queued message's pending recipients through the user's account, and logs it."""

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        credentials: Credentials,
        pool: UpstreamPool,
        spool: Spool,
        ops: Ops,
    ) -> None:
        self.config = config
        self._store = store
        self._credentials = credentials
        self._pool = pool
        self._spool = spool
        self._ops = ops

    async def attempt(self, entry: QueueEntry, data: bytes | None) -> Verdict:
        """Try the pending recipients once, with data in memory or (None) read from the spool."""
        pending = entry.pending
        remote = "unknown"
        try:
            user, provider = self._user_and_provider(entry.login)
            remote = provider.smtp.host
            if data is None:
                data = await self._spool.read_data(entry.id)
            if data is None:
                raise PolicyRejection(451, "4.3.0", "message data missing from the spool")
            opened = await self._credentials.open(user, provider)
            try:
                outcome = await self._send(user, provider, opened, entry.sender, pending, data)
            except LoginRefused:
                # An access token may die before its expiry (revoked, clock skew): one fresh
                # token is worth a second try; a refused password is not.
                if not self._credentials.refused(user, opened):
                    raise
                opened = await self._credentials.open(user, provider)
                outcome = await self._send_bearer(user, provider, opened, entry, data)
            return Verdict(outcome, None, remote)
        except (UpstreamError, PolicyRejection, RelayError) as error:
            reply = smtp_reply(error)
            permanent = isinstance(error, PermanentFailure)
            replies = dict.fromkeys(pending, reply)
            outcome = SendOutcome(
                reply=reply,
                failed=replies if permanent else {},
                deferred={} if permanent else replies,
            )
            return Verdict(outcome, error if isinstance(error, UpstreamError) else None, remote)

    def _user_and_provider(self, login: str) -> tuple[User, ProviderConfig]:
        user = self._store.find_user(login)
        if user is None:
            raise PolicyRejection(451, "4.7.0", f"user {login!r} no longer exists")
        provider = self.config.providers.get(user.provider)
        if provider is None:
            raise PolicyRejection(451, "4.3.5", f"provider {user.provider!r} is not configured")
        return user, provider

    async def _send_bearer(
        self,
        user: User,
        provider: ProviderConfig,
        opened: UpstreamSecret,
        entry: QueueEntry,
        data: bytes,
    ) -> SendOutcome:
        try:
            return await self._send(user, provider, opened, entry.sender, entry.pending, data)
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
        data: bytes,
    ) -> SendOutcome:
        account = UpstreamAccount(
            provider.smtp, user.upstream_user, opened.secret, provider.ca_file, opened.bearer
        )
        # A changed password, grant or provider must never reuse a session logged in with the
        # old one.
        key = f"{user.login}|{provider.smtp.host}:{provider.smtp.port}|{opened.identity}"
        return await self._pool.send(key, account, sender, recipients, data)

    def log(self, entry: QueueEntry, verdict: Verdict, delay: float) -> None:
        """Log the attempt's delivery.attempt line and count it in the metrics."""
        self._count(entry, verdict)
        outcome = verdict.outcome
        logger.info(
            "delivery.attempt id=%s user=%s msg_id=%s attempt=%d delivered=%d deferred=%d "
            "failed=%d reply=%r next_in=%s seconds=%.3f",
            entry.id,
            entry.login,
            entry.message_id,
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
        provider = provider_label(self._store, entry.login)
        code = verdict.error.code if verdict.error is not None else _reply_code(outcome.reply)
        metrics.upstream_reply(provider, code)
        metrics.delivery_attempted(provider, outcome.seconds)
        if outcome.delivered:
            metrics.mail_delivered(entry.login, provider)
        if outcome.deferred:
            metrics.mail_deferred(entry.login, provider)
        if outcome.failed:
            metrics.mail_bounced(entry.login, provider)


def _reply_code(reply: str) -> int | None:
    head = reply[:3]
    return int(head) if head.isdigit() else None


def summary(verdict: Verdict) -> str:
    """The attempt's replies in one line: the whole-message error, or each recipient's reply."""
    if verdict.error is not None:
        return verdict.error.reply
    outcome = verdict.outcome
    parts = [outcome.reply] if outcome.delivered else []
    parts += [f"<{r}> {reply}" for r, reply in {**outcome.deferred, **outcome.failed}.items()]
    return "; ".join(parts) or outcome.reply


def app_refusal(verdict: Verdict) -> str:
    """The 5xx the waiting app hears when every recipient was refused for good."""
    if verdict.error is not None:
        return verdict.error.reply
    return refusal_reply(verdict.outcome.failed)
