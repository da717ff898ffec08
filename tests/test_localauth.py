"""Local secrets: generated ones hash fast, chosen ones slowly, both verify in constant time."""

from __future__ import annotations

from relay.model import Secret
from relay.state.localauth import (
    LocalVerifier,
    generate_local_secret,
    hash_chosen_secret,
    hash_generated_secret,
    is_slow_hash,
    verify_stored_hash,
)


def test_generated_secret_has_at_least_128_bits() -> None:
    secret = generate_local_secret().reveal()
    assert secret.isalnum() and len(secret) == 32  # 62**32 is about 2**190
    assert generate_local_secret().reveal() != secret


def test_generated_secret_is_stored_as_digest_not_plaintext() -> None:
    secret = generate_local_secret()
    stored = hash_generated_secret(secret)
    assert secret.reveal() not in stored
    assert not is_slow_hash(stored)
    assert verify_stored_hash(stored, secret.reveal().encode())
    assert not verify_stored_hash(stored, b"wrong")


def test_chosen_secret_is_stored_with_scrypt() -> None:
    stored = hash_chosen_secret(Secret("correct horse battery"))
    assert stored.startswith("scrypt$")
    assert "correct horse" not in stored
    assert verify_stored_hash(stored, b"correct horse battery")
    assert not verify_stored_hash(stored, b"correct horse")


async def test_verifier_proves_a_cached_chosen_secret_cheaply_and_still_refuses_wrong_one() -> None:
    stored = hash_chosen_secret(Secret("correct horse battery"))
    verifier = LocalVerifier()
    assert not verifier.proven("alice", stored, b"correct horse battery")  # not verified yet
    assert await verifier.verify("alice", stored, b"correct horse battery")
    assert verifier.proven("alice", stored, b"correct horse battery")
    assert not verifier.proven("alice", stored, b"wrong horse battery")
    assert not await verifier.verify("alice", stored, b"wrong horse battery")


async def test_verifier_refuses_no_login_and_proves_a_generated_secret_without_scrypt() -> None:
    secret = generate_local_secret()
    stored = hash_generated_secret(secret)
    verifier = LocalVerifier()
    assert verifier.proven("bob", stored, secret.reveal().encode())
    assert await verifier.verify("bob", stored, secret.reveal().encode())
    assert not await verifier.verify("nobody", None, b"anything")


async def test_verifier_cache_does_not_survive_a_new_secret() -> None:
    verifier = LocalVerifier()
    old = hash_chosen_secret(Secret("first secret value"))
    assert await verifier.verify("alice", old, b"first secret value")
    new = hash_chosen_secret(Secret("second secret value"))
    assert not verifier.proven("alice", new, b"first secret value")
    assert not await verifier.verify("alice", new, b"first secret value")
    assert await verifier.verify("alice", new, b"second secret value")
