"""The master key: creating and loading it, sealing and opening upstream secrets."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import MasterKeyError, SealDoesNotOpen, WrongMasterKey
from relay.model import Secret

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 4
TAG_BYTES = 16
SEAL_VERSION = b"\x02"  # the plaintext padded (below) before it is sealed
UNPADDED_VERSION = b"\x01"  # relay 0.1: opened only to re-seal it (relay.state.sealing)
# A seal's size gives only the bucket its plaintext fell in, not its length: every password
# shorter than 64 bytes seals to the same size; refresh tokens fill the larger buckets.
PAD_BUCKETS = (64, 256, 1024, 4096)  # and multiples of the last beyond it
PAD_MARK = b"\x80"  # ISO/IEC 7816-4 padding: one 0x80 byte, then zeros to the bucket size
CREDENTIAL_NAME = "relay.key"


class MasterKey:
    """A 32-byte AES-256-GCM key that seals upstream secrets."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(material)}")
        self._aead = AESGCM(material)
        # The id names the key without revealing it, so that a rotation can tell old seals apart.
        self.key_id = hashlib.sha256(b"relay key id\0" + material).digest()[:KEY_ID_BYTES]

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id.hex()})"

    def seal(self, plaintext: Secret, context: bytes) -> bytes:
        """Encrypt a padded secret, bound to its context as associated data."""
        nonce = os.urandom(NONCE_BYTES)
        header = SEAL_VERSION + self.key_id
        padded = pad(plaintext.reveal().encode())
        return header + nonce + self._aead.encrypt(nonce, padded, header + context)

    def open(self, sealed: bytes, context: bytes) -> Secret:
        """Decrypt a sealed secret; raise MasterKeyError if the key or context is wrong."""
        header_len = len(SEAL_VERSION) + KEY_ID_BYTES
        header, nonce = sealed[:header_len], sealed[header_len : header_len + NONCE_BYTES]
        version = header[:1]
        if version not in (SEAL_VERSION, UNPADDED_VERSION) or len(sealed) < (
            header_len + NONCE_BYTES + TAG_BYTES
        ):
            raise MasterKeyError("sealed secret is malformed or has an unknown format version")
        if header[1:] != self.key_id:
            raise WrongMasterKey(
                f"secret was sealed with key {header[1:].hex()}, not the loaded key "
                f"{self.key_id.hex()}: is key_file the one used when the user was added?"
            )
        try:
            plaintext = self._aead.decrypt(
                nonce, sealed[header_len + NONCE_BYTES :], header + context
            )
        except InvalidTag:
            raise SealDoesNotOpen(
                "sealed secret does not open: wrong key or tampered data"
            ) from None
        return Secret((unpad(plaintext) if version == SEAL_VERSION else plaintext).decode())


def pad(data: bytes) -> bytes:
    """data with its padding, up to the smallest bucket that holds it and the mark."""
    needed = len(data) + len(PAD_MARK)
    largest = PAD_BUCKETS[-1]
    size = next((bucket for bucket in PAD_BUCKETS if bucket >= needed), 0)
    size = size or -(-needed // largest) * largest
    return data + PAD_MARK + bytes(size - needed)


def unpad(padded: bytes) -> bytes:
    """The data that pad() padded."""
    stripped = padded.rstrip(b"\0")
    if not stripped.endswith(PAD_MARK):
        raise MasterKeyError("sealed secret has malformed padding")
    return stripped[: -len(PAD_MARK)]


def key_path(configured: Path, environ: Mapping[str, str]) -> Path:
    """The key file to use: systemd's credential when one is passed, else the configured file."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return Path(credentials) / CREDENTIAL_NAME
    return configured


def create_key_file(path: Path) -> None:
    """Write a fresh random key, 0600, refusing to replace an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MasterKeyError(
            f"key file already exists: {path}; refusing to overwrite it, "
            "because every stored upstream secret is sealed with it"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES))
        handle.flush()
        os.fsync(handle.fileno())


def load_key(path: Path) -> MasterKey:
    """Read the master key file, with an error that says what to do when it is unusable."""
    try:
        material = path.read_bytes()
    except FileNotFoundError:
        raise MasterKeyError(f"key file not found: {path} (run 'relay init' first)") from None
    except PermissionError:
        raise MasterKeyError(f"key file not readable: {path} (run as the relay user)") from None
    if len(material) != KEY_BYTES:
        raise MasterKeyError(f"key file {path} holds {len(material)} bytes, expected {KEY_BYTES}")
    return MasterKey(material)
