"""The SMTP listener's policy: local AUTH, envelope checks, and handing DATA to delivery."""

from __future__ import annotations

import binascii
import logging
import time
from base64 import b64decode
from dataclasses import dataclass, field

from aiosmtpd.smtp import AuthResult, Envelope, Session

from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.errors import PolicyRejection, RelayError, smtp_reply
from relay.listener.answers import answer
from relay.listener.authgate import Attempt, AuthBusy, AuthGate, Penalty
from relay.listener.entry import local_names, pick_user
from relay.listener.hooktable import HookTable
from relay.listener.logins import name_user
from relay.listener.offers import ehlo_lines, offers_smtputf8, size_limit
from relay.listener.params import RelayEnvelope
from relay.listener.protocol import RelaySMTP
from relay.listener.throttle import SendCounter
from relay.message import prepare, sender_fields
from relay.model import NO_PARAMS, User
from relay.ops.channels import Ops
from relay.policy import (
    effective_recipient_limit,
    header_sender_refusal,
    login_refusal,
    rate_refusal,
    recipient_count_refusal,
    sender_refusal,
    size_refusal,
    utf8_address_refusal,
    wants_verdict,
)
from relay.providers.facts import ProviderFacts
from relay.queue.runner import QueueRunner
from relay.reply import (
    AUTH_BUSY,
    BAD_BASE64,
    BAD_PLAIN,
    LOCAL_ERROR,
    NO_TRANSACTION,
    RECIPIENT_OK,
    SENDER_OK,
    provider_not_configured,
)
from relay.state.localauth import LocalVerifier
from relay.state.store import Store

logger = logging.getLogger("relay.server")  # the name shows in log lines: kept from 0.1

LOCKOUT_FAILURES = 5  # the failure count at which a lockout is logged


@dataclass(frozen=True, slots=True)
class Services:
    """What the listener needs to authenticate and deliver."""

    live: LiveConfig
    store: Store
    verifier: LocalVerifier
    runner: QueueRunner
    ops: Ops
    # What the providers' servers announced (SMTPUTF8, SIZE), as the upstream pool learns it.
    facts: ProviderFacts = field(default_factory=ProviderFacts)

    @property
    def config(self) -> RelayConfig:
        """The config in force now; a session keeps the one it started with (RelaySMTP.config)."""
        return self.live.current


