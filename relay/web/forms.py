"""What a person types into the pages' forms, read into values relay can use or refused."""

from __future__ import annotations

import re

from aiohttp import web

from relay.model import Secret
from relay.web.site import PageError, Site

MAX_PASSWORD_CHARS = 1024
MAX_ADDRESS_CHARS = 254  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its brackets
# One address, no display name or list: a local part of printable characters that cannot start a
# header or a second address, and a domain with a dot.
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def typed_password(text: str) -> Secret | None:
    """The typed password without the line break a paste may bring; None when empty."""
    text = text.strip()
    if not text:
        return None
    if len(text) > MAX_PASSWORD_CHARS or not text.isprintable():
        raise PageError(400, "error.input", why="a password is one line of printable text")
    return Secret(text)


def mail_address(text: str) -> str | None:
    """The one mail address typed, or None when it is not one."""
    text = text.strip()
    if len(text) > MAX_ADDRESS_CHARS or _ADDRESS.fullmatch(text) is None:
        return None
    return text


def count_password_post(site: Site, request: web.Request) -> None:
    """Count a post carrying a password from the client's address; PageError past the limit."""
    # request.remote is the peer: behind a proxy every user shares the proxy's address.
    address = request.remote or "-"
    wait = site.address_limit.wait(address)
    if wait > 0:
        raise PageError(429, "error.address_limited", minutes=f"{max(wait // 60, 1):.0f}")
    site.address_limit.posted(address)
