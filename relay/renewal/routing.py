"""Whose mailbox sends a renewal notice, and to whom."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.config.model import NotifyConfig
from relay.errors import NoticeUndeliverable
from relay.model import User


@dataclass(frozen=True, slots=True)
class Route:
    """A notice's way: sent through sender's own mailbox to recipient."""

    sender: User
    recipient: str
    to_admin: bool  # the admin gets it on the user's behalf


def route_for(notify: NotifyConfig, user: User, users: Sequence[User]) -> Route:
    """notify.account to the user; else the admin's own relay user to the admin."""
    why = "neither notify.account nor notify.admin is set"
    if notify.account is not None:
        account = next((u for u in users if u.login == notify.account), None)
        if account is None:
            why = f"notify.account {notify.account!r} is no relay user"
        elif not account.enabled:
            why = f"notify.account {notify.account!r} is disabled"
        elif account.login == user.login:
            # Its own mailbox is the one that stopped working: only the admin can be told.
            why = f"{user.login} is notify.account itself"
        else:
            return Route(account, user.email, to_admin=False)
    if notify.admin is None:
        raise NoticeUndeliverable(f"{why}, and notify.admin is not set")
    wanted = notify.admin.lower()
    admin = next(
        (
            u
            for u in users
            if u.enabled
            and u.login != user.login
            and wanted in (address.lower() for address in (u.email, *u.aliases))
        ),
        None,
    )
    if admin is None:
        raise NoticeUndeliverable(
            f"{why}, and no other enabled relay user has notify.admin's address {notify.admin} "
            "to send from"
        )
    return Route(admin, notify.admin, to_admin=True)
