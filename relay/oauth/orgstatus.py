"""Organisation credentials that stopped working: remembered, told once, shown in relay status.

A credential the token endpoint refused is not asked again for every queued mail: the refusal
is held for HOLD_SECONDS (on the injected clock), or until one of its files changes, which is
what an admin does to fix it (a new secret, certificate or key file). The daemon writes the
failing providers and their fixes to the state directory for `relay status`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.config.model import OAuthSettings
from relay.errors import TemporaryFailure

logger = logging.getLogger(__name__)

HOLD_SECONDS = 60.0
FAILING_FILE = "organisation.json"

FileStamp = tuple[int, int] | None  # (mtime_ns, size); None: the file is not there


@dataclass(frozen=True, slots=True)
class _Held:
    failure: TemporaryFailure
    until: float
    stamps: tuple[FileStamp, ...]


def credential_files(settings: OAuthSettings) -> tuple[Path, ...]:
    """The files a credential is read from at each token request."""
    names = (
        settings.client_secret_file,
        settings.service_account_file,
        settings.client_certificate_file,
        settings.client_key_file,
    )
    return tuple(path for path in names if path is not None)


def _stamps(settings: OAuthSettings) -> tuple[FileStamp, ...]:
    stamps: list[FileStamp] = []
    for path in credential_files(settings):
        try:
            found = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((found.st_mtime_ns, found.st_size))
    return tuple(stamps)


class HeldFailures:
    """Refusals of organisation credentials, held so that queued mail does not ask again."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._held: dict[tuple[str, ...], _Held] = {}

    def held(self, key: tuple[str, ...], settings: OAuthSettings) -> TemporaryFailure | None:
        """The refusal still in force for key; None when it is time (or a reason) to ask."""
        found = self._held.get(key)
        if found is None:
            return None
        if self._clock() < found.until and _stamps(settings) == found.stamps:
            return found.failure
        del self._held[key]
        return None

    def hold(
        self, key: tuple[str, ...], settings: OAuthSettings, failure: TemporaryFailure
    ) -> None:
        """Answer key with failure until HOLD_SECONDS pass or a credential file changes."""
        self._held[key] = _Held(failure, self._clock() + HOLD_SECONDS, _stamps(settings))

    def release(self, key: tuple[str, ...]) -> None:
        """The credential worked: nothing held for key."""
        self._held.pop(key, None)


def write_failing(state_dir: Path, failing: dict[str, str]) -> None:
    """Publish the failing providers and their fixes (0600), for this daemon's pid."""
    document = json.dumps({"pid": os.getpid(), "failing": failing}).encode()
    temporary = state_dir / (FAILING_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(document)
    os.replace(temporary, state_dir / FAILING_FILE)


def publisher(state_dir: Path) -> Callable[[dict[str, str]], None]:
    """write_failing for state_dir, logging (not raising) when the file cannot be written."""

    def publish(failing: dict[str, str]) -> None:
        try:
            write_failing(state_dir, failing)
        except OSError as error:
            logger.debug("oauth.organisation_status_unwritable error=%s", error)

    return publish


def read_failing(state_dir: Path, pid: int) -> dict[str, str]:
    """The failing providers the daemon with this pid published; {} if none or another's."""
    try:
        document = json.loads((state_dir / FAILING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("pid") != pid:
        return {}
    failing = document.get("failing")
    if not isinstance(failing, dict):
        return {}
    return {str(provider): str(fix) for provider, fix in failing.items()}


def failing_lines(state_dir: Path, pid: int) -> list[str]:
    """relay status's lines for organisation credentials that get no token now."""
    failing = read_failing(state_dir, pid)
    if not failing:
        return []
    lines = ["", "ORGANISATION CREDENTIAL FAILING (mail of its users waits in the queue)"]
    lines += [f"{provider}: {fix}" for provider, fix in sorted(failing.items())]
    return lines
