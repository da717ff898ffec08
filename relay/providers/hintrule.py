"""A hint, and the rule that recognises the reply or error it is for."""

from __future__ import annotations

import re
from dataclasses import dataclass

_REPLY_CODE = re.compile(r"(?:^|[\s:;(])([2-5]\d\d)(?=[\s-]|$)")


@dataclass(frozen=True, slots=True)
class Hint:
    """What to do about a failure, and where that advice comes from."""

    text: str
    source: str


@dataclass(frozen=True, slots=True)
class HintRule:
    """One known reply or error: how to recognise it, and its hint."""

    key: str
    hint: Hint
    # The reply or error as it reaches relay; the tests replay it at `step`.
    example: str
    # Where it is seen: dns, tcp, tls, greeting, auth, mail, rcpt, data, imap-login, append.
    step: str
    # Presets whose servers send it; () for any server.
    providers: tuple[str, ...] = ()
    code: int | None = None
    enhanced: str | None = None
    pattern: str | None = None
    # The words are also what other servers send for other reasons, so the rule applies only
    # when the user's provider is known to be one of `providers`.
    provider_only: bool = False

    def matches(self, text: str) -> bool:
        """True when text carries this rule's reply code, enhanced code and words."""
        if self.code is not None and str(self.code) not in _REPLY_CODE.findall(text):
            return False
        if self.enhanced is not None and not re.search(
            rf"(?<![\d.]){re.escape(self.enhanced)}(?![\d.]*\d)", text
        ):
            return False
        return self.pattern is None or re.search(self.pattern, text, re.IGNORECASE) is not None

    def applies_to(self, preset: str | None) -> bool:
        """Whether the rule may be used for a user of this preset (None: explicit provider)."""
        if not self.providers:
            return True
        if preset is None:
            return not self.provider_only
        return preset in self.providers


def rule(
    key: str,
    text: str,
    source: str,
    example: str,
    step: str,
    *,
    providers: tuple[str, ...] = (),
    code: int | None = None,
    enhanced: str | None = None,
    pattern: str | None = None,
    provider_only: bool = False,
) -> HintRule:
    hint = Hint(text, source)
    return HintRule(key, hint, example, step, providers, code, enhanced, pattern, provider_only)
