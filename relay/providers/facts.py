"""What each provider's SMTP server said of itself in its EHLO: SMTPUTF8, DSN, SIZE.

The upstream pool writes these facts whenever it opens a session, and the listener reads them
(through the daemon's Services) to offer SMTPUTF8 and announce a size limit before the app sends
anything. Kept per endpoint: two providers on the same server share what it said.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from relay.providers.presets import Endpoint


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """One server's extensions as its last EHLO showed them."""

    smtputf8: bool
    dsn: bool
    size: int | None  # RFC 1870: SIZE's value; None when not announced or 0 (no fixed limit)
    learned_at: float


def facts_from_ehlo(extensions: Mapping[str, str], now: float) -> ServerFacts:
    """ServerFacts from an EHLO's extensions (keywords in lower case, as aiosmtplib keeps them)."""
    size_text = extensions.get("size", "").strip()
    size = int(size_text) if size_text.isdigit() and int(size_text) > 0 else None
    return ServerFacts("smtputf8" in extensions, "dsn" in extensions, size, now)


class ProviderFacts:
    """The facts learned so far, per SMTP endpoint, in memory for the daemon's life."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[Endpoint, ServerFacts] = {}

    def learn(self, endpoint: Endpoint, extensions: Mapping[str, str]) -> ServerFacts:
        """Remember what endpoint's EHLO announced; the facts."""
        facts = facts_from_ehlo(extensions, time.time())
        self._known[endpoint] = facts
        return facts

    def get(self, endpoint: Endpoint) -> ServerFacts | None:
        """What endpoint announced the last time relay connected; None before that."""
        return self._known.get(endpoint)
