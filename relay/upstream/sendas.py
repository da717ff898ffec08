"""Send As: which mailbox a mail goes out through and whose Sent folder keeps its copy.

A user logs in upstream as one mailbox (upstream_user: their own, a delegate's, or any mailbox
of the organisation's app) and may put a shared address they have Send As rights on in From
(one of their aliases). Exchange Online and Gmail file the copy in the Sent folder of the
mailbox that logged in; Graph in the Sent Items of the mailbox in the /users/{id} it was sent
through. With sent_copy_mailbox: sender relay uses the From's mailbox instead, where it can.
"""

from __future__ import annotations

from dataclasses import replace

from relay.config.model import ProviderConfig
from relay.message import MessageData, header_end, sender_fields
from relay.model import User
from relay.providers.presets import SentCopyMailbox

HEADER_LIMIT = 65536  # octets read to find From in a large mail kept in the spool


def copy_mailbox(user: User, provider: ProviderConfig, header: bytes) -> str:
    """The mailbox to send through (Graph) and file the copy in: upstream_user or From's."""
    if provider.sent_copy_mailbox is not SentCopyMailbox.SENDER:
        return user.upstream_user
    own = {address.lower() for address in user.sender_addresses}
    for name, addresses in sender_fields(header):
        if name.lower() != "from":
            continue
        # The listener let only the user's own addresses through; an alias other than the
        # mailbox relay logs in as is a shared one.
        shared = [a.lower() for a in addresses if a.lower() in own]
        if len(shared) == 1:
            return shared[0]
    return user.upstream_user


async def message_header(data: MessageData) -> bytes:
    """The header block of data, read from the spool when the mail is kept there."""
    first = data[:HEADER_LIMIT] if isinstance(data, bytes) else await data.read(0, HEADER_LIMIT)
    return first[: header_end(first)]


def as_mailbox(user: User, mailbox: str) -> User:
    """user, logging in upstream as mailbox: an organisation credential gets its token."""
    if mailbox == user.upstream_user:
        return user
    # Not the user's Sent folder: what discovery remembered for theirs does not apply.
    return replace(user, upstream_user=mailbox, sent_folder_found=None)
