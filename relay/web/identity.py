"""Who signed in at the provider: the OpenID Connect ID token's claims, and the comparison."""

from __future__ import annotations

import base64
import binascii
import json
import time

from relay.errors import OAuthError, WrongAccount
from relay.model import Secret, User

IDENTITY_SCOPES = ("openid", "email")
CLOCK_SKEW = 300.0  # seconds of difference allowed between our clock and the provider's
# Consumer Gmail ignores dots and case in the local part (PROVIDERS.md §3 [9]); Workspace does not.
DOTLESS_DOMAINS = ("gmail.com", "googlemail.com")


def signed_in_account(id_token: Secret | None, client_id: str, now: float | None = None) -> str:
    """The address the ID token names; OAuthError if it is missing, malformed, or not for us."""
    # OpenID Connect Core §3.1.3.7: a token received straight from the token endpoint over
    # verified TLS may be trusted without checking its signature; aud and exp still matter.
    if id_token is None:
        raise OAuthError("no_id_token", "the provider did not say which account signed in")
    claims = _claims(id_token.reveal())
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise OAuthError("invalid_id_token", "the ID token was issued to another client")
    expires = claims.get("exp")
    now = time.time() if now is None else now
    if not isinstance(expires, int | float) or expires + CLOCK_SKEW < now:
        raise OAuthError("invalid_id_token", "the ID token has expired")
    # Google and most providers: email (with email_verified); Microsoft: preferred_username.
    email = claims.get("email")
    if isinstance(email, str) and email and claims.get("email_verified", True) is not False:
        return email
    for name in ("preferred_username", "upn"):
        value = claims.get(name)
        if isinstance(value, str) and "@" in value:
            return value
    raise OAuthError("no_id_token", "the provider did not say which address signed in")


def require_account(user: User, signed_in: str) -> None:
    """WrongAccount unless signed_in is the mailbox relay sends as for user."""
    wanted = {canonical_address(user.upstream_user), canonical_address(user.email)}
    if canonical_address(signed_in) not in wanted:
        raise WrongAccount(signed_in, user.upstream_user)


def canonical_address(address: str) -> str:
    """The address as the mailbox knows it: case folded, Gmail's dots left out."""
    local, _, domain = address.strip().casefold().rpartition("@")
    if domain in DOTLESS_DOMAINS:
        local = local.replace(".", "")
    return f"{local}@{domain}"


def _claims(token: str) -> dict[str, object]:
    parts = token.split(".")
    if len(parts) != 3:
        raise OAuthError("invalid_id_token", "the ID token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError):
        raise OAuthError("invalid_id_token", "the ID token cannot be read") from None
    if not isinstance(claims, dict):
        raise OAuthError("invalid_id_token", "the ID token holds no claims")
    return claims
