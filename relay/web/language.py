"""The pages' words: one catalogue per language (messages/*.yaml), chosen by Accept-Language."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import yaml

DEFAULT_LANGUAGE = "en"
# RFC 9110 §12.5.4: language-range [ ";q=" qvalue ], comma separated.
_RANGE = re.compile(r"\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*")

Entry = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """One language's strings; a key it lacks falls back to English."""

    language: str
    entries: Mapping[str, Entry]
    fallback: Mapping[str, Entry]

    def text(self, key: str, **fields: object) -> str:
        """The string for key with its {fields} filled in."""
        entry = self.entries.get(key, self.fallback.get(key, key))
        text = entry if isinstance(entry, str) else " ".join(entry)
        return text.format(**fields) if fields else text

    def items(self, key: str) -> tuple[str, ...]:
        """A list entry (a provider's steps); empty when there is none."""
        entry = self.entries.get(key, self.fallback.get(key, ()))
        return (entry,) if isinstance(entry, str) else entry

    def has(self, key: str) -> bool:
        """Whether key is in this catalogue or the fallback."""
        return key in self.entries or key in self.fallback


class Catalogues:
    """Every shipped catalogue, loaded once, and the choice among them for a request."""

    def __init__(self, catalogues: Mapping[str, Mapping[str, Entry]]) -> None:
        english = catalogues[DEFAULT_LANGUAGE]
        self._by_tag = {
            tag.lower(): Catalogue(tag, entries, english) for tag, entries in catalogues.items()
        }

    @classmethod
    def shipped(cls) -> Catalogues:
        """The catalogues in relay/web/messages."""
        found: dict[str, Mapping[str, Entry]] = {}
        for item in resources.files("relay.web").joinpath("messages").iterdir():
            if item.name.endswith(".yaml"):
                found[item.name.removesuffix(".yaml")] = load_entries(item.read_text("utf-8"))
        return cls(found)

    @property
    def languages(self) -> tuple[str, ...]:
        """The language tags there are catalogues for."""
        return tuple(catalogue.language for catalogue in self._by_tag.values())

    def get(self, tag: str) -> Catalogue:
        """The catalogue for a tag such as pt-BR."""
        return self._by_tag[tag.lower()]

    def choose(self, accept_language: str | None) -> Catalogue:
        """The best catalogue for an Accept-Language header; English when none fits."""
        for wanted in preferred_languages(accept_language or ""):
            if wanted in self._by_tag:
                return self._by_tag[wanted]
            primary = wanted.split("-", 1)[0]
            # pt-PT or plain pt still reads Brazilian Portuguese better than English.
            for tag, catalogue in self._by_tag.items():
                if tag.split("-", 1)[0] == primary:
                    return catalogue
        return self._by_tag[DEFAULT_LANGUAGE]


def preferred_languages(header: str) -> list[str]:
    """The header's language ranges, most wanted first, lower case, q=0 left out."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:32]):
        match = _RANGE.fullmatch(part)
        if match is None:
            continue
        try:
            quality = float(match.group(2)) if match.group(2) else 1.0
        except ValueError:
            continue
        if quality > 0 and match.group(1) != "*":
            ranked.append((-quality, index, match.group(1).lower()))
    return [tag for _, _, tag in sorted(ranked)]


def load_entries(text: str) -> dict[str, Entry]:
    """A catalogue file's keys: strings, or lists of strings (steps)."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a catalogue is a mapping of keys to strings")
    entries: dict[str, Entry] = {}
    for key, value in data.items():
        if isinstance(value, str):
            entries[str(key)] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            entries[str(key)] = tuple(value)
        else:
            raise ValueError(f"catalogue key {key!r}: expected text or a list of texts")
    return entries
