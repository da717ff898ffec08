"""The listener's wire details: which replies and arguments are safe, and plain addresses."""

from __future__ import annotations

import re

# RFC 5321 §4.1.2: no address or parameter form allows a control character (CR, LF, NUL, ...).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5321 §4.2: reply text is HT and printable ASCII.
_NOT_REPLY_TEXT = re.compile(r"[^\t\x20-\x7e]")
# RFC 5322 §3.4.1: <local@domain>, both dot-atoms, then nothing or spaces and parameters: what
# nearly every app sends. Anything else (quoting, comments, literals, <>) goes to aiosmtpd.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"<(?P<address>{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>(?:[ \t]+(?P<rest>[^ \t(].*))?",
    re.DOTALL,
)


def has_control(arg: str) -> bool:
    """Whether a command argument holds a control character."""
    return _CONTROL.search(arg) is not None


def reply_text(text: str) -> str:
    """Reply text with anything but HT and printable ASCII replaced by '?'."""
    if text.isascii() and text.isprintable():
        return text  # every reply relay words itself: two C passes instead of a regex
    return _NOT_REPLY_TEXT.sub("?", text)


def plain_address(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a plain `<local@domain> PARAMS` argument, else None."""
    plain = _PLAIN_ADDRESS.fullmatch(arg)
    return None if plain is None else (plain["address"], plain["rest"] or "")
