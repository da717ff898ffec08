"""Organisation-wide sign-in in the config: app-only and service-account keys, the transport."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from relay.config.addresses import is_loopback_address
from relay.config.appcertificate import (
    CERTIFICATE_KEY,
    KEY_KEY,
    CertificateProblem,
    expiry_problem,
    read_app_certificate,
)
from relay.config.model import OAuthSettings
from relay.config.reader import Reader, Section, or_default
from relay.config.serviceaccount import ServiceAccountKey, read_service_account
from relay.providers.presets import (
    GRAPH_SCOPE,
    GRAPH_URL,
    OAuthEndpoints,
    SentCopy,
    SentCopyMailbox,
    Transport,
)

_GUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})+")
# Microsoft's multi-tenant aliases: fine for a person signing in, meaningless for an app that
# gets tokens of its own (Microsoft identity platform, "client credentials flow": the tenant
# must be the one that consented).
USER_TENANTS = ("common", "organizations", "consumers")
TENANT_EXAMPLE = "a tenant id (GUID) or domain such as contoso.onmicrosoft.com"


def https_or_loopback(url: str) -> bool:
    """An https URL, or http to a loopback address (a test or a local proxy)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    local = parts.scheme == "http" and (host == "localhost" or is_loopback_address(host))
    return bool(host) and (parts.scheme == "https" or local)


def tenant_problem(tenant: str | None, *, app_only: bool, microsoft: bool) -> str | None:
    """Why tenant does not do for this provider's sign-in; None when it does."""
    if tenant is None:
        return f"required for app_only: {TENANT_EXAMPLE}" if app_only and microsoft else None
    if tenant.lower() in USER_TENANTS:
        if app_only:
            return f"app_only needs your own tenant, not {tenant!r}: {TENANT_EXAMPLE}"
        return None
    if (microsoft or app_only) and not (_GUID.fullmatch(tenant) or _DOMAIN.fullmatch(tenant)):
        return f"expected {TENANT_EXAMPLE}, got {tenant!r}"
    return None


def service_account(reader: Reader, s: Section) -> tuple[Path | None, ServiceAccountKey | None]:
    """oauth2.service_account_file and the key in it, checked now; (None, None) if unset."""
    path = reader.readable_file(s, "service_account_file")
    if path is None:
        return None, None
    try:
        key = read_service_account(path)
    except ValueError as error:
        reader.fail(s.key("service_account_file"), f"{path}: {error}")
        return path, None
    if not https_or_loopback(key.token_uri):
        why = f"{path}: token_uri must be https:// (http:// only to a loopback address)"
        reader.fail(s.key("service_account_file"), why)
        return path, None
    return path, key


def certificate_files(reader: Reader, s: Section) -> tuple[Path | None, Path | None]:
    """oauth2.client_certificate_file and client_key_file, checked now: PEM, matching, valid."""
    certificate_file = reader.readable_file(s, CERTIFICATE_KEY)
    key_file = reader.readable_file(s, KEY_KEY)
    if s.get(CERTIFICATE_KEY) is None:
        if s.get(KEY_KEY) is not None:
            reader.fail(s.key(CERTIFICATE_KEY), f"required with {KEY_KEY}: the certificate, PEM")
        return None, None
    if s.get(KEY_KEY) is None:
        reader.fail(s.key(KEY_KEY), f"required with {CERTIFICATE_KEY}: its private key, PEM")
    if certificate_file is None or key_file is None:
        return certificate_file, key_file
    try:
        certificate = read_app_certificate(certificate_file, key_file)
    except CertificateProblem as problem:
        reader.fail(s.key(problem.key), str(problem))
        return certificate_file, key_file
    expired = expiry_problem(certificate, certificate_file, time.time())
    if expired is not None:
        reader.fail(s.key(CERTIFICATE_KEY), expired)
    return certificate_file, key_file


