"""What the listener's sessions share: the tracker of open sessions and the command table."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import TYPE_CHECKING, Any

from relay.config.model import LimitsConfig
from relay.errors import PolicyRejection
from relay.listener.dataread import DataBudget
from relay.policy import connection_refusal

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

    def refusal_for(self, transport: Any) -> PolicyRejection | None:
        """Why a new connection must be turned away, if it must."""
        address = peer_address(transport)
        return connection_refusal(
            len(self.sessions),
            0 if self._is_exempt(address) else self.per_address[address],
            self._limits.max_connections,
            self._limits.max_connections_per_ip,
        )

    def _is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack listener
        return any(ip in network for network in self._exempt)

    def add(self, session: RelaySMTP) -> None:
        """Remember an open session."""
        self.sessions.add(session)
        self.per_address[session.peer_address] += 1
        self.all_closed.clear()

    def discard(self, session: RelaySMTP) -> None:
        """Forget a closed session."""
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
    """The IP address of a transport's peer."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else "unknown"
