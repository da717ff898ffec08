"""Upstream SMTP sessions, pooled per user so TLS and AUTH are not paid for every message."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import aiosmtplib

from relay.config.model import RelayConfig
from relay.errors import DeliveryInDoubt, UpstreamError
from relay.message import MessageData, data_size
from relay.model import NO_PARAMS, EnvelopeParams
from relay.providers.facts import ProviderFacts
from relay.providers.presets import Endpoint, TlsMode
from relay.tls import TlsContexts
from relay.upstream.account import SendOutcome, UpstreamAccount, UpstreamTimeouts
from relay.upstream.concurrency import SessionLimit, SessionUse, is_pushback
from relay.upstream.envelope import Upstream, upstream_envelope
from relay.upstream.pipelining import envelope_commands, pipelined_envelope
from relay.upstream.replies import auth_error, provider_reply, reply_error, upstream_error
from relay.upstream.sasl import smtp_login
from relay.upstream.senddata import START_INPUT, ReplyLost, send_body, send_data
from relay.upstream.verdicts import (
    BrokenIdleSession,
    RecipientVerdicts,
    lost_before_mail,
    mail_refusal,
)

logger = logging.getLogger("relay.pool")  # the name shows in log lines: kept from 0.1

FRESH_SESSION = 2.0  # seconds since its last mail within which a session is reused unprobed
QUIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How the pool opens and keeps sessions; a reload may bring new ones."""

    local_hostname: str
    timeouts: UpstreamTimeouts
    max_per_key: int
    idle_timeout: float


def pool_settings(config: RelayConfig) -> PoolSettings:
    """How the daemon's upstream pool opens and keeps sessions."""
    return PoolSettings(
        local_hostname=config.hostname,
        timeouts=UpstreamTimeouts(config.upstream.connect_timeout, config.upstream.timeout),
        max_per_key=config.queue.max_connections_per_user,
        idle_timeout=config.queue.connection_idle_timeout,
    )


@dataclass
class Session:
    """One logged-in upstream connection."""

    client: aiosmtplib.SMTP
    where: str
    generation: int = 0  # of the pool's settings it was opened with; older: not reused
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    messages: int = 0


@dataclass
class _UserSlots:
    limit: SessionLimit
    idle: list[Session] = field(default_factory=list)


