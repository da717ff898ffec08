"""Provider replies and connection errors, each mapped to a one-line fix with its source.

The table is data: `relay check` shows a hint next to the server's words, and delivery appends
it to the reply the app hears and to the log line. Sources are PROVIDERS.md §4 (its reference
numbers in brackets) or the RFC that defines the reply; `example` is the reply as the server
sends it, which the tests replay at `step`.
"""

from __future__ import annotations

from relay.providers.hintrule import Hint, HintRule
from relay.providers.hintsgeneric import GENERIC_RULES
from relay.providers.hintsproviders import PROVIDER_RULES
from relay.providers.presets import PRESETS

# Provider rules come first: a generic rule (a bare 535, say) matches their replies too.
RULES: tuple[HintRule, ...] = PROVIDER_RULES + GENERIC_RULES


def find_rule(provider_preset: str | None, reply_or_error_text: str) -> HintRule | None:
    """The first rule for this provider (None: an explicit one) that the text matches."""
    for rule in RULES:
        if rule.applies_to(provider_preset) and rule.matches(reply_or_error_text):
            return rule
    return None


def hint_for(provider_preset: str | None, reply_or_error_text: str) -> Hint | None:
    """The hint for a reply or error from a provider of this preset, if one is known."""
    rule = find_rule(provider_preset, reply_or_error_text)
    return None if rule is None else rule.hint


def preset_for_host(host: str) -> str | None:
    """The preset whose SMTP or IMAP server this host is, for code that knows only the host."""
    host = host.lower().rstrip(".")
    for preset in PRESETS.values():
        if host in (preset.smtp.host, preset.imap.host if preset.imap else None):
            return preset.name
    return None