def organisation_problems(reader: Reader, s: Section, app_only: bool) -> None:
    """The keys an organisation credential needs, and those that contradict each other."""
    account = s.get("service_account_file") is not None
    certificate = s.get(CERTIFICATE_KEY) is not None
    if app_only and account:
        why = "choose one: app_only (Microsoft client credentials) or service_account_file (Google)"
        reader.fail(s.key("app_only"), why)
    elif certificate and not app_only:
        why = "a certificate credential is for app_only (Microsoft client credentials)"
        reader.fail(s.key(CERTIFICATE_KEY), why)
    elif certificate and s.get("client_secret_file") is not None:
        why = f"choose one: client_secret_file or {CERTIFICATE_KEY} (with {KEY_KEY})"
        reader.fail(s.key("client_secret_file"), why)
    elif app_only and not certificate and s.get("client_secret_file") is None:
        why = (
            "required for app_only: the app registration's client secret, in a file "
            f"(or {CERTIFICATE_KEY} and {KEY_KEY} for a certificate)"
        )
        reader.fail(s.key("client_secret_file"), why)
    elif account and s.get("client_secret_file") is not None:
        why = "not used with service_account_file: the service account signs its own requests"
        reader.fail(s.key("client_secret_file"), why)


def app_scopes(
    reader: Reader, s: Section, base: OAuthEndpoints | None, graph: bool
) -> tuple[str, ...]:
    """The scopes an organisation credential asks for when the file names none."""
    if graph:
        return (GRAPH_SCOPE,)
    if base is not None and base.app_scopes:
        return base.app_scopes
    reader.fail(s.key("scopes"), "required: no preset supplies the organisation credential's")
    return ()


def transport_setting(
    reader: Reader, s: Section, oauth2: OAuthSettings | None
) -> tuple[Transport, str | None]:
    """providers.NAME.transport and graph_url; Graph only with Microsoft's app-only credential."""
    transport = or_default(reader.choice(s, "transport", Transport), Transport.SMTP)
    url = reader.text(s, "graph_url")
    if url is not None and not https_or_loopback(url):
        reader.fail(s.key("graph_url"), f"expected an https:// URL, got {url!r}")
    if transport is Transport.SMTP:
        if s.get("graph_url") is not None:
            reader.fail(s.key("graph_url"), "has no effect: transport is smtp")
        return transport, None
    if oauth2 is None and s.get("oauth2") is None:
        why = "graph needs an organisation credential: oauth2 with app_only: true"
        reader.fail(s.key("transport"), why)
    elif oauth2 is not None and not oauth2.app_only:
        why = "graph sends as the app: set oauth2.app_only (Mail.Send application permission)"
        reader.fail(s.key("transport"), why)
    return transport, (url or GRAPH_URL).rstrip("/")


def sent_copy_mailbox_setting(
    reader: Reader,
    s: Section,
    oauth2: OAuthSettings | None,
    transport: Transport,
    relay_files: bool,
) -> SentCopyMailbox:
    """providers.NAME.sent_copy_mailbox: sender only where relay can reach that mailbox's Sent."""
    choice = or_default(
        reader.choice(s, "sent_copy_mailbox", SentCopyMailbox), SentCopyMailbox.UPSTREAM_USER
    )
    if choice is SentCopyMailbox.UPSTREAM_USER or transport is Transport.GRAPH:
        return choice  # Graph: sendMail goes through /users/{sender}, whose Sent Items get it
    key = s.key("sent_copy_mailbox")
    if not relay_files:
        reader.fail(
            key,
            "has no effect: the provider files the copy itself, in the mailbox relay logs in "
            "as; Exchange Online also files it in the shared mailbox once an admin runs "
            "Set-Mailbox SHARED -MessageCopyForSentAsEnabled $true (docs/oauth2.md, Send As)",
        )
    elif oauth2 is None or not oauth2.organisation:
        reader.fail(
            key,
            "sender needs an organisation credential (oauth2.app_only or "
            "service_account_file): with a password or a person's sign-in relay can open "
            "only the upstream_user's mailbox",
        )
    return choice


def relay_files_copies(sent_copy: SentCopy, files_sent_itself: bool, imap: bool) -> bool:
    """Whether relay itself APPENDs the Sent copies of a provider's mail."""
    if not imap or sent_copy is SentCopy.NEVER:
        return False
    return sent_copy is SentCopy.ALWAYS or not files_sent_itself
