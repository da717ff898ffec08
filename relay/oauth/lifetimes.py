"""How long a user's OAuth2 sign-in lasts at each provider, as far as the provider says, and when.

Sources (docs/oauth2.md, Sources): Google [7], "Using OAuth 2.0 to Access Google APIs", refresh
token expiration: an External app whose consent screen is in Testing gets refresh tokens that
expire in 7 days (unless it asks for nothing beyond name, email and profile, and relay asks for
mail), and any refresh token ends once unused for six months. Microsoft [20], "Refresh tokens in
the Microsoft identity platform": 90 days, and each use hands out a fresh one. A revocation, a
password change or an administrator's policy can end a sign-in sooner: nothing here foresees that.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.config.model import ProviderConfig
from relay.model import OAuthGrant

DAY = 86400.0
WARN_BEFORE = 2 * DAY  # relay check warns when a known end is this close
GOOGLE_PRESETS = ("gmail", "google-workspace")
MICROSOFT_PRESETS = ("office365", "outlook")
GOOGLE_HOSTS = ("oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com")
MICROSOFT_HOSTS = ("login.microsoftonline.com", "login.live.com")


class Issuer(enum.Enum):
    """Whose authorization server issued the grant, as people know it."""

    GOOGLE = "Google"
    MICROSOFT = "Microsoft"


class Rule(enum.Enum):
    """How a known lifetime is counted."""

    TESTING = "testing"  # from the sign-in, whatever relay does meanwhile
    UNUSED = "unused"  # from the last use: each renewal of the access token starts it again


@dataclass(frozen=True, slots=True)
class KnownLifetime:
    """A provider's documented end of a sign-in."""

    issuer: Issuer
    rule: Rule
    days: int


GOOGLE_TESTING = KnownLifetime(Issuer.GOOGLE, Rule.TESTING, 7)
# "Six months" is 181 to 184 days; the shortest reading keeps the date shown on the safe side.
GOOGLE_UNUSED = KnownLifetime(Issuer.GOOGLE, Rule.UNUSED, 181)
MICROSOFT_UNUSED = KnownLifetime(Issuer.MICROSOFT, Rule.UNUSED, 90)


@dataclass(frozen=True, slots=True)
class GrantEnd:
    """When a kept sign-in ends by its provider's known rule."""

    lifetime: KnownLifetime
    authorized_at: float
    ends_at: float

    def days_old(self, now: float) -> int:
        """Whole days since the user signed in."""
        return max(0, int((now - self.authorized_at) // DAY))

    def soon(self, now: float) -> bool:
        """Whether the end is within WARN_BEFORE (or past)."""
        return self.ends_at - now <= WARN_BEFORE


def issuer_of(provider: ProviderConfig) -> Issuer | None:
    """Google or Microsoft, by the provider's preset or its token endpoint; None for others."""
    host = urlsplit(provider.oauth2.token_url).hostname if provider.oauth2 else None
    if provider.preset in GOOGLE_PRESETS or host in GOOGLE_HOSTS:
        return Issuer.GOOGLE
    if provider.preset in MICROSOFT_PRESETS or host in MICROSOFT_HOSTS:
        return Issuer.MICROSOFT
    return None


def known_lifetime(provider: ProviderConfig | None) -> KnownLifetime | None:
    """The rule that ends each user's sign-in at provider; None where none is known."""
    oauth2 = provider.oauth2 if provider is not None else None
    if provider is None or oauth2 is None or oauth2.organisation:
        return None  # an organisation credential is no user's sign-in
    issuer = issuer_of(provider)
    if issuer is Issuer.GOOGLE:
        return GOOGLE_TESTING if oauth2.publishing_status == "testing" else GOOGLE_UNUSED
    if issuer is Issuer.MICROSOFT:
        return MICROSOFT_UNUSED
    return None


def grant_end(provider: ProviderConfig | None, grant: OAuthGrant | None) -> GrantEnd | None:
    """When the grant ends by a known rule; None without one, or without a usable grant."""
    lifetime = known_lifetime(provider)
    if lifetime is None or grant is None or grant.authorized_at is None:
        return None
    if grant.sealed_refresh is None or grant.needs_authorization is not None:
        return None  # nothing left to end: the user must sign in again anyway
    start = grant.authorized_at
    if lifetime.rule is Rule.UNUSED:
        start = max(start, grant.refreshed_at or start)
    return GrantEnd(lifetime, grant.authorized_at, start + lifetime.days * DAY)


def expiry_warning(
    provider: ProviderConfig | None, grant: OAuthGrant | None, login: str, now: float
) -> str | None:
    """relay check's warning when a known end is near, with the date and the fix; else None."""
    end = grant_end(provider, grant)
    if end is None or not end.soon(now):
        return None
    lifetime = end.lifetime
    why = (
        f"{lifetime.days} days after the sign-in while the app is in Testing"
        if lifetime.rule is Rule.TESTING
        else f"after {lifetime.days} days unused"
    )
    verb = "ended" if end.ends_at <= now else "ends"
    return (
        f"{lifetime.issuer.value} {verb} this sign-in on {shown_time(end.ends_at)} ({why}): "
        f"the user signs in again on their enrollment page, or run 'relay user authorize {login}'"
    )


def shown_time(moment: float) -> str:
    """A moment as people read it in any language: 2026-12-10 06:20 UTC."""
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
