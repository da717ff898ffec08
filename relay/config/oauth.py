"""The oauth2 section of a provider in the config file."""

from __future__ import annotations

import re

from relay.config.model import OAuthSettings
from relay.config.organisation import (
    app_scopes,
    certificate_files,
    https_or_loopback,
    organisation_problems,
    service_account,
    tenant_problem,
)
from relay.config.reader import Reader, Section, or_default, plain, shown
from relay.providers.presets import OAuthEndpoints

REDIRECT_HOSTS = ("127.0.0.1", "localhost")
PUBLISHING_STATUSES = ("testing", "production")  # Google Auth Platform → Audience
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token


OAUTH_FILE_KEYS = (
    "client_id",
    "client_secret_file",
    "tenant",
    "authorize_url",
    "token_url",
    "device_url",
    "scopes",
    "redirect_host",
    "app_only",
    "service_account_file",
    "client_certificate_file",
    "client_key_file",
    "publishing_status",
)


def render_oauth(settings: OAuthSettings | None) -> object:
    """The section as plain YAML data that oauth_settings reads back to equal settings."""
    if settings is None:
        return None
    return {key: plain(getattr(settings, key)) for key in OAUTH_FILE_KEYS}


def oauth_settings(
    reader: Reader,
    provider: Section,
    preset_name: str | None,
    base: OAuthEndpoints | None,
    graph: bool = False,
) -> OAuthSettings | None:
    """The provider's oauth2 section, over the preset's endpoints; None if there is none."""
    if provider.get("oauth2") is None:
        return None
    s = reader.child(provider, "oauth2", OAUTH_FILE_KEYS)
    app_only = or_default(reader.boolean(s, "app_only"), False)
    account_file, account = service_account(reader, s)
    organisation = app_only or s.get("service_account_file") is not None
    client_id = reader.text(s, "client_id")
    if account is not None and client_id is None:
        client_id = account.client_id or account.client_email
    if client_id is None and s.get("client_id") is None and account_file is None:
        reader.fail(s.key("client_id"), "required: the client id of relay's app registration")
    secret_file = reader.readable_file(s, "client_secret_file")
    if secret_file is not None and not secret_file.read_bytes().strip():
        reader.fail(s.key("client_secret_file"), f"file is empty: {secret_file}")
    needs_secret = base is not None and base.client_secret_required and account_file is None
    needs_secret = needs_secret and s.get("client_certificate_file") is None
    if needs_secret and s.get("client_secret_file") is None:
        why = f"required: preset {preset_name!r} wants the client secret of relay's registration"
        reader.fail(s.key("client_secret_file"), why)
    organisation_problems(reader, s, app_only)
    certificate_file, key_file = certificate_files(reader, s)
    redirect_host = reader.one_of(s, "redirect_host", REDIRECT_HOSTS)
    tenant = _tenant(reader, s, base, app_only)
    where = f"preset {preset_name!r} has" if preset_name else "there is no preset with"
    urls = {}
    for name in ("authorize_url", "token_url", "device_url"):
        preset_url = getattr(base, name) if base else None
        if name == "token_url" and account is not None:
            preset_url = account.token_uri  # the key file says where its assertions go
        url = _url(reader, s, name) if s.get(name) is not None else preset_url
        optional = name == "device_url" or (organisation and name == "authorize_url")
        if url is None and not optional and s.get(name) is None:
            reader.fail(s.key(name), f"required: {where} no OAuth2 endpoints")
        urls[name] = None if url is None else url.replace("{tenant}", tenant or "")
    if organisation and s.get("scopes") is None:
        scopes = app_scopes(reader, s, base, graph)
    else:
        scopes = _scopes(reader, s, base)
    if client_id is None or urls["token_url"] is None:
        return None
    if urls["authorize_url"] is None and not organisation:
        return None
    return OAuthSettings(
        client_id=client_id,
        client_secret_file=secret_file,
        tenant=tenant,
        authorize_url=urls["authorize_url"] or "",
        token_url=urls["token_url"],
        device_url=urls["device_url"],
        scopes=scopes,
        redirect_host=redirect_host or (base.redirect_host if base else REDIRECT_HOSTS[0]),
        authorize_params=base.authorize_params if base else (),
        app_only=app_only,
        service_account_file=account_file,
        client_certificate_file=certificate_file,
        client_key_file=key_file,
        publishing_status=reader.one_of(s, "publishing_status", PUBLISHING_STATUSES),
    )


def _tenant(reader: Reader, s: Section, base: OAuthEndpoints | None, app_only: bool) -> str | None:
    tenant = reader.text(s, "tenant")
    if tenant is not None and not _TENANT.fullmatch(tenant):
        why = f"expected a tenant id or domain such as contoso.onmicrosoft.com, got {tenant!r}"
        reader.fail(s.key("tenant"), why)
        return None
    templated = any("{tenant}" in str(s.get(n) or "") for n in ("authorize_url", "token_url"))
    has_effect = templated or (base is not None and base.default_tenant is not None)
    if tenant is not None and not has_effect:
        reader.fail(s.key("tenant"), "has no effect: no endpoint URL here has {tenant} in it")
        return tenant
    microsoft = base is not None and base.default_tenant is not None
    problem = tenant_problem(tenant, app_only=app_only and has_effect, microsoft=microsoft)
    if problem is not None:
        reader.fail(s.key("tenant"), problem)
        return None
    return tenant or (base.default_tenant if base else None)


def _url(reader: Reader, s: Section, name: str) -> str | None:
    """An https URL, or http to a loopback address (a test or a local proxy)."""
    url = reader.text(s, name)
    if url is None:
        return None
    if not https_or_loopback(url):
        why = "expected an https:// URL (http:// only to a loopback address)"
        reader.fail(s.key(name), f"{why}, got {url!r}")
        return None
    return url


def _scopes(reader: Reader, s: Section, base: OAuthEndpoints | None) -> tuple[str, ...]:
    value = s.get("scopes")
    if value is None and base is None:
        reader.fail(s.key("scopes"), "required: no preset supplies them")
    if value is None:
        return base.scopes if base else ()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        reader.fail(s.key("scopes"), f"expected a list of scopes, got {shown(value)}")
        return ()
    for index, item in enumerate(items):
        if not isinstance(item, str) or not _SCOPE.fullmatch(item):
            reader.fail(f"{s.key('scopes')}[{index}]", f"not a scope: {shown(item)}")
    return tuple(str(item) for item in items)