class UpstreamPool:
    """Logged-in sessions per pool key (user, provider, credentials); idle ones are reused."""

    def __init__(
        self, settings: PoolSettings, tls: TlsContexts, facts: ProviderFacts | None = None
    ) -> None:
        self.settings = settings
        self.tls = tls
        # What each server's EHLO announced, for the listener (SIZE, SMTPUTF8) and transact.
        self.facts = facts if facts is not None else ProviderFacts()
        self._generation = 0
        self._slots: dict[str, _UserSlots] = {}
        self.connections_opened = 0

    async def start_afresh(self, settings: PoolSettings) -> None:
        """After a reload: new sessions use settings; those opened before are not reused."""
        # A provider's host, port or CA may have changed, and a pooled session would keep
        # using the old ones for as long as it stays busy. Sending now finishes on its session,
        # which _use then closes; a user may briefly have max_per_key sessions of each kind.
        self.settings = settings
        self._generation += 1
        old, self._slots = self._slots, {}
        await _close_idle_sessions(old.values())

    async def send(
        self,
        key: str,
        account: UpstreamAccount,
        sender: str,
        recipients: list[str],
        data: MessageData,
        ceiling: int | None = None,
        params: EnvelopeParams = NO_PARAMS,
    ) -> SendOutcome:
        """Send one message over a pooled or fresh session; raise UpstreamError for the whole."""
        started = time.monotonic()
        slots = self._slots_for(key, ceiling or self.settings.max_per_key)
        await slots.limit.acquire()
        try:
            outcome = await self._send_in_slot(slots, account, sender, recipients, data, params)
        except UpstreamError as error:
            if is_pushback(error):
                slots.limit.pushed_back()
                logger.info(
                    "upstream.pushback key_user=%s sessions=%d reply=%r",
                    key.split("|", 1)[0],
                    slots.limit.limit,
                    error.reply.line,
                )
            raise
        finally:
            slots.limit.release()
        slots.limit.delivered()
        return replace(outcome, seconds=time.monotonic() - started)

    def _slots_for(self, key: str, ceiling: int) -> _UserSlots:
        slots = self._slots.get(key)
        if slots is None:
            slots = _UserSlots(SessionLimit(ceiling))
            self._slots[key] = slots
        elif slots.limit.ceiling != ceiling:
            slots.limit.set_ceiling(ceiling)
        return slots

    def usage(self) -> dict[str, SessionUse]:
        """Per login: their sessions in use, the limit now, the ceiling, the sends waiting."""
        found: dict[str, SessionUse] = {}
        for key, slots in self._slots.items():
            login = key.split("|", 1)[0]
            use = slots.limit.use()
            known = found.get(login)
            if known is not None:  # one user at two endpoints or with two secrets: add up
                use = SessionUse(
                    known.in_use + use.in_use,
                    known.limit + use.limit,
                    max(known.ceiling, use.ceiling),
                    known.waiting + use.waiting,
                    known.pushed_back or use.pushed_back,
                )
            found[login] = use
        return found

    async def _send_in_slot(
        self,
        slots: _UserSlots,
        account: UpstreamAccount,
        sender: str,
        recipients: list[str],
        data: MessageData,
        params: EnvelopeParams,
    ) -> SendOutcome:
        outcome = None
        session = await self._reusable(slots)
        if session is not None:
            try:
                outcome = await self._use(
                    slots, session, sender, recipients, data, reused=True, params=params
                )
            except BrokenIdleSession:
                # Nothing was handed over on the broken session: a fresh try cannot double-send.
                logger.info("upstream.reconnect where=%s reason=idle session broken", session.where)
        if outcome is None:
            session = await self._open(account)
            outcome = await self._use(
                slots, session, sender, recipients, data, reused=False, params=params
            )
        return outcome

    async def _use(
        self,
        slots: _UserSlots,
        session: Session,
        sender: str,
        recipients: list[str],
        data: MessageData,
        *,
        reused: bool,
        params: EnvelopeParams = NO_PARAMS,
    ) -> SendOutcome:
        try:
            outcome = await transact(
                session, sender, recipients, data, reused=reused, params=params
            )
        except asyncio.CancelledError:
            # Shutdown's grace is over: a polite QUIT could wait seconds more on a stalled server.
            session.client.close()
            raise
        except BaseException:
            await close_session(session)
            raise
        session.last_used = time.monotonic()
        session.messages += 1
        if session.generation == self._generation:
            slots.idle.append(session)
        else:
            await close_session(session)
        return outcome

    async def _reusable(self, slots: _UserSlots) -> Session | None:
        while slots.idle:
            session = slots.idle.pop()
            idle = time.monotonic() - session.last_used
            # A finished DATA already resets the transaction (RFC 5321 §4.1.1.4), so a session
            # used a moment ago goes straight to MAIL; a break there is caught before anything is
            # handed over (BrokenIdleSession). Longer-idle sessions are probed with RSET first.
            fresh = idle < FRESH_SESSION
            if fresh or (idle < self.settings.idle_timeout and await _reset(session)):
                return session
            await close_session(session)
        return None

    async def _open(self, account: UpstreamAccount) -> Session:
        endpoint = account.endpoint
        where = f"{endpoint.host}:{endpoint.port}"
        client = smtp_client(
            endpoint,
            self.tls.for_ca_file(account.ca_file),
            local_hostname=self.settings.local_hostname,
            timeout=self.settings.timeouts.command,
        )
        try:
            await client.connect(timeout=self.settings.timeouts.connect)
            await smtp_login(client, account.username, account.secret, bearer=account.bearer)
            self.facts.learn(endpoint, client.esmtp_extensions)
        except aiosmtplib.SMTPAuthenticationError as error:
            client.close()
            raise auth_error(error.code, error.message, account.username, where) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            client.close()
            raise upstream_error(error, where) from None
        self.connections_opened += 1
        logger.debug("upstream.connected where=%s user=%s", where, account.username)
        return Session(client, where, self._generation)

    async def close_idle(self) -> None:
        """Close sessions idle longer than the idle timeout."""
        now = time.monotonic()
        for slots in self._slots.values():
            stale = [s for s in slots.idle if now - s.last_used >= self.settings.idle_timeout]
            slots.idle[:] = [s for s in slots.idle if s not in stale]
            await _close_sessions(stale)

    async def close_all(self, quit_timeout: float = QUIT_TIMEOUT) -> None:
        """Close every idle session (sessions in use close when their send ends)."""
        await _close_idle_sessions(self._slots.values(), quit_timeout)


async def _close_idle_sessions(
    all_slots: Iterable[_UserSlots], quit_timeout: float = QUIT_TIMEOUT
) -> None:
    idle: list[Session] = []
    for slots in all_slots:
        idle.extend(slots.idle)
        slots.idle.clear()
    await _close_sessions(idle, quit_timeout)


