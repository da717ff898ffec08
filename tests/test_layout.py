"""The package layout: rooms that import on their own, faces that hold, rules that bite."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import relay
import relay.cli.command

ROOT = Path(__file__).resolve().parent.parent
ROOMS = (
    *("listener", "queue", "upstream", "sent", "oauth"),
    *("check", "providers", "config", "state", "cli", "ops", "web", "renewal"),
)
MODULE_LINE_LIMIT = 420  # "about 400": a module past it is doing two things


def relay_modules() -> list[str]:
    found = pkgutil.walk_packages(relay.__path__, "relay.")
    return sorted(module.name for module in found if module.name != "relay.__main__")


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    # A package face that re-exports too much makes an import cycle that only shows when a
    # module is the first of relay's to be imported; each gets its turn here.
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for key in [k for k in sys.modules if k == 'relay' or k.startswith('relay.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {error!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    modules = relay_modules()
    result = subprocess.run(
        [sys.executable, "-c", script, *modules], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    assert len(modules) > 60


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_is_for_and_its_face_names_real_things(room: str) -> None:
    package = importlib.import_module(f"relay.{room}")
    assert package.__doc__ is not None and len(package.__doc__.splitlines()) == 1
    exported = package.__all__
    assert exported, f"relay.{room} re-exports nothing"
    for name in exported:
        value = getattr(package, name)
        assert getattr(value, "__module__", f"relay.{room}").startswith(f"relay.{room}")


def test_the_relay_command_is_the_cli_main() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="relay")
    assert script.load() is relay.cli.command.main


def test_no_module_is_much_over_four_hundred_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "relay").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MODULE_LINE_LIMIT
    }
    assert long == {}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", command],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_import_rules_hold_for_the_tree_as_it_is(tmp_path: Path) -> None:
    tree = copy_of_the_package(tmp_path)
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "broken_rule"),
    [
        (
            "listener/wire.py",
            "from relay.upstream.pool import UpstreamPool",
            "The listener hands mail to the queue, never to upstream",
        ),
        ("policy.py", "import sqlite3", "Policy, the domain records and the message fix-ups"),
        (
            "cli/status.py",
            "from relay.queue.statements import select_stats",
            "Only the queue touches the spool's SQL",
        ),
        ("state/keys.py", "from relay.queue.spool import Spool", "Rooms depend downwards"),
    ],
)
def test_a_wrong_arrow_between_rooms_fails_the_import_rules(
    tmp_path: Path, module: str, bad_import: str, broken_rule: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    target = tree / "relay" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{broken_rule}" in result.stdout
    assert "BROKEN" in result.stdout


def copy_of_the_package(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "relay", tree / "relay", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree
