"""The SMTP side apps talk to: aiosmtpd protocol, handler policy, session tracker, DATA reading."""

from relay.listener.handler import RelayHandler, Services
from relay.listener.protocol import RelaySMTP
from relay.listener.tracker import SessionTracker

__all__ = ["RelayHandler", "RelaySMTP", "Services", "SessionTracker"]
