"""In-doubt mail: an attempt that may have reached the provider, though no reply said so.

A provider that files every submitted mail in Sent itself (Gmail, Microsoft 365) keeps the
evidence: before such mail is sent again, its Message-ID is looked up in the user's Sent folder
over IMAP, and found means delivered. Elsewhere there is nothing to look at, so the mail is
sent again (at least once, never lost) and the log says it may arrive twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from relay.config.model import ProviderConfig
from relay.errors import PolicyRejection, SentCopyError, UpstreamError
from relay.model import Secret, User
from relay.providers.presets import GRAPH_URL, Transport
from relay.queue.records import QueueEntry
from relay.queue.spool import Spool
from relay.reply import Reply
from relay.sent.filing import imap_account, sent_folder_holds, sent_folder_override
from relay.tls import TlsContexts
from relay.upstream.account import SendOutcome
from relay.upstream.credentials import Credentials
from relay.upstream.graph import GraphAccount, GraphTransport
from relay.upstream.sendas import copy_mailbox, message_header

logger = logging.getLogger("relay.attempts")  # the name shows in log lines: kept from 0.1

# A provider files its copy a moment after it accepts the mail: an in-doubt attempt younger
# than this is not looked up yet, or a copy still on its way would be missed and sent twice.
SETTLE_SECONDS = 5.0
FOUND_IN_SENT = Reply(250, "2.0.0", "found in the Sent folder after an attempt got no answer")


class Doubt(Enum):
    """What to do about mail whose last attempt may have delivered it."""

    NONE = "none"  # nothing in doubt: send
    WAIT = "wait"  # too early to look: leave it for a later round
    FOUND = "found"  # in the Sent folder: delivered, do not send
    RESEND = "resend"  # not found, or nowhere to look: send, counting a possible duplicate


class InDoubtCheck:
    """Decides, for mail an earlier attempt may have delivered, whether to send it again."""

    def __init__(
        self,
        credentials: Credentials,
        tls: TlsContexts,
        graph: Callable[[], GraphTransport],
        spool: Spool,
    ) -> None:
        self._credentials = credentials
        self._tls = tls
        self._graph = graph
        self._spool = spool

    async def decide(
        self, entry: QueueEntry, user: User | None, provider: ProviderConfig | None, timeout: float
    ) -> Doubt:
        """Look before sending again, where the provider keeps something to look at."""
        if entry.claimed_at is None:
            return Doubt.NONE
        if user is None or provider is None or not _files_sent_itself(provider):
            logger.warning(
                "delivery.maybe_duplicate id=%s user=%s msg_id=%s reason=an earlier attempt "
                "got no answer after the end of DATA and the provider keeps no copy to look for",
                entry.id,
                entry.login,
                entry.message_id,
            )
            return Doubt.RESEND
        if time.time() - entry.claimed_at < SETTLE_SECONDS:
            return Doubt.WAIT
        try:
            found = await self._look(entry, user, provider, timeout)
        except (SentCopyError, UpstreamError, PolicyRejection) as error:
            logger.warning(
                "delivery.maybe_duplicate id=%s user=%s msg_id=%s reason=could not look in Sent: "
                "%s",
                entry.id,
                entry.login,
                entry.message_id,
                error,
            )
            return Doubt.RESEND
        logger.info(
            "delivery.in_doubt id=%s user=%s msg_id=%s found_in_sent=%s",
            entry.id,
            entry.login,
            entry.message_id,
            "yes" if found else "no",
        )
        return Doubt.FOUND if found else Doubt.RESEND

    async def _look(
        self, entry: QueueEntry, user: User, provider: ProviderConfig, timeout: float
    ) -> bool:
        opened = await self._credentials.open(user, provider)
        if provider.transport is Transport.GRAPH:
            return await self._look_in_sent_items(entry, user, provider, opened.secret)
        account = imap_account(user, provider, opened.secret, bearer=opened.bearer)
        if account is None:
            return False
        return await sent_folder_holds(
            account,
            entry.message_id,
            folder_override=sent_folder_override(user, provider),
            remembered_folder=user.sent_folder_found,
            tls=self._tls,
            timeout=timeout,
        )

    async def _look_in_sent_items(
        self, entry: QueueEntry, user: User, provider: ProviderConfig, token: Secret
    ) -> bool:
        """Graph: the Sent Items of the mailbox sendMail went through (Send As: From's)."""
        # The header is in the spool's first piece: reading it is cheap next to a re-send.
        data = await self._spool.open_data(entry.id)
        header = await message_header(data) if data is not None else b""
        mailbox = copy_mailbox(user, provider, header)
        base = provider.graph_url or GRAPH_URL
        account = GraphAccount(base, mailbox, token, provider.ca_file)
        return await self._graph().sent_items_hold(account, entry.message_id)


def found_in_sent(entry: QueueEntry) -> SendOutcome:
    """The outcome of mail found in Sent: delivered to every recipient still pending."""
    return SendOutcome(FOUND_IN_SENT, delivered=dict.fromkeys(entry.pending, FOUND_IN_SENT))


def _files_sent_itself(provider: ProviderConfig) -> bool:
    if provider.transport is Transport.GRAPH:
        return True  # sendMail saves to Sent Items; Graph's query looks there
    return provider.files_sent_itself and provider.imap is not None
