"""Local logins: issuing secrets, storing them as hashes, verifying them quickly and safely."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import string

from relay.model import Secret

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


def verify_stored_hash(stored: str, offered: bytes) -> bool:
    """Check an offered secret against a stored hash, in constant time; may be slow (scrypt)."""
    scheme, _, rest = stored.partition("$")
    if scheme == "sha256":
        return hmac.compare_digest(hashlib.sha256(offered).hexdigest(), rest)
    if scheme == "scrypt":
        n, r, p, salt, digest = rest.split("$")
        computed = _scrypt(offered, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, _unb64(digest))
    return False


def is_slow_hash(stored: str) -> bool:
    """Whether verifying against this hash costs real CPU time."""
    return stored.startswith("scrypt$")


class LocalVerifier:
    """Verifies local logins, caching slow-hash successes as Dovecot's auth cache does."""

    def __init__(self) -> None:
        # A per-process key, so the cache holds nothing that verifies outside this process.
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[str, tuple[str, bytes]] = {}

    async def verify(self, login: str, stored: str, offered: bytes) -> bool:
        """Whether the offered secret matches; slow hashes run off the event loop."""
        if not is_slow_hash(stored):
            return verify_stored_hash(stored, offered)
        fingerprint = hmac.digest(self._cache_key, offered, "sha256")
        cached = self._cache.get(login)
        if cached is not None and cached[0] == stored:
            return hmac.compare_digest(cached[1], fingerprint)
        ok = await asyncio.to_thread(verify_stored_hash, stored, offered)
        if ok:
            self._cache[login] = (stored, fingerprint)
        return ok


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
