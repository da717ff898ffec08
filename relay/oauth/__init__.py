"""OAuth2: token endpoint calls, the sign-in flows, and each user's cached access token."""

from relay.oauth.client import DeviceAuthorization, TokenEndpoint, TokenGrant, token_http_client
from relay.oauth.flows import sign_in_with_browser, sign_in_with_device
from relay.oauth.tokens import AccessTokens, keep_grants_alive, refresh_token_context, usable_grant

__all__ = [
    "AccessTokens",
    "DeviceAuthorization",
    "TokenEndpoint",
    "TokenGrant",
    "keep_grants_alive",
    "refresh_token_context",
    "sign_in_with_browser",
    "sign_in_with_device",
    "token_http_client",
    "usable_grant",
]
