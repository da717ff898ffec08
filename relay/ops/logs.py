"""The daemon's log output: text or JSON lines, journald priorities, and secrets redacted."""

from __future__ import annotations

import ast
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import traceback
import unicodedata
import warnings
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from relay.config.model import LOG_FORMATS
from relay.model import Secret

REDACTED = "***"
HANDLER_NAME = "relay"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s %(message)s"
# sd-daemon(3): SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

_SASL = r"PLAIN|LOGIN|XOAUTH2?|OAUTHBEARER|CRAM-MD5|DIGEST-MD5|SCRAM-[A-Z0-9-]+|NTLM|GSSAPI"
# RFC 4954 §4: "AUTH mechanism initial-response"; the response is base64 or "=".
_AUTH_ARGUMENT = re.compile(rf"(?i)\b(AUTH\s+(?:{_SASL})\s+)[A-Za-z0-9+/=._~-]+")
_BEARER = re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9+/=._~-]+")
_SENSITIVE_WORDS = ("password", "passwd", "secret", "token", "credential")
_SENSITIVE_KEY = rf"[\w.-]*(?:{'|'.join(_SENSITIVE_WORDS)})[\w.-]*"
_QUOTED = r"""[bB]?'(?:[^'\\\n]|\\.)*'|[bB]?"(?:[^"\\\n]|\\.)*\""""
_SENSITIVE_FIELD = re.compile(rf"(?i)\b({_SENSITIVE_KEY}=)(?:Secret\('\*\*\*'\)|{_QUOTED}|\S+)")
_SENSITIVE_ITEM = re.compile(rf"""(?i)((['"]){_SENSITIVE_KEY}\2\s*:\s*)(?:{_QUOTED}|[^\s,}}]+)""")
# An AUTH continuation line (RFC 4954 §4) in a protocol trace: b'<base64>\r\n', or a lone line.
_BYTES_LINE = re.compile(r"""\bb(['"])([A-Za-z0-9+/]+={0,2})(\\r\\n|\\n)?\1""")
_LONE_LINE = re.compile(r"""(?m)^([ \t]*(['"]?))([A-Za-z0-9+/]+={0,2})(\2[ \t]*)$""")
_HAS_INNER_BLANK = re.compile(r"[ \t]")  # a one-line text with a blank inside is no lone line

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][\w.-]*)=")
_LITERAL = re.compile(rf"(?:{_QUOTED})(?=\s|$)")


PREFIX = 8  # bytes of each secret the first scan of a record looks for
LEAD = 24  # bytes at the start of each secret whose windows the sampling pass knows


