"""Local logins: issuing secrets, storing them as hashes, verifying them quickly and safely."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable

from relay.model import Secret

# A key derivation function as hashlib.scrypt is called here: (secret, salt, n, r, p) -> digest.
Kdf = Callable[[bytes, bytes, int, int, int], bytes]

# 32 letters and digits carry 190 bits: far beyond guessing, so one SHA-256 round suffices.
# No punctuation, so no app or shell mistakes the secret for an option or a quote.
GENERATED_SECRET_LENGTH = 32
GENERATED_SECRET_ALPHABET = string.ascii_letters + string.digits
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16


def generate_local_secret() -> Secret:
    """A fresh high-entropy local secret, safe to type into any app's SMTP settings."""
    return Secret(
        "".join(secrets.choice(GENERATED_SECRET_ALPHABET) for _ in range(GENERATED_SECRET_LENGTH))
    )


def hash_generated_secret(secret: Secret) -> str:
    """Store a generated secret as its SHA-256 digest."""
    return "sha256$" + hashlib.sha256(secret.reveal().encode()).hexdigest()


def hash_chosen_secret(secret: Secret) -> str:
    """Store an operator-chosen secret with scrypt, because it may be guessable."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret.reveal().encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_stored_hash(stored: str, offered: bytes, kdf: Kdf | None = None) -> bool:
    """Check an offered secret against a stored hash, in constant time; may be slow (scrypt)."""
    scheme, _, rest = stored.partition("$")
    if scheme == "sha256":
        return hmac.compare_digest(hashlib.sha256(offered).hexdigest(), rest)
    if scheme == "scrypt":
        n, r, p, salt, digest = rest.split("$")
        computed = (kdf or _scrypt)(offered, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, _unb64(digest))
    return False


def is_slow_hash(stored: str) -> bool:
    """Whether verifying against this hash costs real CPU time."""
    return stored.startswith("scrypt$")


class LocalVerifier:
    """Verifies local logins, caching slow-hash successes as Dovecot's auth cache does."""

    def __init__(self, kdf: Kdf | None = None) -> None:
        self._kdf: Kdf = kdf or _scrypt
        # A per-process key, so the cache holds nothing that verifies outside this process.
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[str, tuple[str, bytes]] = {}
        # What a failure with no scrypt hash to check runs instead: the same scrypt, same cost.
        self._dummy_salt = secrets.token_bytes(SALT_BYTES)
        self._dummy_digest = secrets.token_bytes(32)

    def proven(self, login: str, stored: str, offered: bytes) -> bool:
        """Whether the secret is right by a cheap check alone: a generated or a cached secret."""
        # No slow work here, so a right secret never waits behind a guess; a false answer only
        # sends the attempt on to verify(), which costs the same for every kind of failure.
        if not is_slow_hash(stored):
            return verify_stored_hash(stored, offered)
        cached = self._cache.get(login)
        fingerprint = hmac.digest(self._cache_key, offered, "sha256")
        return (
            cached is not None
            and cached[0] == stored
            and hmac.compare_digest(cached[1], fingerprint)
        )

    async def verify(self, login: str, stored: str | None, offered: bytes) -> bool:
        """The full check, always one scrypt at the default cost; stored is None for no login."""
        # Issue 21: an unknown or disabled login (stored None) or a generated secret's SHA-256
        # hash would otherwise fail in microseconds where a chosen secret takes scrypt's time,
        # and the difference names the logins that exist. Each runs the same scrypt instead.
        if stored is not None and is_slow_hash(stored):
            ok = await asyncio.to_thread(verify_stored_hash, stored, offered, self._kdf)
            if ok:
                self._cache[login] = (stored, hmac.digest(self._cache_key, offered, "sha256"))
            return ok
        await asyncio.to_thread(self._dummy, offered)
        return stored is not None and verify_stored_hash(stored, offered)

    def _dummy(self, offered: bytes) -> bool:
        computed = self._kdf(offered, self._dummy_salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return hmac.compare_digest(computed, self._dummy_digest)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
