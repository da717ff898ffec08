"""The web section of the config file: where the enrollment pages listen and are reached."""

from __future__ import annotations

from urllib.parse import urlsplit

from relay.config.addresses import is_ip, is_loopback_address
from relay.config.model import WebConfig
from relay.config.reader import Reader, Section, field_keys, or_default


def web_config(reader: Reader, top: Section) -> WebConfig:
    """The web section, checked: a page off loopback needs TLS, public_url must be usable."""
    s = reader.child(top, "web", field_keys(WebConfig))
    default = WebConfig()
    address = reader.text(s, "address")
    if address is not None and address != "localhost" and not is_ip(address):
        reader.fail(s.key("address"), f"expected an IP address or 'localhost', got {address!r}")
        address = None
    web = WebConfig(
        enabled=or_default(reader.boolean(s, "enabled"), default.enabled),
        address=address or default.address,
        port=or_default(reader.integer(s, "port", 0, 65535), default.port),
        public_url=_public_url(reader, s),
        tls_cert=reader.readable_file(s, "tls_cert"),
        tls_key=reader.readable_file(s, "tls_key"),
        invite_lifetime=or_default(reader.seconds(s, "invite_lifetime"), default.invite_lifetime),
        attempts_per_ip=or_default(
            reader.integer(s, "attempts_per_ip", 1, 1_000_000), default.attempts_per_ip
        ),
    )
    has_cert, has_key = s.get("tls_cert") is not None, s.get("tls_key") is not None
    if has_cert and not has_key:
        reader.fail(s.key("tls_key"), "required when tls_cert is set")
    elif has_key and not has_cert:
        reader.fail(s.key("tls_cert"), "required when tls_key is set")
    elif not has_cert and not web.is_loopback:
        reader.fail(
            s.key("address"),
            f"{web.address} is not loopback: set web.tls_cert and web.tls_key, because "
            "upstream passwords would otherwise cross the network in plaintext",
        )
    return web


def _public_url(reader: Reader, s: Section) -> str | None:
    """An http(s) origin with an optional path, kept without a trailing slash."""
    url = reader.text(s, "public_url")
    if url is None:
        return None
    key = s.key("public_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        reader.fail(key, f"expected a URL like https://relay.example.org/, got {url!r}")
        return None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment:
        reader.fail(key, f"expected a URL like https://relay.example.org/, got {url!r}")
        return None
    if parts.scheme == "http" and not (host == "localhost" or is_loopback_address(host)):
        reader.fail(
            key,
            f"must be https:// for the host {host} (http:// only on loopback): browsers send "
            "passwords and session cookies over it",
        )
        return None
    return url.rstrip("/")
