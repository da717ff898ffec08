"""What a Test ended with, kept in the browser's session until its page shows it once."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.check.report import CheckReport
from relay.model import Secret


@dataclass(frozen=True, slots=True)
class LocalLogin:
    """What the user pastes into their app, shown once."""

    host: str
    port: int
    starttls: bool
    login: str
    secret: Secret = field(repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A test's report, and the local login when it enrolled the user."""

    report: CheckReport
    issued: LocalLogin | None = None
