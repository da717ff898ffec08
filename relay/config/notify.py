"""The notify section of the config file: who tells users their upstream login stopped working."""

from __future__ import annotations

import re

from relay.config.model import NotifyConfig
from relay.config.reader import Reader, Section, field_keys, or_default

# The same rules as `relay user add` applies to logins and addresses (relay.cli.common).
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_ADDRESS = re.compile(
    r"[^\s\x00-\x1f\x7f@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)
SHORTEST_INTERVAL = 60.0  # a notice a minute is already a flood for a person


def notify_config(reader: Reader, top: Section) -> NotifyConfig:
    """The notify section, checked: a login, a plain address, a sensible interval."""
    s = reader.child(top, "notify", field_keys(NotifyConfig))
    default = NotifyConfig()
    account = reader.text(s, "account")
    if account is not None and not _LOGIN.fullmatch(account):
        reader.fail(
            s.key("account"),
            f"expected the login of a relay user (letters, digits and . _ @ + -), got {account!r}",
        )
        account = None
    admin = reader.text(s, "admin")
    if admin is not None and not _ADDRESS.fullmatch(admin):
        reader.fail(s.key("admin"), f"expected a plain address like it@example.org, got {admin!r}")
        admin = None
    interval = or_default(reader.seconds(s, "interval"), default.interval)
    if interval < SHORTEST_INTERVAL:
        reader.fail(
            s.key("interval"),
            f"must be at least {SHORTEST_INTERVAL:.0f} seconds (86400, a day, by default), "
            f"got {interval:g}",
        )
        interval = default.interval
    return NotifyConfig(account=account, admin=admin, interval=interval)
