"""`relay check` after the SMTP login: IMAP login, the Sent folder, a test mail and its copy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from relay.check.report import CheckContext, Found, StageFailure, StageSkipped
from relay.errors import SentCopyError, UpstreamError
from relay.message import prepare
from relay.sent.filing import (
    FolderSource,
    SentCopyPlan,
    append_sent_copy,
    find_sent_folder,
    imap_account,
    plan_sent_copy,
    sent_folder_override,
)
from relay.sent.imap import Aborter, ImapAccount, ImapSession, connect
from relay.sent.imapwire import encode_mailbox
from relay.upstream.account import UpstreamAccount, UpstreamTimeouts
from relay.upstream.pool import PoolSettings, UpstreamPool

T = TypeVar("T")
LOGIN_FIX = "relay logs in to IMAP with the SMTP user and password: check both, and IMAP access"
SENT_FIX = "check the account's IMAP access and its Sent folder ('relay user set --sent-folder')"
SEND_FIX = "read the provider's reply: the From address, the recipient or a sending limit"


class MailStages:
    """The stages on the IMAP side, and the test mail sent as delivery sends mail."""

    def __init__(self, context: CheckContext, send_to: str | None) -> None:
        self.context = context
        self.send_to = send_to
        self.plan = plan_sent_copy(context.provider, context.user.sent_copy)
        self.session: ImapSession | None = None
        self.aborter = Aborter()
        self.sent: tuple[bytes, str, float] | None = None  # the Sent copy, Message-ID, sent at

    async def imap_login(self) -> Found:
        """Connect and log in as Sent copies do (relay/sent/imap.py)."""
        account, context = self._account(), self.context
        tls = context.tls.for_ca_file(account.ca_file)
        username = account.username
        try:
            self.session = await self._in_thread(
                connect, account, tls, context.timeout, self.aborter
            )
        except SentCopyError as error:
            summary = f"IMAP {error.step} at {error.server} failed"
            raise StageFailure(summary, error.reply, fix=LOGIN_FIX) from None
        server, capabilities = self.session.server, sorted(self.session.capabilities)
        facts: dict[str, object] = {"server": server, "capabilities": capabilities}
        return Found(f"logged in to {server} as {username}", facts)

    async def sent_folder(self) -> Found:
        """The folder a Sent copy would go to, found as relay/sent/filing.py finds it."""
        self._account()  # skips, saying why, when relay files no copy for this user
        session, user = self._session(), self.context.user
        try:
            mailboxes = await self._in_thread(session.list_mailboxes)
        except SentCopyError as error:
            summary = f"IMAP LIST at {error.server} failed"
            raise StageFailure(summary, error.reply, fix=SENT_FIX) from None
        usable = {mailbox.wire for mailbox in mailboxes if mailbox.selectable}
        override = sent_folder_override(user, self.context.provider)
        if override:
            whose = "the user's --sent-folder" if user.sent_folder else "the provider's sent_folder"
            facts: dict[str, object] = {"folder": override, "found_by": "override"}
            if encode_mailbox(override) in usable:
                return Found(f"'{override}' ({whose}) exists", facts)
            warning = f"'{override}' does not exist yet: relay creates it at the first copy"
            return Found(f"'{override}' ({whose})", facts, (warning,))
        remembered = user.sent_folder_found
        if remembered and encode_mailbox(remembered) in usable:
            facts = {"folder": remembered, "found_by": FolderSource.REMEMBERED.value}
            return Found(f"'{remembered}', found last time", facts)
        found = find_sent_folder(mailboxes)
        if found is None:
            names = [mailbox.name for mailbox in mailboxes]
            raise StageFailure(
                "no Sent folder: none is flagged \\Sent and none has a known name",
                f"folders: {', '.join(names) or '(none)'}",
                fix=f"name it with 'relay user set {user.login} --sent-folder NAME'; "
                "otherwise relay creates 'Sent' at the first copy",
                facts={"folders": names},
            )
        mailbox, how = found
        why = "flagged \\Sent (RFC 6154)" if how is FolderSource.SPECIAL_USE else "by its name"
        return Found(f"'{mailbox.name}', {why}", {"folder": mailbox.name, "found_by": how.value})

    async def send(self) -> Found:
        """Send a short test mail to send_to through UpstreamPool, as delivery does."""
        if self.send_to is None:
            raise StageSkipped("no test mail: give --send-to ADDRESS to send one")
        context, user, now = self.context, self.context.user, time.time()
        raw = (
            f"From: {user.email}\r\nTo: {self.send_to}\r\n"
            f"Subject: relay check for {user.login}\r\n\r\n"
            f"'relay check {user.login}' sent this mail to test the account; delete it.\r\n"
        ).encode()
        prepared = prepare(raw, user, user.email, now)
        settings = PoolSettings(
            local_hostname=context.config.hostname,
            timeouts=UpstreamTimeouts(context.connect_timeout, context.timeout),
            max_per_key=1,
            idle_timeout=0.0,
        )
        pool = UpstreamPool(settings, context.tls)
        smtp, ca_file = context.provider.smtp, context.provider.ca_file
        account = UpstreamAccount(
            smtp, user.upstream_user, context.secret, ca_file, bearer=context.bearer
        )
        try:
            outcome = await pool.send(
                user.login, account, prepared.sender, [self.send_to], prepared.upstream
            )
        except UpstreamError as error:
            raise StageFailure(error.text, error.text, fix=SEND_FIX) from None
        finally:
            await pool.close_all()
        facts: dict[str, object] = {"message_id": prepared.message_id, "to": self.send_to}
        if not outcome.delivered or outcome.reply is None:
            refusal = next(iter({**outcome.failed, **outcome.deferred}.values()), None)
            reply = refusal.line if refusal is not None else None
            raise StageFailure(f"{self.send_to} refused", reply, fix=SEND_FIX, facts=facts)
        self.sent = (prepared.sent_copy, prepared.message_id, now)
        facts["reply"] = outcome.reply.line
        return Found(f"sent {prepared.message_id} to {self.send_to}: {outcome.reply}", facts)

    async def sent_copy(self) -> Found:
        """File the test mail's copy as delivery does, then look for it in the folder."""
        if self.sent is None:
            raise StageSkipped("no test mail was sent")
        account, (data, message_id, sent_at) = self._account(), self.sent
        try:
            result = await append_sent_copy(
                account,
                data,
                message_id,
                sent_at,
                plan=self.plan,
                folder_override=sent_folder_override(self.context.user, self.context.provider),
                remembered_folder=self.context.user.sent_folder_found,
                tls=self.context.tls,
                timeout=self.context.timeout,
            )
            seen = await self._in_thread(self._holds, encode_mailbox(result.folder), message_id)
        except SentCopyError as error:
            raise StageFailure(str(error), error.reply, fix=SENT_FIX) from None
        facts: dict[str, object] = {"folder": result.folder, "appended": result.appended}
        if not seen:
            summary = f"the copy is not in '{result.folder}' after it was filed"
            raise StageFailure(summary, None, fix=SENT_FIX, facts=facts)
        how = "filed by relay" if result.appended else "the provider had filed it already"
        return Found(f"copy seen in '{result.folder}' ({how})", facts)

    async def close(self) -> None:
        """Log out of the IMAP session if one is open."""
        session, self.session = self.session, None
        if session is not None:
            await self._in_thread(session.logout)

    def _account(self) -> ImapAccount:
        """The IMAP account when relay files Sent copies for this user; else StageSkipped."""
        provider, user = self.context.provider, self.context.user
        account = imap_account(user, provider, self.context.secret, bearer=self.context.bearer)
        if account is None:
            raise StageSkipped(f"no Sent copy: provider {provider.name} has no imap endpoint")
        if self.plan is SentCopyPlan.SKIP:
            if (user.sent_copy or provider.sent_copy).value == "never":
                raise StageSkipped("no Sent copy: sent_copy is never")
            raise StageSkipped(
                f"no Sent copy from relay: {provider.preset or provider.name} files its own "
                "copy of mail sent through SMTP"
            )
        return account

    def _session(self) -> ImapSession:
        if self.session is None:
            raise RuntimeError("an IMAP stage ran without a session")  # imap-login failed
        return self.session

    def _holds(self, wire: str, message_id: str) -> bool:
        """In a worker thread: whether the folder has the message, seen over a fresh session."""
        account, context = self._account(), self.context
        tls = context.tls.for_ca_file(account.ca_file)
        session = connect(account, tls, context.timeout, self.aborter)
        try:
            return session.holds(wire, message_id)
        finally:
            session.logout()

    async def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(work, *args)
        except asyncio.CancelledError:
            # The worker thread is blocked on a socket: cutting it ends the thread now.
            self.aborter.abort()
            raise
