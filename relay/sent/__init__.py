"""Filing a copy in the user's Sent folder over IMAP: folder discovery, APPEND, the IMAP wire."""

from relay.sent.filing import (
    FolderSource,
    SentCopyPlan,
    SentCopyResult,
    append_sent_copy,
    find_sent_folder,
    imap_account,
    plan_sent_copy,
    retry_plan,
    sent_folder_holds,
    sent_folder_override,
)
from relay.sent.imap import Aborter, ImapAccount, ImapSession, connect
from relay.sent.imapwire import encode_mailbox

__all__ = [
    "Aborter",
    "FolderSource",
    "ImapAccount",
    "ImapSession",
    "SentCopyPlan",
    "SentCopyResult",
    "append_sent_copy",
    "connect",
    "encode_mailbox",
    "find_sent_folder",
    "imap_account",
    "plan_sent_copy",
    "retry_plan",
    "sent_folder_holds",
    "sent_folder_override",
]