class RelayHandler(HookTable):
    """aiosmtpd handler hooks: authentication, envelope policy, delivery of DATA."""

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.gate = AuthGate()
        self.sends = SendCounter()

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """RFC 4616 PLAIN, with an initial response or after a 334 challenge."""
        blob = await _initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push(BAD_PLAIN.line)
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """The LOGIN mechanism that old apps and Outlook still use."""
        login = await _initial_or_challenge(server, args, "User Name\0")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password\0")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: RelaySMTP, login: bytes, password: bytes) -> AuthResult:
        typed = login.decode("utf-8", "replace")
        # An address names its user before the gate: the gate, the cache and the log then see
        # one login however the user typed it.
        named = name_user(server.services.store, typed)
        user = named.user
        name = user.login if user is not None else typed
        verifier = server.services.verifier
        enabled = user if user is not None and user.enabled else None
        if enabled is not None and verifier.proven(name, enabled.local_hash, password):
            # A right secret proven cheaply is answered at once, whatever guessing goes on.
            return _logged_in(server, enabled)
        address = server.peer_address
        # No address key where every local app shares the address (issue 21).
        exempt = server.tracker.is_exempt(address)
        attempt = Attempt(name, user is not None, None if exempt else address)
        # An unknown login may be a password typed into the wrong field: never log it.
        shown = named.shown(typed)

        def proven() -> bool:
            return enabled is not None and verifier.proven(name, enabled.local_hash, password)

        async def check() -> bool:
            return await verifier.verify(name, None if user is None else user.local_hash, password)

        limits = server.config.limits
        try:
            secret_ok = await self.gate.verify(attempt, limits, proven, check)
        except AuthBusy:
            logger.warning("auth.busy session=%s login=%s", server.session_id, shown)
            return AuthResult(success=False, handled=False, message=AUTH_BUSY.line)
        refusal = login_refusal(user, secret_ok)
        if refusal is None and user is not None:
            self.gate.succeeded(attempt)
            return _logged_in(server, user)
        why = named.reason() if user is None else "disabled" if secret_ok else "bad secret"
        logger.warning("auth.failed session=%s login=%s reason=%s", server.session_id, shown, why)
        server.services.ops.metrics.auth_failed()
        penalty = self.gate.failed(attempt, limits)
        _log_lockout(f"login:{name}" if user is not None else "login:<unknown>", penalty)
        # The guess pays, not the next try: its answer is held, and the gate keeps its login
        # (and a non-exempt address) from verifying anything unproven until the penalty is over.
        await penalty.over.wait()
        reply = refusal.reply if refusal is not None else LOCAL_ERROR  # None: only with a user
        return AuthResult(success=False, handled=False, message=reply.line)

    async def handle_EHLO(  # noqa: N802
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """EHLO's lines with relay's SIZE, SMTPUTF8 and extensions, for the provider(s) in play."""
        session.host_name = hostname  # aiosmtpd leaves this to a five-argument EHLO hook
        config = server.config
        user = session.auth_data
        # Before AUTH the user is not known: offer what any of the providers takes.
        if isinstance(user, User) and user.provider in config.providers:
            providers = [config.providers[user.provider]]
        else:
            providers = list(config.providers.values())
        return ehlo_lines(responses, config, server.services.facts, providers)

    async def handle_MAIL(  # noqa: N802
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        """Accept only the user's own addresses as envelope sender."""
        picked = pick_user(server, session, address)
        if isinstance(picked, PolicyRejection):
            logger.warning(
                "mail.refused session=%s sender=%r reply=%r",
                server.session_id,
                address,
                picked.reply.line,
            )
            return picked.reply.line
        user, address = picked
        if user.provider not in server.config.providers:
            logger.error("config.missing_provider user=%s provider=%s", user.login, user.provider)
            return provider_not_configured(user.provider, user.login).line
        limits = server.config.limits
        last_minute, last_day = self.sends.counts(user.login, time.time())
        refusal = (
            sender_refusal(address, user, server.config.providers[user.provider].preset)
            or rate_refusal(
                last_minute, last_day, limits.messages_per_minute, limits.messages_per_day
            )
            or _size_or_utf8_refusal(server, user, envelope, address, options)
        )
        if refusal is not None:
            logger.warning(
                "mail.refused session=%s sender=%r reply=%r",
                server.session_id,
                address,
                refusal.reply.line,
            )
            return refusal.reply.line
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return SENDER_OK.line

    async def handle_RCPT(  # noqa: N802
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        """Accept recipients up to the per-message limit."""
        user = _user_of(session)
        provider = server.config.providers[user.provider]
        limit = effective_recipient_limit(
            server.config.limits.max_recipients, provider.max_recipients
        )
        refusal = recipient_count_refusal(len(envelope.rcpt_tos), limit) or utf8_address_refusal(
            address,
            envelope.smtp_utf8,
            provider.name,
            offers_smtputf8(server.services.facts, provider),
        )
        if refusal is not None:
            return refusal.reply.line
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return RECIPIENT_OK.line

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        """Spool the message, try it once while the app waits, and relay the verdict."""
        user = _user_of(session)
        if envelope.original_content is None or envelope.mail_from is None:
            return NO_TRANSACTION.line
        prepared = prepare(
            envelope.original_content,
            user,
            envelope.mail_from,
            time.time(),
            local_names=local_names(server, session),
        )
        # The prepared copy is all that is needed from here: free the DATA buffer now.
        envelope.content = envelope.original_content = None
        provider = server.config.providers[user.provider]
        # After prepare: a --rewrite-from user's From and Sender are their own by now.
        refusal = header_sender_refusal(
            sender_fields(prepared.upstream_header),
            user,
            provider.preset,
            foreign_from=provider.allow_foreign_from,
        )
        if refusal is not None:
            logger.warning(
                "message.refused session=%s user=%s msg_id=%s reply=%r",
                server.session_id,
                user.login,
                prepared.message_id,
                refusal.reply.line,
            )
            return refusal.reply.line
        try:
            own = server.config.users.get(user.login)
            verdict = wants_verdict(server.listener.reply, own.reply if own else None)
            params = envelope.params() if isinstance(envelope, RelayEnvelope) else NO_PARAMS
            # A large mail's body was staged as it arrived: prepared holds its header.
            staged = envelope.staged if isinstance(envelope, RelayEnvelope) else None
            result = await server.services.runner.accept(
                user,
                prepared,
                list(envelope.rcpt_tos),
                verdict=verdict,
                params=params,
                staged=staged,
            )
            reply = answer(result)
        except RelayError as error:
            logger.error("message.local_error session=%s error=%s", server.session_id, error)
            reply = smtp_reply(error)
        except Exception:
            # Whatever went wrong here is relay's, not the app's: the app hears a plain 451
            # and tries again; the detail, traceback included, is for the log.
            logger.exception("message.local_error session=%s", server.session_id)
            reply = LOCAL_ERROR
        if reply.positive:
            self.sends.record(user.login, time.time())
        # At DEBUG: the one INFO line per mail is delivery.attempt, which says what ops need.
        logger.debug(
            "message.reply session=%s user=%s msg_id=%s rcpts=%d reply=%r",
            server.session_id,
            user.login,
            prepared.message_id,
            len(envelope.rcpt_tos),
            reply.line,
        )
        return reply.line


async def _initial_or_challenge(server: RelaySMTP, args: list[str], prompt: str) -> bytes | None:
    if len(args) == 1:
        answer = await server.challenge_auth(prompt)
        return answer if isinstance(answer, bytes) else None
    try:
        return b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        await server.push(BAD_BASE64.line)
        return None


def _size_or_utf8_refusal(
    server: RelaySMTP, user: User, envelope: Envelope, address: str, options: list[str]
) -> PolicyRejection | None:
    """MAIL's SIZE against the user's provider's limit, and a UTF-8 sender against SMTPUTF8."""
    provider = server.config.providers[user.provider]
    facts = server.services.facts
    # The DATA that follows is read up to this limit (RelaySMTP.size_limit).
    server.size_limit = limit = size_limit(server.config, facts, provider)
    declared = next((o[5:] for o in options if o.startswith("SIZE=")), "")
    too_big = size_refusal(int(declared), limit) if declared.isdigit() else None
    offered = offers_smtputf8(facts, provider)
    return too_big or utf8_address_refusal(address, envelope.smtp_utf8, provider.name, offered)


def _logged_in(server: RelaySMTP, user: User) -> AuthResult:
    logger.debug("auth.ok session=%s login=%s", server.session_id, user.login)
    return AuthResult(success=True, auth_data=user)


def _log_lockout(login_key: str, penalty: Penalty) -> None:
    for key, failures in (
        (login_key, penalty.login_failures),
        (penalty.address_key, penalty.address_failures),
    ):
        if failures == LOCKOUT_FAILURES:
            logger.warning(
                "auth.lockout key=%r failures=%d delay=%.0fs", key, failures, penalty.delay
            )


def _user_of(session: Session) -> User:
    user = session.auth_data
    if not isinstance(user, User):
        # aiosmtpd answers 530 to MAIL, RCPT and DATA before AUTH; reaching here is a bug.
        raise RelayError("session has no authenticated user")
    return user
