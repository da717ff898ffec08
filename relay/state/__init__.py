"""What the state dir keeps besides the spool: users, OAuth2 grants, master key, local logins."""

from relay.state.grants import REFRESH_TOKEN_FIELD
from relay.state.keys import MasterKey, create_key_file, key_path, load_key
from relay.state.localauth import (
    LocalVerifier,
    generate_local_secret,
    hash_chosen_secret,
    hash_generated_secret,
    is_slow_hash,
)
from relay.state.sealing import UPSTREAM_CREDENTIAL, account_context, open_secret, user_context
from relay.state.store import Store

__all__ = [
    "LocalVerifier",
    "MasterKey",
    "REFRESH_TOKEN_FIELD",
    "Store",
    "UPSTREAM_CREDENTIAL",
    "account_context",
    "create_key_file",
    "generate_local_secret",
    "hash_chosen_secret",
    "hash_generated_secret",
    "is_slow_hash",
    "key_path",
    "load_key",
    "open_secret",
    "user_context",
]