async def _close_sessions(sessions: Iterable[Session], quit_timeout: float = QUIT_TIMEOUT) -> None:
    # Together: one server slow to answer QUIT must not hold up the others, a reload, a
    # shutdown or the queue runner's tick.
    await asyncio.gather(*(close_session(session, quit_timeout) for session in sessions))


def smtp_client(
    endpoint: Endpoint, context: ssl.SSLContext, *, local_hostname: str, timeout: float
) -> aiosmtplib.SMTP:
    """An unconnected client for endpoint: connect() secures it as the endpoint says, or fails."""
    return aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        use_tls=endpoint.tls is TlsMode.IMPLICIT,
        # True (not None) makes STARTTLS mandatory: never fall back to plaintext.
        start_tls=endpoint.tls is TlsMode.STARTTLS,
        tls_context=context,
        local_hostname=local_hostname,
        timeout=timeout,
    )


async def transact(
    session: Session,
    sender: str,
    recipients: list[str],
    data: MessageData,
    *,
    reused: bool,
    params: EnvelopeParams = NO_PARAMS,
) -> SendOutcome:
    """One mail transaction: MAIL, RCPT per recipient, DATA; replies sorted per recipient."""
    client, where = session.client, session.where
    envelope = upstream_envelope(client.esmtp_extensions, where, sender, recipients, params)
    options = [f"SIZE={data_size(data)}"] if client.supports_extension("size") else []
    start: aiosmtplib.SMTPResponse | None = None
    try:
        if client.supports_extension("pipelining"):
            # RFC 2920: two round trips a mail instead of three and one per recipient.
            commands = envelope_commands(sender, recipients, envelope, options)
            verdicts, start = await pipelined_envelope(
                client, where, commands, recipients, reused=reused
            )
        else:
            await _mail(client, where, sender, options + envelope.mail, envelope, reused=reused)
            verdicts = await _recipients(client, where, recipients, envelope)
        return await _data(client, where, verdicts, data, start)
    except UpstreamError:
        raise
    except (aiosmtplib.SMTPException, OSError) as error:
        raise upstream_error(error, where) from None


async def _mail(
    client: aiosmtplib.SMTP,
    where: str,
    sender: str,
    options: list[str],
    envelope: Upstream,
    *,
    reused: bool,
) -> None:
    try:
        await client.mail(sender, options=options, encoding=envelope.encoding)
    except aiosmtplib.SMTPResponseException as error:
        raise mail_refusal(error.code, error.message, where, reused=reused) from None
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as error:
        raise lost_before_mail(error, where, reused=reused) from None


async def _recipients(
    client: aiosmtplib.SMTP, where: str, recipients: list[str], envelope: Upstream
) -> RecipientVerdicts:
    verdicts = RecipientVerdicts(where)
    for recipient in recipients:
        options = envelope.rcpt.get(recipient, [])
        try:
            said = await client.rcpt(recipient, options=options, encoding=envelope.encoding)
        except aiosmtplib.SMTPRecipientRefused as refusal:
            said = aiosmtplib.SMTPResponse(refusal.code, refusal.message)
        verdicts.take(recipient, said.code, said.message)
    return verdicts


async def _data(
    client: aiosmtplib.SMTP,
    where: str,
    verdicts: RecipientVerdicts,
    data: MessageData,
    start: aiosmtplib.SMTPResponse | None,
) -> SendOutcome:
    """DATA and the body (start: DATA's reply, when it was pipelined), or RSET without one."""
    if not verdicts.accepted:
        if start is not None and start.code == START_INPUT:
            # RFC 2920 §3.1: DATA taken though no recipient was: a single dot ends it.
            await client.execute_command(b".")
        await client.rset()
        return verdicts.outcome(None)
    try:
        if start is None:
            response = await send_data(client, data)
        elif start.code == START_INPUT:
            response = await send_body(client, data)
        else:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
    except aiosmtplib.SMTPDataError as error:
        raise reply_error(error.code, error.message, where) from None
    except ReplyLost as error:
        text = f"{where} did not answer the end of DATA ({error}): it may have the mail"
        raise DeliveryInDoubt(451, "4.4.2", text) from None
    return verdicts.outcome(provider_reply(response.code, response.message))


async def _reset(session: Session) -> bool:
    """RSET before reuse: cheap proof the session still works, before any mail is risked."""
    try:
        response = await session.client.rset(timeout=10.0)
    except (aiosmtplib.SMTPException, OSError):
        return False
    return response.code == 250


async def close_session(session: Session, quit_timeout: float = QUIT_TIMEOUT) -> None:
    """QUIT politely, or just drop the connection if the server is gone."""
    if not session.client.is_connected:
        return
    try:
        await session.client.quit(timeout=quit_timeout)
    except (aiosmtplib.SMTPException, OSError):
        session.client.close()
