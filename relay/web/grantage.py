"""The user's page line on their OAuth2 grant: how old it is, and when the provider ends it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.model import OAuthGrant, UpstreamAuth, User
from relay.oauth.lifetimes import DAY, GrantEnd, Rule, grant_end, shown_time
from relay.web.site import Site


@dataclass(frozen=True, slots=True)
class GrantAge:
    """What _grant.html shows: catalogue keys and their fields."""

    age_key: str  # grant.today, grant.yesterday or grant.days
    days: int
    end_key: str | None = None  # grant.testing, grant.unused or grant.ended; None: not known
    issuer: str = ""
    lifetime_days: int = 0
    date: str = ""


def grant_age(
    site: Site, user: User, grant: OAuthGrant | None, now: float | None = None
) -> GrantAge | None:
    """The line for user's grant; None when relay keeps no OAuth2 sign-in for them."""
    if user.auth is not UpstreamAuth.OAUTH2:
        return None
    if grant is None or grant.authorized_at is None or grant.sealed_refresh is None:
        return None
    now = time.time() if now is None else now
    days = max(0, int((now - grant.authorized_at) // DAY))
    age_key = "grant.today" if days == 0 else "grant.yesterday" if days == 1 else "grant.days"
    end = grant_end(site.provider(user), grant)
    if end is None:
        return GrantAge(age_key, days)
    return GrantAge(
        age_key,
        days,
        end_key=_end_key(end, now),
        issuer=end.lifetime.issuer.value,
        lifetime_days=end.lifetime.days,
        date=shown_time(end.ends_at),
    )


def _end_key(end: GrantEnd, now: float) -> str:
    if end.ends_at <= now:
        return "grant.ended"
    return "grant.testing" if end.lifetime.rule is Rule.TESTING else "grant.unused"
