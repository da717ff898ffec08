"""The config's delivery settings: reply modes, session ceilings, paces, and per-user overrides."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from relay.config.model import REPLY_MODES, ProviderConfig, RelayConfig, UserDelivery
from relay.config.reader import Reader, Section, field_keys, join_path, shown
from relay.providers.presets import Pace

PACE_KEYS = field_keys(Pace)
_PACE_EXAMPLE = "{per_minute: 30, per_day: 2000, recipients_per_day: 10000}"


def pace_setting(reader: Reader, parent: Section, base: Pace) -> Pace:
    """parent.pace, each rate given replacing the base's (a preset's); the base if absent."""
    if parent.get("pace") is None:
        return base
    if not isinstance(parent.get("pace"), dict):
        why = f"expected a mapping like {_PACE_EXAMPLE}, got {shown(parent.get('pace'))}"
        reader.fail(parent.key("pace"), why)
        return base
    s = reader.child(parent, "pace", PACE_KEYS)
    return Pace(
        per_minute=_rate(reader, s, "per_minute", base.per_minute),
        per_day=_rate(reader, s, "per_day", base.per_day),
        recipients_per_day=_rate(reader, s, "recipients_per_day", base.recipients_per_day),
    )


def _rate(reader: Reader, s: Section, name: str, base: int | None) -> int | None:
    value = reader.integer(s, name, low=1)  # 0 or less is an error naming the key
    return base if value is None else value


def max_connections(reader: Reader, s: Section) -> int | None:
    """A session ceiling: at least 1."""
    return reader.integer(s, "max_connections", low=1)


def reply_mode(reader: Reader, s: Section) -> str | None:
    """spool or verdict, or None when not set."""
    return reader.one_of(s, "reply", REPLY_MODES)


def user_settings(reader: Reader, top: Section) -> Mapping[str, UserDelivery]:
    """The users section: per login, the delivery settings that differ from everyone's."""
    value = top.get("users")
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        example = "{alice: {reply: verdict, max_connections: 2, pace: {per_minute: 10}}}"
        reader.fail("users", f"expected a mapping of logins like {example}, got {shown(value)}")
        return MappingProxyType({})
    users: dict[str, UserDelivery] = {}
    for login, item in value.items():
        s = reader.section(item, join_path("users", str(login)), field_keys(UserDelivery))
        pace = pace_setting(reader, s, Pace()) if s.get("pace") is not None else None
        users[str(login)] = UserDelivery(
            reply=reply_mode(reader, s), max_connections=max_connections(reader, s), pace=pace
        )
    return MappingProxyType(users)


def session_ceiling(config: RelayConfig, login: str, provider: ProviderConfig) -> int:
    """The most sessions a user may hold at their provider: theirs, the provider's, the default."""
    own = config.users.get(login)
    if own is not None and own.max_connections is not None:
        return own.max_connections
    return provider.max_connections or config.queue.max_connections_per_user


def pace_for(config: RelayConfig, login: str, provider: ProviderConfig) -> Pace:
    """How fast a user may send: their own pace, else their provider's."""
    own = config.users.get(login)
    return own.pace if own is not None and own.pace is not None else provider.pace
