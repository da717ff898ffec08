"""aiosmtpd's SMTP protocol as relay speaks it: every use of aiosmtpd's private names is here."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, Session, syntax

from relay.config.model import ListenerConfig
from relay.listener.dataread import DataReader, read_data
from relay.listener.params import RelayEnvelope, mail_dsn, rcpt_dsn
from relay.listener.reworded import reworded
from relay.listener.tracker import peer_address
from relay.listener.wire import has_control, plain_address, reply_text
from relay.model import NO_NOTICE
from relay.reply import (
    AUTH_LINE_TOO_LONG,
    AUTH_TIMEOUT,
    DATA_OK,
    DATA_SYNTAX,
    NEED_RCPT,
    SHUTTING_DOWN,
    START_DATA,
    UNAUTHENTICATED_EVICTED,
    Reply,
    control_characters,
)

if TYPE_CHECKING:
    from relay.listener.handler import RelayHandler, Services
    from relay.listener.tracker import SessionTracker
    from relay.policy import SizeLimit

logger = logging.getLogger("relay.server")  # the name shows in log lines: kept from 0.1

COMMAND_SIZE_LIMIT = 512  # RFC 5321 §4.5.3.1.4: a command line, CRLF included
# What each offered extension may add to a command line: RFC 1870 §3 (SIZE, 26), RFC 3461 §4
# (ENVID's 100 and RET=HDRS on MAIL; ORCPT's 500 and NOTIFY on RCPT).
MAIL_EXTENSION_OCTETS = 26 + 100
RCPT_EXTENSION_OCTETS = 500

# aiosmtpd's undocumented names relay relies on, each with the use it makes of them; the
# contract tests (tests/test_library_contracts.py) pin their shape, and `relay serve` refuses to
# start on an aiosmtpd that lacks one, rather than fail per session.
AIOSMTPD_INTERNALS = {
    "_getaddr": "MAIL/RCPT address parsing, overridden for plain <local@domain>",
    "_create_envelope": "a fresh envelope after DATA",
    "_call_handler_hook": "the DATA hook, from relay's own smtp_DATA",
    "command_size_limits": "per-session command size limits",
    "local_part_limit": "whether the plain address fast path applies",
    "_syntax_available": "HELP's list of commands",
    "_strip_command_keyword": "MAIL FROM:/RCPT TO: read before relay takes out DSN parameters",
    "_reset_timeout": "the idle timer, re-armed at every command: relay moves a deadline instead",
    "_timeout_cb": "what the idle timer does when it runs out (close the connection)",
}
# Set per session by aiosmtpd: the command table and hook table relay replaces with shared
# ones, and the stream relay's DATA reader reads from.
AIOSMTPD_SESSION_INTERNALS = (
    "_smtp_methods",
    "_handle_hooks",
    "_reader",
    "_writer",
    "_timeout_handle",
    "_timeout_duration",
)


def aiosmtpd_gaps() -> list[str]:
    """The internals relay needs that this aiosmtpd lacks (empty when all are there)."""
    return [f"aiosmtpd.smtp.SMTP.{name}" for name in AIOSMTPD_INTERNALS if not hasattr(SMTP, name)]


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with a session id, session logging and drain awareness."""

    def __init__(
        self,
        handler: RelayHandler,
        tracker: SessionTracker,
        listener: ListenerConfig | None = None,
        **kwargs: Any,
    ) -> None:
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
        self.idle_deadline = 0.0  # loop time; moved at every command (_reset_timeout)
        self.refused = False
        self.auth_deadline: asyncio.TimerHandle | None = None
        self.held_lines = ""  # the lines of a multiline reply so far
        # The largest mail this transaction may carry: set at MAIL, once the user is known.
        self.size_limit: SizeLimit | None = None
        self.services: Services = handler.services
        # The config a session started with stays its config, even across a reload (SIGHUP).
        self.config = handler.services.config
        # The listener it came in on, as configured when the session started (reply mode).
        self.listener = listener or ListenerConfig()

    def __dir__(self) -> list[str]:
        """Only the auth_* names aiosmtpd looks up on a session (its smtp_* table is relay's)."""
        # aiosmtpd's __init__ lists dir(self) and getattr()s every name, at every connection,
        # to find its AUTH mechanisms and build a table of smtp_* methods that relay replaces
        # with the shared Commands right after: listing those is wasted work per connection.
        return list(AUTH_MECHANISMS)

    def connection_made(self, transport: Any) -> None:
        first = self.transport is None
        if first:
            refusal = self.tracker.admit(transport)
            if refusal is not None:
                self.refused = True
                line = refusal.reply.line
                logger.warning("session.refused peer=%s reply=%r", peer_address(transport), line)
                transport.write(line.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if first:
            self.services.ops.metrics.session_opened()
            self.tracker.add(self)
            logger.debug("session.start session=%s peer=%s", self.session_id, _peer(self.session))
            # A deadline from connecting, not an idle timer: commands before AUTH do not extend
            # it, so a client that never logs in cannot hold a slot with NOOPs (issue 21).
            self.auth_deadline = asyncio.get_running_loop().call_later(
                self.config.limits.unauthenticated_timeout, self._auth_expired
            )

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        logger.debug(
            "session.end session=%s seconds=%.3f", self.session_id, time.monotonic() - self.opened
        )
        self.tracker.discard(self)
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline; the one timer re-arms itself for the time left when it fires."""
        # aiosmtpd cancels its timer and makes a new one at every command, 3% of relay's CPU
        # a mail; moving a number is enough while the timer is due no later than the deadline.
        loop = asyncio.get_running_loop()
        self.idle_deadline = loop.time() + (duration or self._timeout_duration)
        timer = self._timeout_handle
        if timer is None or timer.cancelled() or timer.when() > self.idle_deadline:
            if timer is not None:
                timer.cancel()
            self._timeout_handle = loop.call_at(self.idle_deadline, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self.idle_deadline:
            self._timeout_handle = loop.call_at(self.idle_deadline, self._idle_timer_fired)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it untyped

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
        # aiosmtpd's own fixed replies come out in relay's words, with an enhanced code.
        line = reworded(reply_text(text))
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
            await self.push(AUTH_LINE_TOO_LONG.line)
            self.close_now()
            return MISSING

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        # Old scripts greet with HELO and then AUTH; Postfix takes that, aiosmtpd says 500.
        helo_only = self.session is not None and bool(self.session.host_name)
        helo_only = helo_only and self.session is not None and not self.session.extended_smtp
        if helo_only and self.session is not None:
            self.session.extended_smtp = True
        try:
            await super().smtp_AUTH(arg)
        finally:
            if helo_only and self.session is not None:
                self.session.extended_smtp = False
        if self.session is not None and self.session.authenticated and self.auth_deadline:
            self.auth_deadline.cancel()
            self.auth_deadline = None
            self.tracker.authenticated(self)

    def _auth_expired(self) -> None:
        if self.session is not None and not self.session.authenticated:
            logger.info("session.auth_timeout session=%s", self.session_id)
            self._say_goodbye(AUTH_TIMEOUT.line)

    def evict(self) -> None:
        """Close this unauthenticated session to make room for a new connection."""
        logger.warning("session.evicted session=%s peer=%s", self.session_id, self.peer_address)
        self._say_goodbye(UNAUTHENTICATED_EVICTED.line)

    def _say_goodbye(self, line: str) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.write(line.encode() + b"\r\n")
        self.close_now()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if hostname:
            # A repeated EHLO adds SIZE's and BODY's allowance again: start from the base.
            self.command_size_limits.clear()
        await super().smtp_EHLO(hostname)
        if hostname:
            # SIZE and DSN are offered by relay's EHLO hook, not by aiosmtpd's own lines.
            self.command_size_limits["MAIL"] += MAIL_EXTENSION_OCTETS
            self.command_size_limits["RCPT"] += RCPT_EXTENSION_OCTETS

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if self.tracker.draining:
            await self.push(SHUTTING_DOWN.line)
            self.close_now()
            return
        if await self._refused_control(arg, "MAIL"):
            return
        taken = mail_dsn(arg) if arg is not None and self._extended else (arg, None, None)
        if isinstance(taken, Reply):
            await self._refuse_parameter(taken, "MAIL")
            return
        rest, ret, envid = taken
        envelope = self.relay_envelope
        fresh = envelope.mail_from is None
        await super().smtp_MAIL(rest)
        if fresh and envelope.mail_from is not None:
            envelope.ret, envelope.envid = ret, envid

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        if await self._refused_control(arg, "RCPT"):
            return
        taken = rcpt_dsn(arg) if arg is not None and self._extended else (arg, NO_NOTICE)
        if isinstance(taken, Reply):
            await self._refuse_parameter(taken, "RCPT")
            return
        rest, notice = taken
        envelope = self.relay_envelope
        before = len(envelope.rcpt_tos)
        await super().smtp_RCPT(rest)
        if len(envelope.rcpt_tos) > before:
            envelope.notices.append((envelope.rcpt_tos[-1], notice))

    @property
    def _extended(self) -> bool:
        """Whether the client greeted with EHLO (only then may MAIL and RCPT have parameters)."""
        return self.session is not None and bool(self.session.extended_smtp)

    @property
    def relay_envelope(self) -> RelayEnvelope:
        """The envelope of the transaction, with what relay keeps on it."""
        envelope = self.envelope
        if not isinstance(envelope, RelayEnvelope):
            envelope = self.envelope = RelayEnvelope()
        return envelope

    def _create_envelope(self) -> RelayEnvelope:
        """A fresh envelope (aiosmtpd calls this at RSET, HELO/EHLO and after DATA)."""
        self.size_limit = None
        return RelayEnvelope()

    async def _refuse_parameter(self, reply: Reply, verb: str) -> None:
        """Answer a bad MAIL/RCPT argument, unless HELO or AUTH is missing (that comes first)."""
        if not (await self.check_helo_needed() or await self.check_auth_needed(verb)):
            await self.push(reply.line)

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
        await self._refuse_parameter(control_characters(verb), verb)
        return True

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802  (aiosmtpd dispatch name)
        await self._data(arg)
        if self.tracker.draining:
            self.close_idle()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in pieces (relay.dataread) rather than by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push(NEED_RCPT.line)
            return
        if arg:
            await self.push(DATA_SYNTAX.line)
            return
        await self.push(START_DATA.line)
        limit = self.size_limit
        budget, stage = self.tracker.data_budget, self.services.runner.stage
        reader = DataReader(limit.octets if limit else None, budget, stage)
        try:
            try:
                await read_data(self._reader, reader)
            except asyncio.CancelledError:
                self._writer.close()  # the connection was lost during DATA
                raise
            if reader.problem is not None:
                self.envelope = self._create_envelope()
                await self.push(reader.refusal(limit).line)
                return
            reader.fill(self.envelope)
            status = await self._call_handler_hook("DATA")
        finally:
            reader.release()
        self.envelope = self._create_envelope()
        await self.push(DATA_OK.line if status is MISSING else status)

    def close_idle(self) -> None:
        """Say goodbye to a client that is between transactions (used when draining)."""
        if isinstance(self.transport, asyncio.WriteTransport) and not self.in_transaction:
            self.transport.write(SHUTTING_DOWN.line.encode() + b"\r\n")
            self.close_now()

    def close_now(self) -> None:
        """Close the client connection."""
        if self.transport is not None:
            self.transport.close()


# What aiosmtpd looks for on a session: smtp_<VERB> commands and auth_<MECHANISM> methods.
DISPATCHED = tuple(name for name in dir(RelaySMTP) if name.startswith(("smtp_", "auth_")))


VERBS = frozenset(name[len("smtp_") :] for name in DISPATCHED if name.startswith("smtp_"))
AUTH_MECHANISMS = tuple(name for name in DISPATCHED if name.startswith("auth_"))


def _peer(session: Session | None) -> str:
    peer = getattr(session, "peer", None)
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class Commands(Mapping[str, Callable[[str], Awaitable[None]]]):
    """A session's smtp_<VERB> methods by verb, bound when looked up."""

    __slots__ = ("_session", "_verbs")

    def __init__(self, session: RelaySMTP, verbs: frozenset[str]) -> None:
        self._session = session
        self._verbs = verbs

    def __getitem__(self, verb: str) -> Callable[[str], Awaitable[None]]:
        if verb not in self._verbs:
            raise KeyError(verb)
        method: Callable[[str], Awaitable[None]] = getattr(self._session, "smtp_" + verb)
        return method

    def get(  # type: ignore[override]  # Mapping.get's overloads, in the one form aiosmtpd uses
        self, verb: str, default: None = None
    ) -> Callable[[str], Awaitable[None]] | None:
        """The method for verb, or None; called for every command line."""
        return getattr(self._session, "smtp_" + verb) if verb in self._verbs else default

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._verbs))

    def __len__(self) -> int:
        return len(self._verbs)
