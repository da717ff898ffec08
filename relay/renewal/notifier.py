"""Sends a renewal notice when delivery finds a user's login dead: once per interval per user."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from relay.config.live import LiveConfig
from relay.config.model import RelayConfig
from relay.errors import NoticeUndeliverable, RelayError
from relay.model import User
from relay.queue.records import NewMessage
from relay.renewal.notice import Link, NoticeFacts, notice_message
from relay.renewal.routing import Route, route_for
from relay.renewal.trouble import Trouble, trouble_of
from relay.state.notices import NoticeRecord
from relay.state.store import Store
from relay.state.writer import StoreWriter, write_to

logger = logging.getLogger(__name__)


def is_due(last: NoticeRecord | None, now: float, interval: float) -> bool:
    """True when a user told at last (or never) may be told again now."""
    return last is None or now - last.notified_at >= interval


class RenewalNotices:
    """Turns failed attempts into renewal notices, queued like any mail the user's app sends."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        submit: Callable[[NewMessage], Awaitable[None]],
        writer: StoreWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        self._store = store
        self._submit = submit
        self._writer = writer
        self._clock = clock
        # Logins whose notice is being written: a second failure meanwhile must not send another.
        self._sending: set[str] = set()

    async def observe(self, login: str, error: RelayError) -> None:
        """An attempt as login failed with error: tell them if it means their login is dead."""
        try:
            await self._observe(login, error)
        except NoticeUndeliverable as why:
            logger.warning("renewal.undeliverable user=%s why=%r", login, str(why))
        except Exception:  # noqa: BLE001  a notice must never break the delivery that found it
            logger.exception("renewal.failed user=%s", login)

    async def _observe(self, login: str, error: RelayError) -> None:
        config = self._live.current
        if not config.notify.enabled:
            return
        user = self._store.find_user(login)
        if user is None:
            return
        trouble = trouble_of(user, error)
        if trouble is None:
            return
        now = self._clock()
        last = self._store.notices.last(login)
        if login in self._sending or not is_due(last, now, config.notify.interval):
            logger.debug(
                "renewal.suppressed user=%s reason=%s last_notified=%s interval=%.0fs",
                login,
                trouble.reason.value,
                "being-sent" if last is None else _utc(last.notified_at),
                config.notify.interval,
            )
            return
        route = route_for(config.notify, user, self._store.list_users())
        self._sending.add(login)
        try:
            await self._send(config, user, trouble, route, now)
        finally:
            self._sending.discard(login)

    async def _send(
        self, config: RelayConfig, user: User, trouble: Trouble, route: Route, now: float
    ) -> None:
        link = await self._link(config, user.login, now)
        notify = config.notify
        facts = NoticeFacts(user, trouble, route, link, now, notify.admin, notify.interval)
        notice_id = secrets.token_hex(8)
        data = notice_message(facts, f"<renewal-{notice_id}@{config.hostname}>")
        await self._submit(
            NewMessage(
                id=notice_id,
                login=route.sender.login,
                sender=route.sender.email,
                message_id=f"<renewal-{notice_id}@{config.hostname}>",
                recipients=(route.recipient,),
                upstream_data=data,
                body_offset=data.index(b"\r\n\r\n") + 4,
                sent_header=b"",
                received_at=now,
                # Written by relay, not by an app: no Sent copy, and never bounced (as a DSN).
                is_bounce=True,
            )
        )
        record = NoticeRecord(
            user.login, now, trouble.reason.value, trouble.detail, route.recipient
        )
        await write_to(self._store, self._writer, lambda store: store.notices.record(record))
        logger.info(
            "renewal.notified user=%s reason=%s to=%s via=%s link=%s id=%s",
            user.login,
            trouble.reason.value,
            route.recipient,
            route.sender.login,
            "yes" if link is not None else "no (web pages off: ask the admin)",
            notice_id,
        )

    async def _link(self, config: RelayConfig, login: str, now: float) -> Link | None:
        """A fresh one-time link to the user's page, where the pages are on and reachable."""
        web = config.web
        if not web.enabled or web.public_url is None:
            return None
        lifetime = web.invite_lifetime
        token = await write_to(
            self._store, self._writer, lambda store: store.invitations.issue(login, lifetime, now)
        )
        return Link(f"{web.public_url}/enroll/{token.reveal()}", now + lifetime)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
