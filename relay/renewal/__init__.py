"""Renewal without the admin: a user whose login stopped working gets a fresh link."""

from relay.renewal.notifier import RenewalNotices, is_due
from relay.renewal.routing import Route, route_for
from relay.renewal.trouble import Reason, Trouble, trouble_of

__all__ = ["Reason", "RenewalNotices", "Route", "Trouble", "is_due", "route_for", "trouble_of"]
