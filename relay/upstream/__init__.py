"""Talking to the provider's SMTP server: accounts, session pool, SASL, credentials, replies."""

from relay.upstream.account import SendOutcome, UpstreamAccount, UpstreamTimeouts
from relay.upstream.credentials import Credentials, UpstreamSecret, open_credentials
from relay.upstream.pool import (
    PoolSettings,
    Session,
    UpstreamPool,
    close_session,
    pool_settings,
    smtp_client,
)
from relay.upstream.replies import auth_error, one_line, refusal_reply, upstream_error
from relay.upstream.sasl import bearer_mechanism, bearer_refused_fix, smtp_login

__all__ = [
    "Credentials",
    "PoolSettings",
    "SendOutcome",
    "Session",
    "UpstreamAccount",
    "UpstreamPool",
    "UpstreamSecret",
    "UpstreamTimeouts",
    "auth_error",
    "bearer_mechanism",
    "bearer_refused_fix",
    "close_session",
    "one_line",
    "open_credentials",
    "pool_settings",
    "refusal_reply",
    "smtp_client",
    "smtp_login",
    "upstream_error",
]
