"""What IMAP puts on the wire and imaplib hands back: names, replies, and what failures mean."""

from __future__ import annotations

import ast
import base64
import imaplib
import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from relay.errors import SentCopyRetry

# RFC 5530 §3 codes after which the same command may well work later ([THROTTLED]: Yahoo, MS).
RETRY_CODES = frozenset(
    {"UNAVAILABLE", "INUSE", "OVERQUOTA", "LIMIT", "SERVERBUG", "EXPUNGEISSUED", "THROTTLED"}
)
# RFC 7889 §4: the message is over the server's APPENDLIMIT, and it will not get smaller.
NEVER_CODES = frozenset({"TOOBIG"})
MISSING_CODES = frozenset({"TRYCREATE", "NONEXISTENT"})
# Steps at which a NO without a known code still means the account or its settings are wrong.
_ACCOUNT_STEPS = frozenset({"login", "starttls", "create"})
_CODE = re.compile(r"\s*\[([A-Za-z][A-Za-z0-9.-]*)")
_COMMAND_ERROR = re.compile(r"\w+ command error: (BAD|NO) \[(b'.*'|b\".*\")\]", re.DOTALL)
_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<rest>.*)', re.DOTALL)
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_PERSONAL_PREFIX = re.compile(rb'\s*\(\("((?:[^"\\]|\\.)*)"')
_NON_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]+")
_MUTF7_RUN = re.compile(r"&([^-]*)-")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox as LIST shows it."""

    name: str  # for people: decoded from modified UTF-7
    wire: str  # as the server spells it, to send back unchanged
    flags: frozenset[str]  # lower-cased, such as "\\sent"

    @property
    def selectable(self) -> bool:
        """False for a name that only holds other mailboxes or does not exist."""
        return not self.flags & {"\\noselect", "\\nonexistent"}


def encode_mailbox(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 §5.1.3)."""

    def encode_run(match: re.Match[str]) -> str:
        packed = base64.b64encode(match[0].encode("utf-16-be")).decode("ascii")
        return "&" + packed.rstrip("=").replace("/", ",") + "-"

    return _NON_PRINTABLE_ASCII.sub(encode_run, name.replace("&", "&-"))


def decode_mailbox(wire: str) -> str:
    """The Unicode name behind a modified UTF-7 name; ValueError if it is not valid."""

    def decode_run(match: re.Match[str]) -> str:
        run = match[1]
        if not run:
            return "&"
        if not re.fullmatch(r"[A-Za-z0-9+,]+", run):
            raise ValueError(f"not modified base64: {run!r}")
        padded = run.replace(",", "/") + "=" * (-len(run) % 4)
        return base64.b64decode(padded, validate=True).decode("utf-16-be")

    if _NON_PRINTABLE_ASCII.search(wire) or "&" in _MUTF7_RUN.sub("", wire):
        raise ValueError(f"not a modified UTF-7 mailbox name: {wire!r}")
    return _MUTF7_RUN.sub(decode_run, wire)


def decoded_or_wire(wire: str) -> str:
    """The Unicode name of a wire name, or the wire name itself when it is not modified UTF-7."""
    try:
        return decode_mailbox(wire)
    except ValueError:
        return wire


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 §4.3); ValueError for what one cannot carry."""
    if not text.isascii() or re.search(r"[\x00\r\n]", text):
        raise ValueError(f"cannot send {text!r} as an IMAP quoted string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_list(data: list[Any]) -> list[Mailbox]:
    """The mailboxes in imaplib's untagged LIST data; names sent as literals come as tuples."""
    mailboxes = []
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        # Skips None and what follows a literal on its line (empty, or " (extended data)").
        match = _LIST_LINE.match(line) if isinstance(line, bytes) else None
        if match is None:
            continue
        wire_bytes = item[1] if isinstance(item, tuple) else _first_string(match["rest"])
        try:
            wire = wire_bytes.decode("ascii")
        except UnicodeDecodeError:
            continue  # a raw 8-bit name cannot be sent back through imaplib, which speaks ASCII
        flags = match["flags"].decode("ascii", "replace").lower().split()
        mailboxes.append(Mailbox(decoded_or_wire(wire), wire, frozenset(flags)))
    return mailboxes


def _first_string(rest: bytes) -> bytes:
    """The first astring of rest: quoted (unescaped) or an atom."""
    match = _QUOTED.match(rest)
    if match is not None:
        return re.sub(rb"\\(.)", rb"\1", match[1])
    return rest.split(b" ", 1)[0]


def personal_prefix(namespace: object) -> str:
    """The first personal namespace prefix (RFC 2342) in a NAMESPACE reply, such as "INBOX."."""
    match = _PERSONAL_PREFIX.match(namespace) if isinstance(namespace, bytes) else None
    return match[1].decode("ascii", "replace") if match else ""


def reply_text(data: object) -> str:
    """The text of the last line of a reply, as imaplib hands it over."""
    if isinstance(data, list):
        data = data[-1] if data else None
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return "" if data is None else str(data)


def response_code(reply: str) -> str | None:
    """The RFC 3501 §7.1 response code that opens a reply, such as TRYCREATE."""
    match = _CODE.match(reply)
    return match[1].upper() if match else None


def error_reply(error: imaplib.IMAP4.error) -> tuple[str, str]:
    """(NO or BAD, the server's words) from an imaplib error."""
    text = reply_text(list(error.args[:1]))
    match = _COMMAND_ERROR.fullmatch(text)
    if match is not None:
        # imaplib words a BAD as "X command error: BAD [b'server text']"; get the text back.
        with suppress(ValueError, SyntaxError):
            raw = ast.literal_eval(match[2])
            if isinstance(raw, bytes):
                return match[1], raw.decode("utf-8", "replace")
    return "NO", text


def retry_advice(step: str, status: str, code: str | None) -> SentCopyRetry:
    """What retrying can achieve after the server said NO or BAD at this step."""
    if code in RETRY_CODES:
        return SentCopyRetry.SOON
    if code in NEVER_CODES:
        return SentCopyRetry.NEVER
    if status == "BAD":
        # The same bytes will be refused again; only a message-specific refusal is final.
        return SentCopyRetry.NEVER if step == "append" else SentCopyRetry.AFTER_FIX
    if code is not None or step in _ACCOUNT_STEPS:
        return SentCopyRetry.AFTER_FIX
    return SentCopyRetry.SOON
