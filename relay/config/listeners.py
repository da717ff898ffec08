"""The listener keys for mail without AUTH: the sendmail socket's Unix users, trusted peers."""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType

import yaml

from relay.config.model import ListenerConfig
from relay.config.reader import Reader, Section, join_path, plain, shown
from relay.errors import ConfigError

# Where `relay sendmail` looks when it cannot read the config (systemd: RuntimeDirectory=relay).
DEFAULT_SOCKET = Path("/run/relay/relay.sock")
SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes on Linux, the terminating NUL included
# Keys that mean something only on an address-and-port listener, or only on a socket one.
TCP_ONLY = ("address", "port", "tls_cert", "tls_key", "sender_mapped", "users", "user")
TCP_ONLY_ALSO = ("trusted_peers",)
SOCKET_ONLY = ("unix_users",)


def with_entry(reader: Reader, s: Section, listener: ListenerConfig) -> ListenerConfig:
    """The listener with its socket, Unix users, sender mapping and trusted peers read."""
    socket_path = reader.path(s, "socket")
    if socket_path is not None:
        return _socket_listener(reader, s, listener, socket_path)
    for key in SOCKET_ONLY:
        if s.get(key):
            reader.fail(s.key(key), "applies only to a listener with a socket")
    sender_mapped = reader.boolean(s, "sender_mapped") or False
    user = reader.text(s, "user")
    users = _logins(reader, s, "users")
    if user is not None and sender_mapped:
        why = "a listener serves one user or lets the sender choose (sender_mapped), not both"
        reader.fail(s.key("user"), why)
    if users and not sender_mapped:
        reader.fail(s.key("users"), "applies only with sender_mapped: true")
    peers = reader.networks(s, "trusted_peers", allow_empty=False)
    if peers is not None and not (sender_mapped or user is not None):
        reader.fail(s.key("trusted_peers"), "applies only with sender_mapped: true or user")
    return replace(
        listener,
        sender_mapped=sender_mapped,
        user=user,
        users=users,
        trusted_peers=listener.trusted_peers if peers is None else peers,
    )


def _socket_listener(
    reader: Reader, s: Section, listener: ListenerConfig, path: Path
) -> ListenerConfig:
    for key in TCP_ONLY + TCP_ONLY_ALSO:
        if s.get(key) is not None:
            why = "applies only to an address and port listener, not to one with a socket"
            reader.fail(s.key(key), why)
    if len(str(path).encode()) > SOCKET_PATH_BYTES:
        why = f"{path} is too long for a Unix socket (at most {SOCKET_PATH_BYTES} bytes)"
        reader.fail(s.key("socket"), why)
    return replace(listener, socket=path, unix_users=_unix_users(reader, s))


def _unix_users(reader: Reader, s: Section) -> MappingProxyType[str, str]:
    """unix_users: Unix user (name or uid) -> relay login, one relay user per Unix user."""
    value = s.get("unix_users")
    path = s.key("unix_users")
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        example = "{www-data: alice, root: ops}"
        reader.fail(path, f"expected a mapping of Unix user to relay user like {example}")
        return MappingProxyType({})
    found: dict[str, str] = {}
    by_uid: dict[int, tuple[str, str]] = {}  # uid -> (key path, login)
    for key, login in value.items():
        where = join_path(path, str(key))
        uid = _uid(reader, key, where)
        if not isinstance(login, str) or not login.strip() or not login.isprintable():
            reader.fail(where, f"expected the login of a relay user, got {shown(login)}")
            continue
        if uid is None:
            continue
        earlier = by_uid.get(uid)
        if earlier is not None and earlier[1] != login:
            reader.fail(
                where,
                f"uid {uid} is already mapped to relay user {earlier[1]!r} by {earlier[0]}: "
                "one Unix user sends as one relay user",
            )
            continue
        by_uid[uid] = (where, login)
        found[str(key)] = login
    return MappingProxyType(found)


def _uid(reader: Reader, key: object, where: str) -> int | None:
    """The uid a unix_users key names (a user name or a number), if this machine has it."""
    try:
        if isinstance(key, int) and not isinstance(key, bool):
            return pwd.getpwuid(key).pw_uid
        if isinstance(key, str) and key.isdigit():
            return pwd.getpwuid(int(key)).pw_uid
        if isinstance(key, str) and key:
            return pwd.getpwnam(key).pw_uid
    except (KeyError, OverflowError):
        reader.fail(where, f"no Unix user {key!r} on this machine (see getent passwd)")
        return None
    reader.fail(where, f"expected a Unix user name or uid, got {shown(key)}")
    return None


def _logins(reader: Reader, s: Section, name: str) -> tuple[str, ...]:
    value = s.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        reader.fail(s.key(name), f"expected a list of relay logins, got {shown(value)}")
        return ()
    return tuple(value)


def one_socket(reader: Reader, listeners: Sequence[ListenerConfig]) -> None:
    """At most one socket listener: it is the one `relay sendmail` finds."""
    sockets = [index for index, listener in enumerate(listeners) if listener.socket is not None]
    for index in sockets[1:]:
        why = f"only one listener may have a socket (listen[{sockets[0]}] has one)"
        reader.fail(f"listen[{index}].socket", why)


def rendered_listener(listener: ListenerConfig) -> dict[str, object]:
    """A listener as YAML data, with only the keys that apply to its kind."""
    document = {f.name: plain(getattr(listener, f.name)) for f in fields(listener)}
    if listener.socket is not None:
        return {k: v for k, v in document.items() if k not in TCP_ONLY + TCP_ONLY_ALSO}
    dropped = SOCKET_ONLY + ("socket",) + (() if listener.without_auth else TCP_ONLY_ALSO)
    return {k: v for k, v in document.items() if k not in dropped}


def sendmail_socket(config_path: Path) -> Path:
    """The socket `relay sendmail` hands mail to, as the config file names it.

    Only this key is read, without validating the rest: a caller such as www-data may not
    read the certificate files the daemon's config names, and need not. A config it cannot
    read at all leaves the default path.
    """
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError:
        return DEFAULT_SOCKET
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(config_path, [("(file)", f"cannot read: {error}")]) from None
    listen = data.get("listen") if isinstance(data, dict) else None
    for item in listen if isinstance(listen, list) else []:
        value = item.get("socket") if isinstance(item, dict) else None
        if isinstance(value, str) and value:
            return config_path.absolute().parent / value
    why = "no listener has a socket: add one like `- socket: /run/relay/relay.sock` to listen"
    raise ConfigError(config_path, [("listen", why)])
