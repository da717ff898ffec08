"""What the listener offers an app: EHLO's extensions and the size limit, per provider.

SMTPUTF8 and the size limit are facts about the user's provider, which relay learns from the
provider's own EHLO (relay.providers.facts, written by the upstream pool). Before AUTH the user
is not known: EHLO then offers what any configured provider may take, and MAIL applies the
user's own provider (RFC 1870 §6.1 lets a server refuse a size per sender).
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.config.model import ProviderConfig, RelayConfig
from relay.policy import SizeLimit, message_size_limit
from relay.providers.facts import ProviderFacts

# relay itself implements these (it reads pipelined commands in order, every reply carries an
# enhanced code, and DSN requests are passed on or honoured by relay's own DSNs).
ALWAYS_OFFERED = ("PIPELINING", "ENHANCEDSTATUSCODES", "DSN")
_REPLACED = ("250-SIZE", "250-SMTPUTF8", "250 HELP", "250-HELP")


def size_limit(config: RelayConfig, facts: ProviderFacts, provider: ProviderConfig) -> SizeLimit:
    """The largest mail a user of provider may send now."""
    learned = facts.get(provider.smtp)
    limits = config.limits
    return message_size_limit(
        provider.name,
        learned.size if learned is not None else None,
        provider.max_message_bytes,
        limits.max_message_bytes,
        limits.max_data_in_memory,
    )


def offers_smtputf8(facts: ProviderFacts, provider: ProviderConfig) -> bool | None:
    """Whether provider's server offers SMTPUTF8; None until relay has seen its EHLO."""
    learned = facts.get(provider.smtp)
    return None if learned is None else learned.smtputf8


def ehlo_lines(
    responses: list[str],
    config: RelayConfig,
    facts: ProviderFacts,
    providers: Iterable[ProviderConfig],
) -> list[str]:
    """aiosmtpd's EHLO lines with relay's SIZE, SMTPUTF8 and the extensions relay honours."""
    chosen = list(providers)
    limits = [size_limit(config, facts, p).octets for p in chosen]
    # Offered unless every provider is known to lack it: an unknown one is tried (and a
    # refusal names the provider, 553 5.6.7).
    utf8 = any(offers_smtputf8(facts, p) is not False for p in chosen)
    kept = [line for line in responses if not line.startswith(_REPLACED)]
    head, rest = kept[:1], kept[1:]
    extensions = [f"SIZE {max(limits)}"] if limits else []
    extensions += ["SMTPUTF8"] if utf8 else []
    extensions += list(ALWAYS_OFFERED)
    lines = head + [f"250-{e}" for e in extensions] + rest
    return [*lines, "250 HELP"]