class RedactingFilter(logging.Filter):
    """Removes AUTH arguments, password-like fields and registered secrets from log records.

    Registered secrets are kept only as keyed BLAKE2b digests under a key made for this process,
    never as text: the filter lives as long as the process and hangs off the root logger, where
    any debugging aid can reach it, so it must not become a second store of every secret opened.
    A record is first sampled: Python's own hash (SipHash, keyed per process) of one window
    every `stride` bytes, looked up among the hashes of every window in each secret's first
    LEAD bytes. A secret anywhere in the text covers at least `stride` consecutive window
    starts, so one sample falls inside it. Only a record with a sampled hit is scanned at every
    byte for the secrets' prefixes, and only where a prefix matches are the keyed digests
    computed. A 250-byte line without a secret costs some 3 µs where secrets are 16 bytes or
    longer (issue 19), rather than the 90 µs of a hash at every byte.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=16)
        self._digests: frozenset[bytes] = frozenset()
        self._lengths: tuple[int, ...] = ()
        # hash() of each form's first bytes, and of every window in its LEAD, at each width up
        # to PREFIX: a shorter secret registered later narrows the window, and the digests
        # cannot give the old forms back.
        self._prefixes_by_width: dict[int, frozenset[int]] = {}
        self._windows_by_width: dict[int, frozenset[int]] = {}
        self._scan: _Scan | None = None  # replaced whole, so a record never sees half of one
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedactingFilter(registered={len(self._digests)})"

    def register(self, secret: str | Secret) -> None:
        """Redact this exact text, also as it appears in reprs and JSON, from now on."""
        text = secret.reveal() if isinstance(secret, Secret) else secret
        if not text:
            return
        if self._digest(text.encode("utf-8", "surrogatepass")) in self._digests:
            return  # opened again (every mail opens its user's secret): known in all its forms
        forms = {text, repr(text)[1:-1], json.dumps(text)[1:-1]}
        encoded = {form.encode("utf-8", "surrogatepass") for form in forms if form}
        encoded.add(repr(text.encode("utf-8", "surrogatepass"))[2:-1].encode())
        with self._lock:
            self._digests |= {self._digest(form) for form in encoded if form}
            self._lengths = tuple(sorted({*self._lengths, *(len(f) for f in encoded if f)}))
            for form in encoded:
                lead = form[:LEAD]
                for width in range(1, min(PREFIX, len(form)) + 1):
                    prefixes = self._prefixes_by_width.get(width, frozenset())
                    self._prefixes_by_width[width] = prefixes | {hash(form[:width])}
                    windows = self._windows_by_width.get(width, frozenset())
                    self._windows_by_width[width] = windows | {
                        hash(lead[i : i + width]) for i in range(len(lead) - width + 1)
                    }
            width = min(PREFIX, self._lengths[0])
            self._scan = _Scan(
                digests=self._digests,
                lengths=self._lengths,
                width=width,
                prefixes=self._prefixes_by_width[width],
                windows=self._windows_by_width[width],
                # The shortest lead holds this many window starts: no secret fits between two.
                stride=min(LEAD, self._lengths[0]) - width + 1,
            )

    def redact(self, text: str) -> str:
        """The text with every secret in it replaced by ***."""
        # Each pattern runs only on text holding what it starts with: case-insensitive
        # patterns cost some 10 µs a line each, a substring test a fraction of one (issue 19).
        folded = text.casefold().replace("\u0131", "i")  # IGNORECASE also matches dotless i
        if "auth" in folded:
            text = _AUTH_ARGUMENT.sub(rf"\1{REDACTED}", text)
        if "bearer" in folded:
            text = _BEARER.sub(rf"\1{REDACTED}", text)
        if any(word in folded for word in _SENSITIVE_WORDS):
            text = _SENSITIVE_FIELD.sub(rf"\1{REDACTED}", text)
            text = _SENSITIVE_ITEM.sub(rf"\1'{REDACTED}'", text)
        if "b'" in text or 'b"' in text:
            text = _BYTES_LINE.sub(_redact_bytes_line, text)
        if "\n" in text or not _HAS_INNER_BLANK.search(text.strip(" \t")):
            text = _LONE_LINE.sub(_redact_lone_line, text)
        return self._redact_registered(text)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message, traceback and stack in place; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not take the logging caller down
            message = f"{record.msg} (log arguments did not fit the format)"
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info))
            # The exception objects still hold the secret; only the redacted text may go on.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text.rstrip("\n"))
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def _digest(self, data: bytes | memoryview) -> bytes:
        keyed = self._hash.copy()
        keyed.update(data)
        return keyed.digest()

    def _redact_registered(self, text: str) -> str:
        scan = self._scan
        if scan is None:
            return text
        data = text.encode("utf-8", "surrogatepass")
        width, windows = scan.width, scan.windows
        sampled = range(0, len(data) - width + 1, scan.stride)
        if not any(hash(data[start : start + width]) in windows for start in sampled):
            return text
        view = memoryview(data)
        spans = [
            (start, start + length)
            for start in range(len(data) - width + 1)
            if hash(data[start : start + width]) in scan.prefixes
            for length in scan.lengths
            if start + length <= len(data)
            and self._digest(view[start : start + length]) in scan.digests
        ]
        if not spans:
            return text
        # A whole UTF-8 sequence always starts and ends on a character boundary, so cutting
        # the bytes at a match never splits a character.
        pieces, end = [], 0
        for start, stop in sorted(spans):
            if start >= end:
                pieces += [data[end:start], REDACTED.encode()]
            end = max(end, stop)
        pieces.append(data[end:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class _Scan:
    """What a record is searched for: the registered secrets as hashes and digests."""

    digests: frozenset[bytes]
    lengths: tuple[int, ...]
    width: int  # bytes of each window hashed
    prefixes: frozenset[int]
    windows: frozenset[int]
    stride: int  # bytes between the windows the first pass samples


class TextFormatter(logging.Formatter):
    """`time LEVEL logger event key=value` lines; under journald `<N>` prefixes, no time."""

    def __init__(self, journald: bool) -> None:
        super().__init__(JOURNAL_FORMAT if journald else TEXT_FORMAT)
        self.journald = journald
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatTime(  # noqa: N802  (logging's name)
        self, record: logging.LogRecord, datefmt: str | None = None
    ) -> str:
        # logging's own: localtime() and strftime() for every line, a tenth of a line's cost.
        # The text of a second is kept, and only the milliseconds are added per line.
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        kept, text = self._second
        if kept != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        # One event, one line: a provider's reply or an app's header must not be able to forge
        # a log line, on a terminal (ESC sequences) or in a viewer that breaks at U+2028.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # A traceback keeps its line breaks, and nothing else that could steer a terminal.
        text = escape_controls(super().format(record), keep="\n")
        if not self.journald:
            return text
        # journald stores each line as its own entry: every traceback line needs its priority.
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and the parsed fields."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            "message": message,
            "fields": parse_fields(rest),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(document, default=str)
        # journald strips the prefix, so the stored message stays pure JSON.
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journald else line


def configure_logging(
    level: str,
    fmt: str,
    environ: Mapping[str, str],
    *,
    stream: TextIO | None = None,
    redactor: RedactingFilter | None = None,
) -> RedactingFilter:
    """Log to stderr (or stream) at level in fmt; return the filter to register secrets with.

    Calling it again (on reload) replaces the handler it installed before; pass the returned
    filter back in to keep the secrets registered so far.
    """
    output = sys.stderr if stream is None else stream
    redactor = RedactingFilter() if redactor is None else redactor
    handler = logging.StreamHandler(output)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(make_formatter(fmt, under_journald(environ, output)))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiosmtpd logs every connection, command and (at debug) DATA line; relay logs its own.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # aiosmtpd warns whenever AUTH is offered without TLS. relay allows that only on loopback
    # listeners, and config validation refuses a non-loopback listener without a certificate.
    warnings.filterwarnings(
        "ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning
    )
    return redactor


def escape_controls(text: str, keep: str = "") -> str:
    """The text with every control, format and line or paragraph separator shown as an escape."""
    if (text.replace(keep, "") if keep else text).isprintable():
        return text  # the common case: nothing to escape, no copy
    return "".join(c if c in keep else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    # Unicode categories Cc (C0, DEL, C1 incl. U+0085), Cf (bidi overrides, zero widths),
    # Cs (lone surrogates), Zl (U+2028) and Zp (U+2029); spaces of any kind stay.
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def make_formatter(fmt: str, journald: bool) -> logging.Formatter:
    """The formatter for a log format named in the config."""
    if fmt == "text":
        return TextFormatter(journald)
    if fmt == "json":
        return JsonFormatter(journald)
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")


def under_journald(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when stream is the journal stream systemd named in $JOURNAL_STREAM."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        # systemd.exec(5): children inherit the variable, so compare it with the actual fd.
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def syslog_priority(levelno: int) -> int:
    """The syslog priority (sd-daemon(3) SD_*) for a logging level."""
    return next((priority for floor, priority in _PRIORITIES if levelno >= floor), 7)


def parse_fields(text: str) -> dict[str, str]:
    """The key=value fields in a log message; values may be %r-quoted or run to the next key."""
    fields: dict[str, str] = {}
    position = 0
    while (key := _KEY.search(text, position)) is not None:
        literal = _LITERAL.match(text, key.end())
        if literal is not None:
            fields[key.group(1)] = _unquoted(literal.group())
            position = literal.end()
            continue
        following = _KEY.search(text, key.end())
        position = len(text) if following is None else following.start()
        fields[key.group(1)] = text[key.end() : position].strip()
    return fields


def _unquoted(literal: str) -> str:
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return literal
    return value if isinstance(value, str) else literal


def _looks_like_base64(token: str) -> bool:
    # QUIT, DATA or Done are valid base64 too; encoded credentials are practically never a
    # plain word, and carry mixed case, digits, padding, '+' or '/'.
    if len(token) < 4 or len(token) % 4:
        return False
    if token.isalpha() and (token.isupper() or token.islower() or token.istitle()):
        return False
    try:
        b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _redact_bytes_line(match: re.Match[str]) -> str:
    if not _looks_like_base64(match.group(2)):
        return match.group()
    quote = match.group(1)
    return f"b{quote}{REDACTED}{match.group(3) or ''}{quote}"


def _redact_lone_line(match: re.Match[str]) -> str:
    if not _looks_like_base64(match.group(3)):
        return match.group()
    return f"{match.group(1)}{REDACTED}{match.group(4)}"
