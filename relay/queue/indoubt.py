"""In-doubt mail: an attempt that may have reached the provider, though no reply said so.

A provider that files every submitted mail in Sent itself (Gmail, Microsoft 365) keeps the
evidence: before such mail is sent again, its Message-ID is looked up in the user's Sent folder
over IMAP, and found means delivered. Elsewhere there is nothing to look at, so the mail is
sent again (at least once, never lost) and the log says it may arrive twice.
"""

from __future__ import annotations

import logging
import time
from enum import Enum

from relay.config.model import ProviderConfig
from relay.errors import PolicyRejection, SentCopyError, UpstreamError
from relay.model import User
from relay.queue.records import QueueEntry
from relay.reply import Reply
from relay.sent.filing import imap_account, sent_folder_holds, sent_folder_override
from relay.tls import TlsContexts
from relay.upstream.account import SendOutcome
from relay.upstream.credentials import Credentials

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

    def __init__(self, credentials: Credentials, tls: TlsContexts) -> None:
        self._credentials = credentials
        self._tls = tls

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


def found_in_sent(entry: QueueEntry) -> SendOutcome:
    """The outcome of mail found in Sent: delivered to every recipient still pending."""
    return SendOutcome(FOUND_IN_SENT, delivered=dict.fromkeys(entry.pending, FOUND_IN_SENT))


def _files_sent_itself(provider: ProviderConfig) -> bool:
    return provider.files_sent_itself and provider.imap is not None
