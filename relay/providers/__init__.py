"""What relay knows about mail providers: presets, Sent behaviour, limits, and the reply hints."""

from relay.providers.hints import find_rule, hint_for, preset_for_host
from relay.providers.presets import (
    MX_SUFFIXES,
    PRESETS,
    STANDARD_PORTS,
    Endpoint,
    OAuthEndpoints,
    Preset,
    SentCopy,
    TlsMode,
    address_domain,
    email_fits,
    mailbox_key,
    mx_mismatch,
)

__all__ = [
    "Endpoint",
    "MX_SUFFIXES",
    "OAuthEndpoints",
    "PRESETS",
    "Preset",
    "STANDARD_PORTS",
    "SentCopy",
    "TlsMode",
    "address_domain",
    "email_fits",
    "find_rule",
    "hint_for",
    "mailbox_key",
    "mx_mismatch",
    "preset_for_host",
]
