"""Mail without AUTH: the sendmail socket's callers by their Unix user, trusted peers by address.

A caller of the Unix socket is logged in by the kernel's word (SO_PEERCRED) as the relay user
its Unix user maps to; on a sender-mapped listener the envelope sender picks the user, and on a
one-user listener every mail is that user's. From then on the mail takes the path AUTH mail
takes: the same sender rules, limits, rates, fix-ups, queue and Sent copy.
"""

from __future__ import annotations

import ipaddress
import logging
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Session

from relay.config.model import ListenerConfig
from relay.errors import PolicyRejection, RelayError
from relay.listener.protocol import RelaySMTP
from relay.listener.tracker import UNIX_PEER, peer_address
from relay.model import User
from relay.policy import (
    listener_user_refusal,
    local_caller_refusal,
    local_sender,
    sender_owner,
    unknown_sender_refusal,
)

if TYPE_CHECKING:
    from relay.listener.handler import Services

logger = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred (socket(7), SO_PEERCRED): pid, uid, gid


@dataclass(frozen=True, slots=True)
class Caller:
    """How a session's mail finds its user when it does not AUTH."""

    via: str  # smtp (AUTH as usual), sendmail (the socket), sender (sender-mapped), user
    trusted: bool  # may send without AUTH
    user: User | None = None  # fixed by the connection: the socket's mapped Unix user
    fields: str = ""  # key=value pairs for the session's log lines


PLAIN = Caller("smtp", trusted=False)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket, as the kernel recorded it at connect(2)."""

    pid: int
    uid: int
    gid: int

    @property
    def unix_user(self) -> str:
        """The uid's user name on this machine, or the number when it has none."""
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def peer_credentials(transport: Any) -> PeerCredentials | None:
    """The credentials of a Unix-socket transport's peer; None for any other transport."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


class EntrySMTP(RelaySMTP):
    """A session that may be logged in by its connection: Unix peer or trusted address."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.caller = PLAIN

    def connection_made(self, transport: Any) -> None:
        first = self.transport is None
        if first:
            self.caller, refusal = identify(self.listener, transport, self.services)
            if refusal is not None:
                # Before the greeting, as for too many connections: nothing can be queued.
                self.refused = True
                line = refusal.reply.line
                logger.warning("session.refused%s reply=%r", self.caller.fields, line)
                transport.write(line.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if not (first and self.caller.trusted) or self.refused or self.session is None:
            return
        if self.caller.user is not None:
            self.session.authenticated = True
            _send_as(self.session, self.caller.user)
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
            self.auth_deadline = None
        self.tracker.authenticated(self)
        logger.info("session.caller session=%s%s", self.session_id, self.caller.fields)

    @property
    def peer_address(self) -> str:
        """The client's IP address, or the one name all the socket's callers share."""
        return UNIX_PEER if self.listener.socket is not None else super().peer_address

    async def check_auth_needed(self, caller_method: str) -> bool:
        """aiosmtpd's 530 before AUTH, except for a caller the listener lets in without it."""
        return not self.caller.trusted and await super().check_auth_needed(caller_method)


def identify(
    listener: ListenerConfig, transport: Any, services: Services
) -> tuple[Caller, PolicyRejection | None]:
    """Who a new connection is, and why it must be turned away if it must."""
    if listener.socket is not None:
        return _socket_caller(listener, transport, services)
    if not listener.without_auth:
        return PLAIN, None
    address = peer_address(transport)
    if not _is_in(address, listener.trusted_peers):
        return PLAIN, None  # an ordinary session: 530 until AUTH
    via = "sender" if listener.sender_mapped else "user"
    return Caller(via, trusted=True, fields=f" via={via} peer={address}"), None


def _socket_caller(
    listener: ListenerConfig, transport: Any, services: Services
) -> tuple[Caller, PolicyRejection | None]:
    credentials = peer_credentials(transport)
    if credentials is None:
        raise RelayError("a Unix socket listener got a connection that is not a Unix socket")
    name = credentials.unix_user
    login = listener.unix_users.get(name) or listener.unix_users.get(str(credentials.uid))
    user = services.store.find_user(login) if login is not None else None
    fields = (
        f" via=sendmail uid={credentials.uid} pid={credentials.pid} unix_user={name}"
        f" user={login or '-'}"
    )
    refusal = local_caller_refusal(name, credentials.uid, login, user, _map_key(listener, services))
    if refusal is not None:
        return Caller("sendmail", trusted=False, fields=fields), refusal
    return Caller("sendmail", trusted=True, user=user, fields=fields), None


def _map_key(listener: ListenerConfig, services: Services) -> str:
    """The key path of the socket listener's unix_users, for the refusal's how-to."""
    for index, configured in enumerate(services.config.listen):
        if configured.socket == listener.socket:
            return f"listen[{index}].unix_users"
    return "listen[].unix_users"


def _is_in(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack listener
    return any(ip in ipaddress.ip_network(network) for network in networks)


def pick_user(
    server: RelaySMTP, session: Session, address: str
) -> tuple[User, str] | PolicyRejection:
    """The user a transaction sends as and its sender as relay takes it, or why neither."""
    caller = server.caller if isinstance(server, EntrySMTP) else PLAIN
    user = session.auth_data
    if session.authenticated and isinstance(user, User):
        # Logged in by AUTH, or by the socket's peer: only the latter writes local names.
        return user, local_sender(address, user) if caller.via == "sendmail" else address
    if not caller.trusted:
        # aiosmtpd answers 530 to MAIL, RCPT and DATA before AUTH; reaching here is a bug.
        raise RelayError("session has no authenticated user")
    _send_as(session, None)
    store = server.services.store
    if server.listener.user is not None:
        login = server.listener.user
        found = store.find_user(login)
        if found is None or not found.enabled:
            return listener_user_refusal(login, found)
        _send_as(session, found)
        return found, local_sender(address, found)
    providers = server.config.providers
    serves = set(server.listener.users)
    candidates = [
        (u, providers[u.provider].preset if u.provider in providers else None)
        for u in store.list_users()
        if u.enabled and (not serves or u.login in serves)
    ]
    owner = sender_owner(address, candidates)
    if owner is None:
        known = sorted({a for u, _ in candidates for a in u.sender_addresses})
        return unknown_sender_refusal(address, known)
    _send_as(session, owner)
    logger.debug("mail.user session=%s via=sender user=%s", server.session_id, owner.login)
    return owner, address


def local_names(server: RelaySMTP, session: Session) -> bool:
    """Whether the connection fixed the transaction's user, so bare local names are theirs."""
    caller = server.caller if isinstance(server, EntrySMTP) else PLAIN
    one_user = caller.via == "user" and caller.trusted and not session.authenticated
    return caller.via == "sendmail" or one_user


def _send_as(session: Session, user: User | None) -> None:
    """Make the session's mail user's, where AUTH keeps its result (auth_data)."""
    # aiosmtpd annotates auth_data as None, though AuthResult.auth_data lands there.
    session.auth_data = user  # type: ignore[assignment]
