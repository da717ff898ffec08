"""The SMTP listener's policy: local AUTH, envelope checks, and handing DATA to delivery."""

from __future__ import annotations

import asyncio
import binascii
import logging
import secrets
import time
from base64 import b64decode
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from relay.config import LimitsConfig, RelayConfig
from relay.dataread import DataReader, read_data
from relay.errors import RelayError, smtp_reply
from relay.localauth import LocalVerifier
from relay.message import prepare
from relay.ops import Ops
from relay.policy import (
    auth_delay,
    effective_recipient_limit,
    login_refusal,
    rate_refusal,
    recipient_count_refusal,
    sender_refusal,
)
from relay.runner import QueueRunner
from relay.sessions import Commands, SessionTracker, peer_address
from relay.store import Store, User
from relay.throttle import FailureCounter, SendCounter
from relay.wire import fit_reply, has_control, plain_address, reply_text

logger = logging.getLogger(__name__)

LOCKOUT_FAILURES = 5  # the failure count at which a lockout is logged
COMMAND_SIZE_LIMIT = 512  # RFC 5321 §4.5.3.1.4: a command line, CRLF included


@dataclass(frozen=True, slots=True)
class Services:
    """What the listener needs to authenticate and deliver."""

    config: RelayConfig
    store: Store
    verifier: LocalVerifier
    runner: QueueRunner
    ops: Ops


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with a session id, session logging and drain awareness."""

    def __init__(self, handler: RelayHandler, tracker: SessionTracker, **kwargs: Any) -> None:
        # aiosmtpd keeps command_size_limits on the class: one dict shared by every session,
        # which each EHLO grows by SIZE's and BODY's allowance. Each session gets its own.
        self.command_size_limits: defaultdict[str, int] = defaultdict(lambda: COMMAND_SIZE_LIMIT)
        super().__init__(handler, **kwargs)
        # aiosmtpd builds two dicts of bound methods for every session, 2.5 KiB of each idle
        # connection: a table that binds on lookup, and the handler's own hooks, serve them all.
        self._smtp_methods = Commands(self, VERBS)  # type: ignore[assignment]  # a Mapping will do
        self._handle_hooks = handler.hooks
        self.session_id = secrets.token_hex(4)
        self.tracker = tracker
        self.opened = time.monotonic()
        self.refused = False
        self.held_lines = ""  # the lines of a multiline reply so far
        # The config a session started with stays its config, even across a reload (SIGHUP).
        self.services: Services = handler.services

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd dispatches on (smtp_*, auth_*)."""
        # aiosmtpd's __init__ lists dir(self) and getattr()s every name, at every connection,
        # to find these: two thirds of a session's setup time.
        return list(DISPATCHED)

    def connection_made(self, transport: Any) -> None:
        first = self.transport is None
        if first:
            refusal = self.tracker.refusal_for(transport)
            if refusal is not None:
                self.refused = True
                logger.warning(
                    "session.refused peer=%s reply=%r", peer_address(transport), refusal.reply
                )
                transport.write(refusal.reply.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if first:
            self.services.ops.metrics.session_opened()
            self.tracker.add(self)
            logger.info("session.start session=%s peer=%s", self.session_id, _peer(self.session))

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        logger.info(
            "session.end session=%s seconds=%.3f", self.session_id, time.monotonic() - self.opened
        )
        self.tracker.discard(self)
        super().connection_lost(error)

    @property
    def peer_address(self) -> str:
        """The client's IP address."""
        peer = getattr(self.session, "peer", None)
        return str(peer[0]) if isinstance(peer, tuple) else "unknown"

    @property
    def in_transaction(self) -> bool:
        """Whether a mail transaction (MAIL given, DATA not finished) is under way."""
        return self.envelope is not None and self.envelope.mail_from is not None

    async def push(self, status: str | bytes) -> None:
        """Send one reply line, with anything but printable ASCII replaced by '?'."""
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        # aiosmtpd echoes client bytes (an unknown verb) into replies: a CR, LF or NUL there
        # would forge or split reply lines in the client, and non-ASCII makes push() raise.
        line = reply_text(text)
        if line[3:4] == "-":
            # RFC 5321 §4.2.1: "250-" lines continue a reply that its last line ends. Held
            # back until then, the reply to EHLO takes one write (one send) instead of seven.
            self.held_lines += line + "\r\n"
            return
        held, self.held_lines = self.held_lines, ""
        await super().push(held + line)

    async def challenge_auth(self, *args: Any, **kwargs: Any) -> Any:
        """aiosmtpd's 334 challenge, with an over-long answer refused rather than crashing."""
        try:
            return await super().challenge_auth(*args, **kwargs)
        except ValueError:
            # asyncio's readline() raises once the answer passes the line limit; unhandled, it
            # becomes a logged traceback and a 500 naming the exception, for any client at will.
            # What is left of the line cannot be told from the next command: close.
            await self.push("500 5.5.6 Authentication Exchange line is too long")
            self.close_now()
            return MISSING

    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if hostname:
            # A repeated EHLO adds SIZE's and BODY's allowance again: start from the base.
            self.command_size_limits.clear()
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if self.tracker.draining:
            await self.push("421 4.3.2 service shutting down, try again later")
            self.close_now()
            return
        if await self._refused_control(arg, "MAIL"):
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if await self._refused_control(arg, "RCPT"):
            return
        await super().smtp_RCPT(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parser, with the plain <local@domain> form read directly."""
        # aiosmtpd runs the email header parser, and defines a class, for every MAIL and RCPT.
        plain = None if self.local_part_limit else plain_address(arg)
        return plain or super()._getaddr(arg)

    async def _refused_control(self, arg: str | None, verb: str) -> bool:
        """Refuse a MAIL or RCPT argument holding a control character; True if refused."""
        if arg is None or not has_control(arg):
            return False
        # aiosmtpd's parser would drop a CR from a domain, or keep a NUL in a quoted local
        # part that the provider connection then refuses: neither may get as far as a queue.
        if not (await self.check_helo_needed() or await self.check_auth_needed(verb)):
            await self.push(f"501 5.5.4 control characters are not allowed in {verb} arguments")
        return True

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        await self._data(arg)
        if self.tracker.draining:
            self.close_idle()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in pieces (relay.dataread) rather than by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = DataReader(self.data_size_limit, self.tracker.data_budget)
        try:
            try:
                await read_data(self._reader, reader)
            except asyncio.CancelledError:
                self._writer.close()  # the connection was lost during DATA
                raise
            if reader.problem is not None:
                self.envelope = self._create_envelope()
                await self.push(reader.problem.value)
                return
            self.envelope.content = self.envelope.original_content = reader.content()
            status = await self._call_handler_hook("DATA")
        finally:
            reader.release()
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)

    def close_idle(self) -> None:
        """Say goodbye to a client that is between transactions (used when draining)."""
        if isinstance(self.transport, asyncio.WriteTransport) and not self.in_transaction:
            self.transport.write(b"421 4.3.2 service shutting down, try again later\r\n")
            self.close_now()

    def close_now(self) -> None:
        """Close the client connection."""
        if self.transport is not None:
            self.transport.close()


# What aiosmtpd looks for on a session: smtp_<VERB> commands and auth_<MECHANISM> methods.
DISPATCHED = tuple(name for name in dir(RelaySMTP) if name.startswith(("smtp_", "auth_")))
VERBS = frozenset(name[len("smtp_") :] for name in DISPATCHED if name.startswith("smtp_"))


class RelayHandler:
    """aiosmtpd handler hooks: authentication, envelope policy, delivery of DATA."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.failures = FailureCounter()
        self.sends = SendCounter()
        # aiosmtpd's hook table (handle_<VERB> by verb), built once for every session to share.
        self.hooks: dict[str, Callable[..., Any]] = {
            name[len("handle_") :]: getattr(self, name)
            for name in dir(self)
            if name.startswith("handle_")
        }

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd looks up on a handler (handle_*, auth_*)."""
        # As RelaySMTP.__dir__: aiosmtpd scans the handler the same way for every session.
        return list(HANDLER_NAMES)

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """RFC 4616 PLAIN, with an initial response or after a 334 challenge."""
        blob = await _initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 cannot split PLAIN credentials")
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
        name = login.decode("utf-8", "replace")
        keys = (f"ip:{server.peer_address}", f"login:{name}")
        limits = server.services.config.limits
        now = time.monotonic()
        failures = max(self.failures.count(key, now) for key in keys)
        # Like Dovecot's auth penalty: recent failures slow every further try, in parallel too.
        delay = auth_delay(failures, limits.auth_failure_delay, limits.auth_failure_max_delay)
        if delay:
            await asyncio.sleep(delay)
        user = server.services.store.find_user(name)
        secret_ok = user is not None and await server.services.verifier.verify(
            user.login, user.local_hash, password
        )
        refusal = login_refusal(user, secret_ok)
        if refusal is not None:
            why = "unknown" if user is None else "disabled" if secret_ok else "bad secret"
            # An unknown login may be a password typed into the wrong field: never log it.
            shown = repr(name) if user is not None else f"<unknown, {len(name)} chars>"
            logger.warning(
                "auth.failed session=%s login=%s reason=%s", server.session_id, shown, why
            )
            server.services.ops.metrics.auth_failed()
            self._count_failure(keys, server.services.config.limits)
            return AuthResult(success=False, handled=False, message=refusal.reply)
        for key in keys:
            self.failures.forget(key)
        logger.info("auth.ok session=%s login=%s", server.session_id, name)
        return AuthResult(success=True, auth_data=user)

    def _count_failure(self, keys: tuple[str, ...], limits: LimitsConfig) -> None:
        for key in keys:
            count = self.failures.failed(key, time.monotonic())
            if count == LOCKOUT_FAILURES:
                delay = auth_delay(count, limits.auth_failure_delay, limits.auth_failure_max_delay)
                logger.warning("auth.lockout key=%r failures=%d delay=%.0fs", key, count, delay)

    async def handle_MAIL(  # noqa: N802
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        """Accept only the user's own addresses as envelope sender."""
        user = _user_of(session)
        if user.provider not in server.services.config.providers:
            logger.error("config.missing_provider user=%s provider=%s", user.login, user.provider)
            return f"451 4.3.5 provider {user.provider!r} of user {user.login!r} is not configured"
        limits = server.services.config.limits
        last_minute, last_day = self.sends.counts(user.login, time.time())
        refusal = sender_refusal(
            address, user, server.services.config.providers[user.provider].preset
        ) or rate_refusal(
            last_minute, last_day, limits.messages_per_minute, limits.messages_per_day
        )
        if refusal is not None:
            logger.warning(
                "mail.refused session=%s sender=%r reply=%r",
                server.session_id,
                address,
                refusal.reply,
            )
            return refusal.reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 sender ok"

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
        provider = server.services.config.providers[user.provider]
        limit = effective_recipient_limit(
            server.services.config.limits.max_recipients, provider.max_recipients
        )
        refusal = recipient_count_refusal(len(envelope.rcpt_tos), limit)
        if refusal is not None:
            return refusal.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        """Spool the message, try it once while the app waits, and relay the verdict."""
        user = _user_of(session)
        if envelope.original_content is None or envelope.mail_from is None:
            return "503 5.5.1 no mail transaction in progress"
        prepared = prepare(envelope.original_content, user, envelope.mail_from, time.time())
        # The prepared copy is all that is needed from here: free the DATA buffer now.
        envelope.content = envelope.original_content = None
        try:
            reply = await server.services.runner.accept(user, prepared, list(envelope.rcpt_tos))
        except RelayError as error:
            reply = smtp_reply(error)
        if reply.startswith("250"):
            self.sends.record(user.login, time.time())
        logger.info(
            "message.reply session=%s user=%s msg_id=%s rcpts=%d reply=%r",
            server.session_id,
            user.login,
            prepared.message_id,
            len(envelope.rcpt_tos),
            reply,
        )
        return fit_reply(reply)


# What aiosmtpd looks for on the handler: handle_<VERB> hooks and auth_<MECHANISM> methods.
HANDLER_NAMES = tuple(name for name in vars(RelayHandler) if name.startswith(("handle_", "auth_")))


async def _initial_or_challenge(server: RelaySMTP, args: list[str], prompt: str) -> bytes | None:
    if len(args) == 1:
        answer = await server.challenge_auth(prompt)
        return answer if isinstance(answer, bytes) else None
    try:
        return b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 cannot decode base64")
        return None


def _user_of(session: Session) -> User:
    user = session.auth_data
    if not isinstance(user, User):
        # aiosmtpd answers 530 to MAIL, RCPT and DATA before AUTH; reaching here is a bug.
        raise RelayError("session has no authenticated user")
    return user


def _peer(session: Session | None) -> str:
    peer = getattr(session, "peer", None)
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
