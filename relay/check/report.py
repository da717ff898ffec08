"""What `relay check` finds: the stages' plumbing and results, the report, certificate facts."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.check.certificate import iso_time
from relay.config.model import ProviderConfig, RelayConfig
from relay.model import Secret, User
from relay.tls import TlsContexts

REPORT_VERSION = 1
# Stage names in the order they run; docs/check-report.schema.json lists the same.
STAGES = (
    "config",
    "oauth2",
    "graph",  # a Graph provider's token, permission and mailbox, in place of DNS to AUTH
    "dns",
    "tcp",
    "tls",
    "ehlo",
    "auth",
    "imap-login",
    "sent-folder",
    "send",
    "sent-copy",
)


class Status(enum.Enum):
    """How one stage ended."""

    PASS = "pass"  # noqa: S105  (a stage's status, not a password)
    FAIL = "fail"
    SKIP = "skip"  # not needed for this user, or not run because an earlier stage failed


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What every stage after config needs: the user, their provider and opened secret."""

    config: RelayConfig
    user: User
    provider: ProviderConfig
    secret: Secret = field(repr=False)
    tls: TlsContexts
    bearer: bool = False  # secret is an OAuth2 access token

    @property
    def preset(self) -> str | None:
        """The provider's preset name; None for an explicit provider."""
        return self.provider.preset

    @property
    def where(self) -> str:
        """The SMTP server as host:port."""
        return f"{self.provider.smtp.host}:{self.provider.smtp.port}"

    @property
    def connect_timeout(self) -> float:
        """Seconds to connect and finish the TLS handshake (upstream.connect_timeout)."""
        return self.config.upstream.connect_timeout

    @property
    def timeout(self) -> float:
        """Seconds to wait for each reply (upstream.timeout)."""
        return self.config.upstream.timeout


@dataclass(frozen=True, slots=True)
class Found:
    """What a passing stage found."""

    summary: str
    facts: dict[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


class StageFailure(Exception):
    """A stage failed: what happened, the server's own words, and a fix if no hint matches."""

    def __init__(
        self,
        summary: str,
        reply: str | None,
        *,
        fix: str,
        facts: dict[str, object] | None = None,
        hints: bool = True,  # False: the hints table's advice (about passwords) does not apply
    ) -> None:
        super().__init__(summary)
        self.summary = summary
        self.reply = reply
        self.fix = fix
        self.facts = facts or {}
        self.hints = hints


class StageSkipped(Exception):
    """The stage does not apply to this user; the message says why."""


@dataclass(frozen=True, slots=True)
class StageResult:
    """One stage: pass, fail or skip, how long it took, and what it found."""

    name: str
    status: Status
    seconds: float
    summary: str
    reply: str | None = None  # the server's own words (or the error) on failure
    fix: str | None = None  # one line: what to do about the failure
    source: str | None = None  # where the fix comes from, when it is from the hints table
    warnings: tuple[str, ...] = ()
    facts: Mapping[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The stage as the JSON report shows it."""
        return {
            "name": self.name,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
            "reply": self.reply,
            "fix": self.fix,
            "source": self.source,
            "warnings": list(self.warnings),
            "facts": dict(self.facts),
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every stage of one user's check."""

    login: str
    provider: str
    preset: str | None
    started_at: float
    seconds: float
    stages: tuple[StageResult, ...]
    user_enabled: bool = False  # the check passed and enabled a user waiting for it

    @property
    def passed(self) -> bool:
        """True when no stage failed."""
        return self.failed is None

    @property
    def failed(self) -> StageResult | None:
        """The stage that failed (the check stops there), or None."""
        return next((s for s in self.stages if s.status is Status.FAIL), None)

    def summary(self) -> str:
        """One line for `relay user show`: the failing stage's reply, or that all passed."""
        failed = self.failed
        if failed is not None:
            return failed.reply or failed.summary
        warnings = sum(len(s.warnings) for s in self.stages)
        return f"every stage passed, {warnings} warnings" if warnings else "every stage passed"

    def as_json(self) -> dict[str, object]:
        """The report as documented in docs/check-report.schema.json."""
        failed = self.failed
        return {
            "version": REPORT_VERSION,
            "login": self.login,
            "provider": self.provider,
            "preset": self.preset,
            "checked_at": iso_time(self.started_at),
            "seconds": round(self.seconds, 3),
            "passed": failed is None,
            "failed_stage": None if failed is None else failed.name,
            "user_enabled": self.user_enabled,
            "stages": [stage.as_json() for stage in self.stages],
        }
