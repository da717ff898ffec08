"""What the listener's sessions share: the tracker of open sessions and the command table."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import TYPE_CHECKING, Any

from relay.config.model import LimitsConfig
from relay.errors import PolicyRejection
from relay.listener.dataread import DataBudget
from relay.policy import (
    Eviction,
    connection_refusal,
    unauthenticated_cap,
    unauthenticated_eviction,
)

if TYPE_CHECKING:
    from relay.listener.protocol import RelaySMTP

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SessionTracker:
    """The open client sessions, so a drain can wait for them and floods can be refused."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = limits
        self._exempt = exempt_networks(limits)
        self.sessions: set[RelaySMTP] = set()
        self.per_address: Counter[str] = Counter()
        # Sessions not yet logged in, per address, oldest first (dicts keep insertion order).
        self.unauthenticated: dict[str, dict[RelaySMTP, None]] = {}
        self.unauthenticated_count = 0
        self.data_budget = DataBudget(limits.max_data_in_memory)
        self.draining = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    @property
    def limits(self) -> LimitsConfig:
        """The limits in force; a reload replaces them."""
        return self._limits

    @limits.setter
    def limits(self, limits: LimitsConfig) -> None:
        self._limits = limits
        self._exempt = exempt_networks(limits)
        self.data_budget.limit = limits.max_data_in_memory

    def admit(self, transport: Any) -> PolicyRejection | None:
        """Why a new connection must be turned away, if it must; else make room for it."""
        address = peer_address(transport)
        limits = self._limits
        refusal = connection_refusal(
            len(self.sessions),
            0 if self.is_exempt(address) else self.per_address[address],
            limits.max_connections,
            limits.max_connections_per_ip,
            unauthenticated=self.unauthenticated_count,
        )
        if refusal is not None:
            return refusal
        # Before AUTH every address counts, loopback too: a session that has not logged in is
        # nobody's app yet, and junk from one address must not take every unauthenticated slot.
        eviction = unauthenticated_eviction(
            len(self.sessions),
            limits.max_connections,
            self.unauthenticated_count,
            len(self.unauthenticated.get(address, ())),
            unauthenticated_cap(limits.max_connections, limits.unauthenticated_share),
            limits.max_connections_per_ip,
        )
        if eviction is Eviction.SAME_ADDRESS:
            self._evict_oldest(address)
        elif eviction is Eviction.BUSIEST_ADDRESS:
            self._evict_oldest(self._busiest())
        return None

    def _busiest(self) -> str:
        """The address with the most unauthenticated sessions (the older, of equals)."""
        return max(
            self.unauthenticated,
            key=lambda address: (
                len(self.unauthenticated[address]),
                -next(iter(self.unauthenticated[address])).opened,
            ),
        )

    def _evict_oldest(self, address: str) -> None:
        waiting = self.unauthenticated.get(address)
        if not waiting:
            return
        oldest = next(iter(waiting))
        self.authenticated(oldest)  # out of the count now: it is closing
        oldest.evict()

    def is_exempt(self, address: str) -> bool:
        """Whether an address is in per_ip_exempt (by default, loopback), or the Unix socket's."""
        if address == UNIX_PEER:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack listener
        return any(ip in network for network in self._exempt)

    def add(self, session: RelaySMTP) -> None:
        """Remember an open session, unauthenticated as every session starts."""
        self.sessions.add(session)
        self.per_address[session.peer_address] += 1
        self.unauthenticated.setdefault(session.peer_address, {})[session] = None
        self.unauthenticated_count += 1
        self.all_closed.clear()

    def authenticated(self, session: RelaySMTP) -> None:
        """Stop counting a session as unauthenticated (it logged in, or it is being closed)."""
        waiting = self.unauthenticated.get(session.peer_address)
        if waiting is not None and session in waiting:
            del waiting[session]
            self.unauthenticated_count -= 1
            if not waiting:
                del self.unauthenticated[session.peer_address]

    def discard(self, session: RelaySMTP) -> None:
        """Forget a closed session."""
        self.authenticated(session)
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_address[session.peer_address] -= 1
            if self.per_address[session.peer_address] <= 0:
                del self.per_address[session.peer_address]
        if not self.sessions:
            self.all_closed.set()


def exempt_networks(limits: LimitsConfig) -> tuple[IPNetwork, ...]:
    """The networks max_connections_per_ip does not count."""
    return tuple(ipaddress.ip_network(network) for network in limits.per_ip_exempt)


def peer_address(transport: Any) -> str:
    """The IP address of a transport's peer; UNIX_PEER for a Unix socket's."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, str | bytes):
        return UNIX_PEER
    return str(peer[0]) if isinstance(peer, tuple) else "unknown"


# The address every caller of the Unix socket shares: each is one local user's program, which
# the per-address limit does not count (as loopback apps under per_ip_exempt).
UNIX_PEER = "local"
