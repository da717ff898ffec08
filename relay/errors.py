"""The small hierarchy of relay's own errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class RelayError(Exception):
    """Root of every error relay raises on purpose."""


class ConfigError(RelayError):
    """One or more configuration keys are invalid."""

    def __init__(self, source: Path | str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.source}: {path}: {why}" for path, why in self.problems))


class StoreError(RelayError):
    """The state directory, database or key file is missing or unusable."""


class UnknownUser(StoreError):
    """No user with that login exists."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"no user named {login!r}")


class MasterKeyError(StoreError):
    """The master key is missing, malformed, or does not open a sealed secret."""


class PolicyRejection(RelayError):
    """A local policy refuses a command; carries the exact SMTP reply."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        self.code = code
        self.enhanced = enhanced
        self.text = text
        super().__init__(self.reply)

    @property
    def reply(self) -> str:
        """The SMTP reply line to send to the client."""
        return f"{self.code} {self.enhanced} {self.text}"


class UpstreamError(RelayError):
    """The provider did not take the message."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        self.code = code
        self.enhanced = enhanced
        self.text = text
        super().__init__(f"{code} {enhanced} {text}")

    @property
    def reply(self) -> str:
        """The SMTP reply line that relays this failure to the client."""
        return f"{self.code} {self.enhanced} {self.text}"


class TemporaryFailure(UpstreamError):
    """A 4xx-class failure: worth trying again later."""


class PermanentFailure(UpstreamError):
    """A 5xx-class failure: the provider refused for good."""


class UpstreamUnavailable(TemporaryFailure, ConnectionError):
    """The provider could not be reached or the connection broke."""


class UpstreamTimeout(TemporaryFailure, TimeoutError):
    """The provider did not answer in time."""


class UpstreamTlsError(TemporaryFailure):
    """The provider's TLS certificate was not trusted or not for its host name."""


def smtp_reply(error: RelayError) -> str:
    """The one place an error becomes an SMTP reply line."""
    if isinstance(error, PolicyRejection | UpstreamError):
        return error.reply
    if isinstance(error, MasterKeyError):
        return "451 4.3.0 local key problem: a stored upstream secret cannot be opened (see log)"
    return "451 4.3.0 local error: " + " ".join(str(error).split())
