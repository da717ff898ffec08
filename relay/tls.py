"""The verifying TLS client contexts that SMTP, IMAP, relay check and OAuth2 share."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsContexts:
    """One verifying TLS context per CA file, built once: loading CA bundles is slow."""

    def __init__(self) -> None:
        self._contexts: dict[Path | None, ssl.SSLContext] = {}

    def for_ca_file(self, ca_file: Path | None) -> ssl.SSLContext:
        """A client context that checks the chain and the host name, TLS 1.2 or newer."""
        context = self._contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._contexts[ca_file] = context
        return context

    def forget(self) -> None:
        """Drop the contexts built so far: each CA file is read again when next needed."""
        self._contexts.clear()


def listener_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server context for a listener with a certificate (STARTTLS), or None without."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
