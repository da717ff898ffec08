"""An SMTP reply as a value (code, enhanced status code, text), and the replies relay words itself.

Replies travel as values from the provider or a policy to the listener, which alone puts them on
the wire (Reply.line, one line of at most 512 octets). Text that was stored (the spool keeps each
recipient's last reply as a line) comes back through Reply.parse, the one reader of reply lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REPLY_LINE_BYTES = 510  # RFC 5321 §4.5.3.1.5: 512 octets including the CRLF
_LINE = re.compile(r"([2-5]\d\d)(?:[ -]|$)(?:([245]\.\d{1,3}\.\d{1,3})(?: |$))?(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: its code, RFC 3463 enhanced code ("" when none was given) and text."""

    code: int
    enhanced: str
    text: str
    hint: str | None = None  # what would fix it, when that is known; kept when the line is cut

    @property
    def line(self) -> str:
        """The reply as one line of at most 510 octets, the hint kept whole at its end."""
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        text = self.text
        if not text.isprintable():  # one C pass for the usual reply, a Python one otherwise
            text = "".join(c if c.isprintable() else " " for c in text)
        text = " ".join(text.split())
        tail = f" (hint: {self.hint})" if self.hint else ""
        room = REPLY_LINE_BYTES - len(head.encode()) - len(tail.encode())
        encoded = text.encode("utf-8", "replace")
        if len(encoded) > room:
            # The provider's words give, so the hint at the end survives the cut.
            text = encoded[: max(0, room - 3)].decode("utf-8", "ignore") + "..."
        return (head + text + tail).rstrip()

    @property
    def positive(self) -> bool:
        """2xx: the command or the mail was taken."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """5xx: trying again unchanged will not help."""
        return self.code >= 500

    def __str__(self) -> str:
        return self.line

    @classmethod
    def parse(cls, line: str) -> Reply:
        """A reply line read back (from the spool or a log), or a generic 451 for anything else."""
        match = _LINE.fullmatch(line.strip())
        if match is None:
            return cls(451, "4.0.0", line.strip())
        code, enhanced, text = match.groups()
        return cls(int(code), enhanced or "", text.strip())

    def status(self, default: str) -> str:
        """The enhanced code, or default when the server gave none or one of another class."""
        if self.enhanced and self.enhanced[0] == str(self.code)[0]:
            return self.enhanced
        return default


# --- The replies relay words itself -------------------------------------------------------------
# Tests import these rather than copy the words: one table, one wording per situation.

SENDER_OK = Reply(250, "2.1.0", "sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "recipient ok")
DATA_OK = Reply(250, "2.0.0", "OK")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
SHUTTING_DOWN = Reply(421, "4.3.2", "service shutting down, try again later")
AUTH_TIMEOUT = Reply(421, "4.4.2", "timeout before authentication, closing")
UNAUTHENTICATED_EVICTED = Reply(
    421, "4.7.0", "too many connections not yet authenticated; the oldest is closed"
)
LOCAL_ERROR = Reply(451, "4.3.0", "local error, try again later")
KEY_PROBLEM = Reply(451, "4.3.0", "local key problem: a stored upstream secret cannot be opened")
NO_STORAGE = Reply(452, "4.3.1", "insufficient system storage, try again later")
NO_DATA_MEMORY = Reply(
    452, "4.3.1", "insufficient system resources for more mail data, try again later"
)
# RFC 4954 §6: 454 4.7.0 "Temporary authentication failure".
AUTH_BUSY = Reply(454, "4.7.0", "too many authentication attempts, try again later")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long (see RFC5321 4.5.3.1.6)")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
BAD_BASE64 = Reply(501, "5.5.2", "cannot decode base64")
BAD_PLAIN = Reply(501, "5.5.2", "cannot split PLAIN credentials")
NEED_RCPT = Reply(503, "5.5.1", "need RCPT command")
NO_TRANSACTION = Reply(503, "5.5.1", "no mail transaction in progress")
TOO_MUCH_DATA = Reply(552, "5.3.4", "too much mail data")  # the limit's own reply is policy's

# --- The replies aiosmtpd words, in relay's words (relay.listener.reworded maps them) ----------
# RFC 2034 §3: every 2xx, 4xx and 5xx reply but the greeting and EHLO's carries an enhanced code.
OK = Reply(250, "2.0.0", "OK")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "ready to start TLS")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_FIRST = Reply(530, "5.7.0", "must issue a STARTTLS command first")
TLS_NOT_ESTABLISHED = Reply(554, "5.7.0", "command refused: the TLS handshake did not complete")
AUTH_REQUIRED = Reply(530, "5.7.0", "authentication required")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "already authenticated")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_ABORTED = Reply(501, "5.7.0", "authentication aborted")
BAD_AUTH_VALUE = Reply(501, "5.5.2", "cannot split the authentication value")
COMMAND_TOO_LONG = Reply(500, "5.5.2", "command line too long")
BAD_SYNTAX = Reply(500, "5.5.2", "syntax error: empty or unreadable command")
NOT_ASCII = Reply(500, "5.5.2", "syntax error: a command must be ASCII")
NEED_HELO = Reply(503, "5.5.1", "send HELO or EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "need MAIL command")
NESTED_MAIL = Reply(503, "5.5.1", "nested MAIL command: one transaction at a time")
MALFORMED_ADDRESS = Reply(553, "5.1.3", "malformed address")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [SP <mail-parameters>]")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [SP <rcpt-parameters>]")
QUIT_SYNTAX = Reply(501, "5.5.4", "Syntax: QUIT")
RSET_SYNTAX = Reply(501, "5.5.4", "Syntax: RSET")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY <address>")
VRFY_UNSURE = Reply(252, "2.0.0", "cannot VRFY user, but will accept mail and try to deliver it")
BODY_SYNTAX = Reply(501, "5.5.4", "BODY can only be 7BIT or 8BITMIME")
SMTPUTF8_SYNTAX = Reply(501, "5.5.4", "SMTPUTF8 takes no value")
MAIL_PARAMETERS = Reply(555, "5.5.4", "MAIL FROM parameters not recognized or not implemented")
RCPT_PARAMETERS = Reply(555, "5.5.4", "RCPT TO parameters not recognized or not implemented")
EXPN_UNSUPPORTED = Reply(502, "5.5.1", "EXPN not implemented")


def unknown_command(verb: str) -> Reply:
    """A command relay does not know (aiosmtpd names it; non-ASCII was replaced already)."""
    return Reply(500, "5.5.1", f"command {verb!r} not recognized")


def dsn_parameter_problem(verb: str, why: str) -> Reply:
    """A DSN parameter (RFC 3461 §4) that relay cannot read."""
    # RFC 3461 §4: a malformed parameter is a syntax error in its parameters (501 5.5.4).
    return Reply(501, "5.5.4", f"{verb} DSN parameter {why}")


def control_characters(verb: str) -> Reply:
    """A MAIL or RCPT argument held a control character."""
    return Reply(501, "5.5.4", f"control characters are not allowed in {verb} arguments")


def provider_not_configured(provider: str, login: str) -> Reply:
    """The user's provider is missing from the config (a reload removed it, say)."""
    return Reply(451, "4.3.5", f"provider {provider!r} of user {login!r} is not configured")
