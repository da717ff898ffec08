"""aiosmtpd's log of every command line, costing a level check while that log is off."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiosmtpd.smtp

# aiosmtpd's command loop calls the module's sanitized_log(log.debug, ...) and
# sanitized_log(log.info, ...) for every line a client sends; it runs its AUTH regex over the
# line before the logger drops it (relay keeps mail.log at ERROR): 2% of relay's CPU a mail.
AIOSMTPD_COMMAND_LOG = "sanitized_log"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def quiet_command_log() -> None:
    """Make aiosmtpd skip its command-line log, regex and all, while the logger would drop it."""
    current = getattr(aiosmtpd.smtp, AIOSMTPD_COMMAND_LOG, None)
    # Without it (a later aiosmtpd) there is nothing to quiet; the contract test says so.
    if current is not None and not isinstance(current, _LoggedWhenEnabled):
        setattr(aiosmtpd.smtp, AIOSMTPD_COMMAND_LOG, _LoggedWhenEnabled(current))


class _LoggedWhenEnabled:
    """aiosmtpd's sanitized_log, called only when its logger is enabled for the call's level."""

    __slots__ = ("original",)

    def __init__(self, original: Callable[..., None]) -> None:
        self.original = original

    def __call__(self, func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
        logger = getattr(func, "__self__", None)
        level = _LEVELS.get(getattr(func, "__name__", ""))
        if isinstance(logger, logging.Logger) and level is not None:
            if not logger.isEnabledFor(level):
                return
        self.original(func, msg, *args, **kwargs)
