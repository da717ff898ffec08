"""Reading typed values out of parsed YAML, collecting every problem under its key path."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from relay.config.addresses import is_ip

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The key path used for problems with the file as a whole rather than one key in it.
FILE_PROBLEM = "(file)"
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


@dataclass(frozen=True, slots=True)
class Section:
    """The known keys of one mapping in the file, and its key path."""

    path: str
    values: Mapping[object, object]

    def key(self, name: str) -> str:
        """The full key path of one key in this section."""
        return join_path(self.path, name)

    def get(self, name: str) -> object:
        """The raw value of a key; None when absent or empty."""
        return self.values.get(name)


class Reader:
    """Reads typed values out of parsed YAML, collecting every problem under its key path."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, why: str) -> None:
        """Record one problem."""
        self.problems.append((path, why))

    def section(self, value: object, path: str, keys: Sequence[str]) -> Section:
        """The mapping at path, keeping known keys and reporting the rest."""
        if value is None:
            return Section(path, {})
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {shown(value)}")
            return Section(path, {})
        for key in value:
            if key not in keys:
                hint = did_you_mean(key, keys) or f" (known keys: {', '.join(keys)})"
                self.fail(join_path(path, str(key)), f"unknown key{hint}")
        return Section(path, {key: item for key, item in value.items() if key in keys})

    def child(self, parent: Section, name: str, keys: Sequence[str]) -> Section:
        """The mapping under one key of a section."""
        return self.section(parent.get(name), parent.key(name), keys)

    def integer(self, s: Section, name: str, low: int = 1, high: int | None = None) -> int | None:
        """An integer in [low, high]; booleans are not integers."""
        value = s.get(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value and (high is None or value <= high):
                return value
        wanted = f"an integer {low}-{high}" if high is not None else "a positive integer"
        self.fail(s.key(name), f"expected {wanted}, got {shown(value)}")
        return None

    def seconds(self, s: Section, name: str, allow_zero: bool = False) -> float | None:
        """A finite positive (or, if allowed, zero) number of seconds."""
        value = s.get(name)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer too large for a float is no number of seconds
                number = math.inf
            if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
                return number
        sign = "non-negative" if allow_zero else "positive"
        self.fail(s.key(name), f"expected a {sign} number of seconds, got {shown(value)}")
        return None

    def boolean(self, s: Section, name: str) -> bool | None:
        """true or false (PyYAML also reads yes/no/on/off as these)."""
        value = s.get(name)
        if value is None or isinstance(value, bool):
            return value
        self.fail(s.key(name), f"expected true or false, got {shown(value)}")
        return None

    def one_of(self, s: Section, name: str, options: Sequence[str]) -> str | None:
        """One of a fixed set of words."""
        value = s.get(name)
        if value is None or value in options:
            return None if value is None else str(value)
        hint = did_you_mean(value, options)
        self.fail(s.key(name), f"expected one of {', '.join(options)}, got {shown(value)}{hint}")
        return None

    def choice(self, s: Section, name: str, kind: type[E]) -> E | None:
        """A member of an enum, named by its value."""
        word = self.one_of(s, name, [str(member.value) for member in kind])
        return None if word is None else kind(word)

    def text(self, s: Section, name: str) -> str | None:
        """A non-empty single line of text."""
        value = s.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.strip() and value.isprintable():
            return value
        self.fail(s.key(name), f"expected a non-empty line of text, got {shown(value)}")
        return None

    def host(self, s: Section, name: str) -> str | None:
        """A host name or IP address, without scheme or port."""
        value = self.text(s, name)
        if value is None or _HOST.fullmatch(value) or is_ip(value):
            return value
        why = "expected a host name or IP address (no scheme, no port)"
        self.fail(s.key(name), f"{why}, got {value!r}")
        return None

    def networks(
        self, s: Section, name: str, *, allow_empty: bool = True
    ) -> tuple[str, ...] | None:
        """A list of networks such as 127.0.0.0/8 or ::1 (a bare address is one host)."""
        value = s.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not (value or allow_empty):
            self.fail(
                s.key(name), f"expected a list of networks like [127.0.0.0/8], got {shown(value)}"
            )
            return None
        networks = []
        for index, item in enumerate(value):
            try:
                networks.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError:
                why = f"expected a network like 10.0.0.0/8 or an address, got {shown(item)}"
                self.fail(f"{s.key(name)}[{index}]", why)
        return tuple(networks)

    def path(self, s: Section, name: str) -> Path | None:
        """A path; a relative one is taken from the config file's directory."""
        value = self.text(s, name)
        return None if value is None else self.base_dir / value

    def readable_file(self, s: Section, name: str) -> Path | None:
        """A path to an existing file this process can read."""
        path = self.path(s, name)
        if path is None:
            return None
        try:
            if not path.exists():
                self.fail(s.key(name), f"file not found: {path}")
            elif not path.is_file():
                self.fail(s.key(name), f"not a regular file: {path}")
            elif not os.access(path, os.R_OK):
                self.fail(s.key(name), f"file not readable by this user: {path}")
            else:
                return path
        except OSError as error:  # e.g. a path longer than the system allows
            self.fail(s.key(name), f"cannot use this path: {error.strerror or error}")
        return None


def syntax_problem(error: yaml.YAMLError) -> tuple[str, str]:
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return (FILE_PROBLEM, f"YAML syntax error: {error}")
    mark = error.problem_mark
    context = f" ({error.context})" if error.context else ""
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return (where, f"YAML syntax error: {error.problem}{context}")


def duplicate_keys(root: yaml.Node | None) -> list[tuple[str, str]]:
    """Keys given twice in one mapping: YAML silently keeps the last one, relay refuses."""
    found: list[tuple[int, str]] = []
    pending: list[tuple[yaml.Node | None, str]] = [(root, "")]
    seen = set()
    while pending:
        node, path = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                where = join_path(path, str(key.value))
                if isinstance(key, yaml.ScalarNode) and key.value in first:
                    why = f"duplicate key {key.value!r} (first on line {first[key.value]})"
                    found.append((line, f"{why} at {where}"))
                elif isinstance(key, yaml.ScalarNode):
                    first[key.value] = line
                pending.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return [(f"line {line}", why) for line, why in sorted(found)]


def plain(value: object) -> object:
    """A value as plain YAML data: dataclasses as mappings, enums and paths as strings."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


def field_keys(kind: type[DataclassInstance], *internal: str) -> tuple[str, ...]:
    """The keys of a config section: its dataclass's field names, less the internal ones."""
    return tuple(f.name for f in dataclasses.fields(kind) if f.name not in internal)


def or_default(value: T | None, default: T) -> T:
    return default if value is None else value


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def did_you_mean(word: object, options: Iterable[str]) -> str:
    matches = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def shown(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
