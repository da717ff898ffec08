"""The providers section of the config file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from relay.config.delivery import max_connections, pace_setting
from relay.config.model import ProviderConfig
from relay.config.oauth import oauth_settings
from relay.config.organisation import (
    relay_files_copies,
    sent_copy_mailbox_setting,
    transport_setting,
)
from relay.config.reader import (
    Reader,
    Section,
    did_you_mean,
    field_keys,
    join_path,
    or_default,
    shown,
)
from relay.providers.presets import (
    NO_PACE,
    PRESETS,
    STANDARD_PORTS,
    Endpoint,
    Preset,
    SentCopy,
    TlsMode,
    Transport,
)

_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# The file's keys are the field names, so render_config and parse_config cannot drift apart.
PROVIDER_KEYS = field_keys(ProviderConfig, "name")


def provider_configs(reader: Reader, top: Section) -> Mapping[str, ProviderConfig]:
    """The providers section: each provider by name, with its preset expanded."""
    value = top.get("providers")
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        reader.fail("providers", f"expected a mapping of provider names, got {shown(value)}")
        return MappingProxyType({})
    providers: dict[str, ProviderConfig] = {}
    for name, item in value.items():
        path = join_path("providers", str(name))
        if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
            reader.fail(path, "a provider name is letters, digits, '.', '_' and '-'")
            continue
        provider = _provider(reader, name, reader.section(item, path, PROVIDER_KEYS))
        if provider is not None:
            providers[name] = provider
    return MappingProxyType(providers)


def _provider(reader: Reader, name: str, s: Section) -> ProviderConfig | None:
    preset = _preset(reader, s)
    # A misspelt preset is reported once; "host required" on top of it would only confuse.
    complain = s.get("preset") is None or preset is not None
    if s.get("smtp") is None and preset is None and complain:
        reader.fail(s.key("smtp"), "required: set smtp {host, port, tls} or a preset")
    smtp = _endpoint(reader, s, "smtp", preset.smtp if preset else None, complain)
    imap = _endpoint(reader, s, "imap", preset.imap if preset else None, complain)
    sent_copy = or_default(reader.choice(s, "sent_copy", SentCopy), SentCopy.AUTO)
    if sent_copy is SentCopy.ALWAYS and imap is None and s.get("imap") is None:
        reader.fail(s.key("sent_copy"), "'always' needs an imap endpoint to append to")
    domains = _domains(reader, s)
    max_recipients = reader.integer(s, "max_recipients")
    max_message_bytes = reader.integer(s, "max_message_bytes")
    ca_file = reader.readable_file(s, "ca_file")
    sent_folder = reader.text(s, "sent_folder")
    # A host that files each submitted mail in Sent by itself (as Gmail does) says so here.
    files_sent_itself = reader.boolean(s, "files_sent_itself")
    graph = s.get("transport") == Transport.GRAPH.value
    oauth2 = oauth_settings(
        reader, s, preset.name if preset else None, preset.oauth2 if preset else None, graph
    )
    transport, graph_url = transport_setting(reader, s, oauth2)
    self_filing = or_default(files_sent_itself, preset.files_sent_itself if preset else False)
    relay_files = relay_files_copies(sent_copy, self_filing, imap is not None)
    copy_mailbox = sent_copy_mailbox_setting(reader, s, oauth2, transport, relay_files)
    ceiling = max_connections(reader, s)
    pace = pace_setting(reader, s, preset.pace if preset else NO_PACE)
    if smtp is None:
        return None
    return ProviderConfig(
        name=name,
        preset=preset.name if preset else None,
        smtp=smtp,
        imap=imap,
        ca_file=ca_file,
        sent_copy=sent_copy,
        files_sent_itself=self_filing,
        domains=or_default(domains, preset.domains if preset else ()),
        max_recipients=or_default(max_recipients, preset.max_recipients if preset else None),
        sent_folder=sent_folder,
        oauth2=oauth2,
        allow_foreign_from=or_default(reader.boolean(s, "allow_foreign_from"), False),
        max_connections=ceiling,
        pace=pace,
        max_message_bytes=or_default(
            max_message_bytes, preset.max_message_bytes if preset else None
        ),
        transport=transport,
        graph_url=graph_url,
        sent_copy_mailbox=copy_mailbox,
    )


def _preset(reader: Reader, s: Section) -> Preset | None:
    value = s.get("preset")
    if value is None:
        return None
    preset = PRESETS.get(value) if isinstance(value, str) else None
    if preset is None:
        hint = did_you_mean(value, PRESETS) + f"; known presets: {', '.join(sorted(PRESETS))}"
        reader.fail(s.key("preset"), f"unknown preset {shown(value)}{hint}")
    return preset


def _endpoint(
    reader: Reader, parent: Section, name: str, base: Endpoint | None, complain: bool
) -> Endpoint | None:
    """The endpoint at parent.name, each key given overriding the base (preset) one."""
    if parent.get(name) is None:
        return base
    s = reader.child(parent, name, field_keys(Endpoint))
    host = reader.host(s, "host")
    tls = reader.choice(s, "tls", TlsMode)
    port = reader.integer(s, "port", 1, 65535)
    for key in ("host", "tls"):
        if s.get(key) is None and base is None and complain:
            reader.fail(s.key(key), "required (no preset supplies it)")
    host = host or (base.host if base else None)
    tls = tls or (base.tls if base else None)
    if port is None and s.get("port") is None and tls is not None:
        # A changed tls without a port means that mode's standard port, not the preset's.
        port = base.port if base is not None and base.tls is tls else STANDARD_PORTS[name, tls]
    if host is None or tls is None or port is None:
        return None
    return Endpoint(host, port, tls)


def _domains(reader: Reader, s: Section) -> tuple[str, ...] | None:
    value = s.get("domains")
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list):
        reader.fail(s.key("domains"), f"expected a list of domains, got {shown(value)}")
        return None
    domains = []
    for index, item in enumerate(value):
        domain = item.strip().lstrip("@").rstrip(".").lower() if isinstance(item, str) else ""
        if _DOMAIN.fullmatch(domain):
            domains.append(domain)
        else:
            why = f"expected a domain like example.org, got {shown(item)}"
            reader.fail(f"{s.key('domains')}[{index}]", why)
    return tuple(domains)
