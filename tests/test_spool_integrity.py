"""The start-up check: a damaged spool is reported, and relay starts on it only when told."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from relay.cli.command import main
from relay.errors import SpoolDamaged
from relay.queue.integrity import check_spool, verify_spool
from relay.queue.spool import Spool
from tests.harness import write_config
from tests.test_spool import message


async def crashed_copy(directory: Path, into: Path, count: int = 20) -> Path:
    """The spool files as a crash leaves them: mail committed to the log, never checkpointed."""
    path = directory / "spool.db"
    spool = Spool.open(path)
    try:
        for n in range(count):
            assert (
                await spool.enqueue(message(f"q{n:04d}", b"body line\r\n" * 400), 0.0) is not None
            )
        into.mkdir(parents=True, exist_ok=True)
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            shutil.copy(directory / name, into / name)
    finally:
        spool.close()
    return into / "spool.db"


async def test_a_spool_left_by_a_crash_passes_the_check(tmp_path: Path) -> None:
    copy = await crashed_copy(tmp_path, tmp_path / "copy")
    assert check_spool(copy) is None


async def test_a_log_cut_in_half_is_reported_with_what_is_still_readable(tmp_path: Path) -> None:
    copy = await crashed_copy(tmp_path, tmp_path / "copy")
    wal = copy.with_name("spool.db-wal")
    wal.write_bytes(wal.read_bytes()[: wal.stat().st_size // 2])
    damage = check_spool(copy)
    assert damage is not None
    [finding] = damage.findings
    assert "spool.db-wal" in finding and "cut or overwritten" in finding
    assert damage.readable_entries is not None and damage.readable_entries < 20
    assert "--accept-damaged-spool" in damage.report(copy)


async def test_an_overwritten_log_header_is_reported(tmp_path: Path) -> None:
    copy = await crashed_copy(tmp_path, tmp_path / "copy")
    wal = copy.with_name("spool.db-wal")
    data = bytearray(wal.read_bytes())
    data[:32] = bytes(32)
    wal.write_bytes(bytes(data))
    damage = check_spool(copy)
    assert damage is not None and "header is damaged" in damage.findings[0]


async def test_relay_serve_refuses_a_damaged_spool_naming_what_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_config(tmp_path / "relay", {})
    spool_path = setup.state_dir / "spool.db"
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        spool_path.with_name(name).unlink(missing_ok=True)
    (tmp_path / "live").mkdir()
    await crashed_copy(tmp_path / "live", setup.state_dir)
    wal = spool_path.with_name("spool.db-wal")
    wal.write_bytes(wal.read_bytes()[: wal.stat().st_size // 2])
    umask = os.umask(0o022)
    try:
        status = main(["--config", str(setup.config_path), "serve"])
    finally:
        os.umask(umask)  # main() sets relay's own for the whole process
    err = capsys.readouterr().err
    assert status == 1
    assert "is damaged" in err and "queued entries are readable" in err
    assert wal.stat().st_size > 0  # nothing was reset: the evidence is still there


async def test_told_to_continue_relay_keeps_the_damaged_log_aside_first(tmp_path: Path) -> None:
    copy = await crashed_copy(tmp_path, tmp_path / "copy")
    wal = copy.with_name("spool.db-wal")
    cut = wal.read_bytes()[: wal.stat().st_size // 2]
    wal.write_bytes(cut)
    with pytest.raises(SpoolDamaged):
        verify_spool(copy, accept_damaged=False)
    verify_spool(copy, accept_damaged=True)
    [kept] = copy.parent.glob("spool.db-wal.damaged-*")
    assert kept.read_bytes() == cut and kept.stat().st_mode & 0o777 == 0o600
