"""The master key: file handling and sealing of upstream secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from relay.errors import MasterKeyError
from relay.model import Secret
from relay.state.keys import MasterKey, create_key_file, key_path, load_key


def test_created_key_file_is_32_bytes_and_readable_only_by_owner(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "relay.key"
    create_key_file(path)
    assert len(path.read_bytes()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(MasterKeyError, match="refusing to overwrite"):
        create_key_file(path)
    assert path.read_bytes() == before


def test_sealed_secret_opens_with_same_key_and_context(tmp_path: Path) -> None:
    key = MasterKey(b"k" * 32)
    sealed = key.seal(Secret("hunter2-upstream"), b"user=alice")
    assert b"hunter2-upstream" not in sealed
    assert key.open(sealed, b"user=alice").reveal() == "hunter2-upstream"


def test_same_secret_sealed_twice_gives_different_ciphertexts() -> None:
    key = MasterKey(b"k" * 32)
    assert key.seal(Secret("x"), b"c") != key.seal(Secret("x"), b"c")


def test_sealed_secret_does_not_open_for_another_user() -> None:
    key = MasterKey(b"k" * 32)
    sealed = key.seal(Secret("pw"), b"user=alice")
    with pytest.raises(MasterKeyError, match="does not open"):
        key.open(sealed, b"user=bob")


def test_sealed_secret_from_another_key_names_both_key_ids() -> None:
    sealed = MasterKey(b"a" * 32).seal(Secret("pw"), b"c")
    other = MasterKey(b"b" * 32)
    with pytest.raises(MasterKeyError, match=other.key_id.hex()):
        other.open(sealed, b"c")


def test_missing_key_file_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="relay init"):
        load_key(tmp_path / "absent.key")


def test_truncated_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    path.write_bytes(b"x" * 16)
    with pytest.raises(MasterKeyError, match="16 bytes"):
        load_key(path)


def test_systemd_credential_wins_over_configured_key_file(tmp_path: Path) -> None:
    (tmp_path / "relay.key").write_bytes(b"x" * 32)
    configured = Path("/etc/relay/relay.key")
    assert key_path(configured, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path / "relay.key"
    assert key_path(configured, {}) == configured


def test_secret_never_shows_in_repr_or_str() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{[secret]}"
