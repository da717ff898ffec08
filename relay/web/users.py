"""Whose page a request is for, and how the pages name a user's provider."""

from __future__ import annotations

from aiohttp import web

from relay.config.model import ProviderConfig
from relay.model import User
from relay.web.guard import require_session
from relay.web.site import PageError, Site

# Whose sign-in button the page shows, by preset; an explicit provider shows its own name.
SIGN_IN_BRANDS = {
    "gmail": "Google",
    "google-workspace": "Google",
    "office365": "Microsoft",
    "outlook": "Microsoft",
}


def session_user(request: web.Request, site: Site) -> User:
    """The user this browser's session is bound to; PageError when none."""
    login = require_session(request).login
    if login is None:
        raise PageError(403, "error.no_session")
    user = site.store.find_user(login)
    if user is None:
        raise PageError(410, "error.gone")
    return user


def brand(provider: ProviderConfig | None, name: str) -> str:
    """A provider as people know it: Google, Microsoft, or its name in the config."""
    preset = provider.preset if provider else None
    return SIGN_IN_BRANDS.get(preset or "", name)


def provider_label(site: Site, user: User) -> str:
    """The user's provider as people know it."""
    return brand(site.provider(user), user.provider)
