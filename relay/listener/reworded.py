"""aiosmtpd's own fixed replies, each put in relay's words with an enhanced status code.

aiosmtpd answers many commands itself ("503 Error: need MAIL command", "250 OK", ...), with no
enhanced code and an "Error:" prefix that means nothing to an operator. RelaySMTP.push passes
every line without an enhanced code through reworded(), so what apps read comes from relay's
table of replies (relay.reply), and ENHANCEDSTATUSCODES can be offered honestly (RFC 2034 §3).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from relay.reply import (
    ALREADY_AUTHENTICATED,
    AUTH_ABORTED,
    AUTH_REQUIRED,
    AUTH_SYNTAX,
    BAD_AUTH_VALUE,
    BAD_SYNTAX,
    BODY_SYNTAX,
    BYE,
    COMMAND_TOO_LONG,
    EHLO_SYNTAX,
    EXPN_UNSUPPORTED,
    HELO_SYNTAX,
    LINE_TOO_LONG,
    LOCAL_ERROR,
    MAIL_PARAMETERS,
    MAIL_SYNTAX,
    MALFORMED_ADDRESS,
    NEED_HELO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    NOT_ASCII,
    OK,
    QUIT_SYNTAX,
    RCPT_PARAMETERS,
    RCPT_SYNTAX,
    READY_FOR_TLS,
    RSET_SYNTAX,
    SMTPUTF8_SYNTAX,
    STARTTLS_SYNTAX,
    TLS_FIRST,
    TLS_NOT_ESTABLISHED,
    TLS_UNAVAILABLE,
    TOO_MUCH_DATA,
    VRFY_SYNTAX,
    VRFY_UNSURE,
    Reply,
    unknown_command,
)

# Lines that already carry one (RFC 3463: class.subject.detail after the code).
_ENHANCED = re.compile(r"[2-5]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_UNKNOWN_COMMAND = re.compile(r"500 Error: command \"(.*)\" not recognized")

# aiosmtpd 1.4's words, exactly, and relay's reply for each.
AIOSMTPD_REPLIES: Mapping[str, Reply] = MappingProxyType(
    {
        "250 OK": OK,
        "221 Bye": BYE,
        "220 Ready to start TLS": READY_FOR_TLS,
        "454 TLS not available": TLS_UNAVAILABLE,
        "530 Must issue a STARTTLS command first": TLS_FIRST,
        "554 Command refused due to lack of security": TLS_NOT_ESTABLISHED,
        "500 Command line too long": COMMAND_TOO_LONG,
        "500 Error: bad syntax": BAD_SYNTAX,
        "500 Error: strict ASCII mode": NOT_ASCII,
        "503 Error: send HELO first": NEED_HELO,
        "503 Error: send EHLO first": NEED_HELO,
        "503 Already authenticated": ALREADY_AUTHENTICATED,
        "501 Not enough value": AUTH_SYNTAX,
        "501 Too many values": AUTH_SYNTAX,
        "501 5.7.0 Auth aborted": AUTH_ABORTED,
        "501 5.5.2 Can't split auth value": BAD_AUTH_VALUE,
        "530 5.7.0 Authentication required": AUTH_REQUIRED,
        "500 Error: command 'AUTH' not recognized": unknown_command("AUTH"),
        "501 Syntax: HELO hostname": HELO_SYNTAX,
        "501 Syntax: EHLO hostname": EHLO_SYNTAX,
        "501 Syntax: MAIL FROM: <address>": MAIL_SYNTAX,
        "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": MAIL_SYNTAX,
        "501 Syntax: RCPT TO: <address>": RCPT_SYNTAX,
        "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": RCPT_SYNTAX,
        "501 Syntax: QUIT": QUIT_SYNTAX,
        "501 Syntax: RSET": RSET_SYNTAX,
        "501 Syntax: STARTTLS": STARTTLS_SYNTAX,
        "501 Syntax: VRFY <address>": VRFY_SYNTAX,
        "252 Cannot VRFY user, but will accept message and attempt delivery": VRFY_UNSURE,
        "553 5.1.3 Error: malformed address": MALFORMED_ADDRESS,
        "503 Error: nested MAIL command": NESTED_MAIL,
        "503 Error: need MAIL command": NEED_MAIL,
        "503 Error: need RCPT command": NEED_RCPT,
        "501 Error: BODY can only be one of 7BIT, 8BITMIME": BODY_SYNTAX,
        "501 Error: SMTPUTF8 takes no arguments": SMTPUTF8_SYNTAX,
        "555 MAIL FROM parameters not recognized or not implemented": MAIL_PARAMETERS,
        "555 RCPT TO parameters not recognized or not implemented": RCPT_PARAMETERS,
        "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
        "552 Error: Too much mail data": TOO_MUCH_DATA,
        "502 EXPN not implemented": EXPN_UNSUPPORTED,
        "500 Error: Cannot describe error": LOCAL_ERROR,
    }
)
# Each as it goes on the wire, worked out once: three of them answer every mail.
_LINES = {said: reply.line for said, reply in AIOSMTPD_REPLIES.items()}
# Replies aiosmtpd builds around a value: (its prefix, relay's code and enhanced code).
_PREFIXED = (
    ("250 Syntax: ", 250, "2.0.0"),
    ("250 Supported commands: ", 250, "2.0.0"),
    ("501 Supported commands: ", 501, "5.5.1"),
    ("502 Could not VRFY ", 502, "5.1.3"),
)


def reworded(line: str) -> str:
    """A reply line as relay words it: unchanged when it has an enhanced code or needs none."""
    if line[3:4] == "-" or _ENHANCED.match(line) or line[:3] in ("220", "235", "334", "354"):
        # Continuation lines are EHLO's (and relay's own); 220/334/354 take no enhanced code.
        return _exact(line)
    known = _LINES.get(line)
    if known is not None:
        return known
    unknown = _UNKNOWN_COMMAND.fullmatch(line)
    if unknown is not None:
        return unknown_command(unknown[1]).line
    if line.startswith("500 Error: ("):
        # aiosmtpd's handle_exception: an exception's name and text are relay's to log, not
        # the app's to read; the app hears a plain local error and tries again.
        return LOCAL_ERROR.line
    for prefix, code, enhanced in _PREFIXED:
        if line.startswith(prefix):
            return Reply(code, enhanced, line[4:]).line
    return line


def _exact(line: str) -> str:
    """Lines that carry an enhanced code but aiosmtpd's 'Error:' wording."""
    return _LINES.get(line, line)
