"""The small hierarchy of relay's own errors."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

from relay.reply import KEY_PROBLEM, LOCAL_ERROR, Reply


class RelayError(Exception):
    """Root of every error relay raises on purpose."""


class ConfigError(RelayError):
    """One or more configuration keys are invalid."""

    def __init__(self, source: Path | str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.source}: {path}: {why}" for path, why in self.problems))


class LibraryMismatch(RelayError):
    """An installed library lacks an internal relay relies on (see the contract tests)."""


class StoreError(RelayError):
    """The state directory, database or key file is missing or unusable."""


class UnknownUser(StoreError):
    """No user with that login exists."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"no user named {login!r}")


class MasterKeyError(StoreError):
    """The master key is missing, malformed, or does not open a sealed secret."""


class WrongMasterKey(MasterKeyError):
    """A secret was sealed with another master key than the one loaded."""


class SealDoesNotOpen(MasterKeyError):
    """A sealed secret fails authentication: tampered, or sealed for another context."""


class SealedForAnotherAccount(SealDoesNotOpen):
    """A user's sealed secret does not open for the provider and upstream user their row names."""

    def __init__(
        self, login: str, secret_name: str, provider: str, upstream_user: str, fix: str
    ) -> None:
        self.login = login
        self.provider = provider
        self.upstream_user = upstream_user
        super().__init__(
            f"the stored {secret_name} of {login} does not open for provider {provider!r} and "
            f"upstream user {upstream_user!r}: the database row was changed outside relay, or "
            f"the secret is damaged, so relay sends it nowhere; if the change was meant, {fix}"
        )


class SpoolDamaged(StoreError):
    """The start-up check found the spool damaged; the message says what and what to do."""


class SocketInUse(RelayError, OSError):
    """Another process already serves the Unix socket a listener is configured with."""


class PolicyRejection(RelayError):
    """A local policy refuses a command; carries the exact SMTP reply."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        self.code = code
        self.enhanced = enhanced
        self.text = text
        super().__init__(self.reply.line)

    @property
    def reply(self) -> Reply:
        """The SMTP reply for the client."""
        return Reply(self.code, self.enhanced, self.text)


class UpstreamError(RelayError):
    """The provider did not take the message; hint says what would fix it, when that is known."""

    def __init__(self, code: int, enhanced: str, text: str, hint: str | None = None) -> None:
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.hint = hint
        super().__init__(self.reply.line)

    @property
    def reply(self) -> Reply:
        """The SMTP reply that relays this failure to the client, hint included."""
        return Reply(self.code, self.enhanced, self.text, self.hint)


class TemporaryFailure(UpstreamError):
    """A 4xx-class failure: worth trying again later."""


class PermanentFailure(UpstreamError):
    """A 5xx-class failure: the provider refused for good."""


class LoginRefused(UpstreamError):
    """The provider refused relay's login, with a password or an access token."""


class TemporaryLoginRefusal(LoginRefused, TemporaryFailure):
    """A 4xx answer to AUTH."""


class PermanentLoginRefusal(LoginRefused, PermanentFailure):
    """A 5xx answer to AUTH."""


class UpstreamUnavailable(TemporaryFailure, ConnectionError):
    """The provider could not be reached or the connection broke."""


class DeliveryInDoubt(TemporaryFailure, ConnectionError):
    """The whole mail went out but its reply never came: the provider may have accepted it."""


class QuotaExceeded(TemporaryFailure):
    """The provider's sending quota for the user is used up (Gmail 5.4.5): wait, do not bounce."""


class Throttled(TemporaryFailure):
    """The provider said how long to wait (HTTP 429/503 Retry-After): the mail waits that long."""

    def __init__(
        self, code: int, enhanced: str, text: str, retry_after: float, hint: str | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(code, enhanced, text, hint)


class UpstreamTimeout(TemporaryFailure, TimeoutError):
    """The provider did not answer in time."""


class UpstreamTlsError(TemporaryFailure):
    """The provider's TLS certificate was not trusted or not for its host name."""


class AuthorizationNeeded(TemporaryFailure):
    """The user's OAuth2 grant is missing, revoked or expired: a person must sign in again."""

    def __init__(self, login: str, reason: str) -> None:
        self.login = login
        self.reason = reason
        text = f"{login} must authorize relay at the provider again ({reason})"
        super().__init__(451, "4.7.0", text, f"run 'relay user authorize {login}'")


class OAuthError(RelayError):
    """The authorization server refused a request; error is its RFC 6749 §5.2 code."""

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}" if description else error)


class GrantRevoked(OAuthError):
    """invalid_grant: the refresh token or code is revoked, expired or was never valid."""


class TokenEndpointUnavailable(OAuthError):
    """The token endpoint could not be reached or kept answering 5xx."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__("temporarily_unavailable", f"{url}: {problem}")


class InvitationRefused(RelayError):
    """An enrollment link is unknown, used or expired; login is known for the last two."""

    def __init__(self, reason: str, login: str | None = None) -> None:
        self.reason = reason
        self.login = login
        super().__init__(f"enrollment link {reason}")


class NoticeUndeliverable(RelayError):
    """No mailbox can send a renewal notice as the notify section is set; says why."""


class WrongAccount(OAuthError):
    """The account that signed in at the provider is not the user's mailbox."""

    def __init__(self, signed_in: str | None, expected: str) -> None:
        self.signed_in = signed_in
        self.expected = expected
        who = signed_in or "an account the provider did not name"
        super().__init__("wrong_account", f"signed in as {who}, expected {expected}")


class SentCopyRetry(enum.Enum):
    """What trying a failed Sent copy again can achieve."""

    # Transient: connection, timeout, BYE, [UNAVAILABLE], [INUSE], [OVERQUOTA]. Retry with the
    # normal backoff.
    SOON = "soon"
    # Fails the same way until someone changes the account or relay's settings for it: a refused
    # login, TLS not trusted, no permission on the folder. Keep the job and retry at the slowest
    # pace, or when the user's settings change: quick retries of a bad password can lock the
    # account at the provider.
    AFTER_FIX = "after-fix"
    # This message can never be filed (the server calls it too big or malformed): drop the job.
    NEVER = "never"


class SentCopyError(RelayError):
    """Filing the copy in the Sent folder failed; carries the IMAP server's own reply."""

    def __init__(
        self, step: str, server: str, reply: str, retry: SentCopyRetry, code: str | None = None
    ) -> None:
        self.step = step
        self.server = server
        self.reply = reply
        self.retry = retry
        self.code = code
        super().__init__(f"Sent copy: {step} at {server} failed: {reply}")

    @property
    def temporary(self) -> bool:
        """True when the same attempt may well succeed later without anyone changing anything."""
        return self.retry is SentCopyRetry.SOON


def smtp_reply(error: RelayError) -> Reply:
    """The one place an error becomes an SMTP reply: a local one's detail stays in the log."""
    if isinstance(error, PolicyRejection | UpstreamError):
        return error.reply
    if isinstance(error, MasterKeyError):
        return KEY_PROBLEM
    return LOCAL_ERROR
