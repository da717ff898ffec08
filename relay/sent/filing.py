"""Filing a copy of each sent mail in the user's Sent folder over IMAP (DESIGN.md §7).

The IMAP work runs in a worker thread with the standard library's imaplib (relay.sent.imap says
why not aioimaplib); this module decides whether to file a copy, finds the folder and appends. It
never sends the mail: a failed copy is the caller's to retry on its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.config.model import ProviderConfig
from relay.errors import SentCopyError
from relay.message import MessageData
from relay.model import Secret, User
from relay.providers.presets import SentCopy, Transport
from relay.sent.imap import Aborter, ImapAccount, ImapSession, Literal, connect, literal_for
from relay.sent.imapwire import Mailbox, decoded_or_wire, encode_mailbox
from relay.tls import TlsContexts

logger = logging.getLogger("relay.sent")  # the name shows in log lines: kept from 0.1

# Tried in this order, ignoring case, when no mailbox is flagged \Sent (RFC 6154). Exchange and
# Outlook name the folder in the mailbox's language when they create it (PROVIDERS.md [26]).
KNOWN_SENT_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "[Gmail]/Sent Mail",
    "[Google Mail]/Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
    "Enviados",
    "Itens Enviados",
    "Mensagens Enviadas",
    "Elementos enviados",
    "Mensajes enviados",
    "Gesendet",
    "Gesendete Elemente",
    "Gesendete Objekte",
    "Envoyés",
    "Éléments envoyés",
    "Messages envoyés",
    "Posta inviata",
    "Elementi inviati",
    "Verzonden items",
    "Verzonden",
    "Skickat",
    "Skickade objekt",
    "Sendt",
    "Sendte elementer",
    "Lähetetyt",
    "Wysłane",
    "Elementy wysłane",
    "Odeslaná pošta",
    "Отправленные",
)
# Courier and Cyrus keep every folder under INBOX (RFC 2342 personal namespace "INBOX.").
_INBOX_PREFIXES = ("inbox.", "inbox/")


class SentCopyPlan(enum.Enum):
    """What to do about the Sent copy of one sent mail."""

    SKIP = "skip"  # the provider files its own copy, or nobody wants one
    APPEND = "append"  # file the copy without looking first
    # Search the folder for the Message-ID first and file the copy only if it is missing.
    APPEND_IF_MISSING = "append-if-missing"


class FolderSource(enum.Enum):
    """How the Sent folder was chosen."""

    OVERRIDE = "override"  # named in the user's or the provider's settings
    REMEMBERED = "remembered"  # found last time, and still there
    SPECIAL_USE = "special-use"  # flagged \Sent (RFC 6154)
    KNOWN_NAME = "known-name"  # one of KNOWN_SENT_NAMES
    CREATED = "created"  # none found, so relay made one


@dataclass(frozen=True, slots=True)
class SentCopyResult:
    """Where the copy went, and whether relay had to file it."""

    folder: str
    found_by: FolderSource
    appended: bool  # False when a copy with this Message-ID was in the folder already
    created_folder: bool
    seconds: float

    @property
    def folder_to_remember(self) -> str | None:
        """The folder to pass as remembered_folder next time; None when a setting named it."""
        return None if self.found_by is FolderSource.OVERRIDE else self.folder


@dataclass(frozen=True, slots=True)
class _Job:
    account: ImapAccount
    message: Literal = field(repr=False)
    message_id: str
    sent_at: float
    plan: SentCopyPlan
    folder_override: str | None
    remembered_folder: str | None
    timeout: float


def plan_sent_copy(provider: ProviderConfig, user_choice: SentCopy | None) -> SentCopyPlan:
    """The plan for a user's mail: the user's sent_copy if set, else the provider's."""
    choice = provider.sent_copy if user_choice is None else user_choice
    if provider.imap is None or choice is SentCopy.NEVER:
        return SentCopyPlan.SKIP
    if provider.transport is Transport.GRAPH:
        # sendMail files the copy in the mailbox's Sent Items (saveToSentItems, default true).
        return SentCopyPlan.SKIP
    if choice is SentCopy.ALWAYS:
        # Whoever chose 'always' says the provider files no copy of its own: skip the search.
        return SentCopyPlan.APPEND
    if provider.files_sent_itself:
        return SentCopyPlan.SKIP
    # No preset is sure its provider files no copy (PROVIDERS.md §1, §5.2) and an explicit host
    # is unknown, so look for the Message-ID before filing one.
    return SentCopyPlan.APPEND_IF_MISSING


def retry_plan(plan: SentCopyPlan) -> SentCopyPlan:
    """The plan for a later attempt: an earlier APPEND may have landed before its reply was lost."""
    return SentCopyPlan.APPEND_IF_MISSING if plan is SentCopyPlan.APPEND else plan


def imap_account(
    user: User, provider: ProviderConfig, secret: Secret, *, bearer: bool = False
) -> ImapAccount | None:
    """The user's IMAP login, with the same name and secret as SMTP; None without imap."""
    if provider.imap is None:
        return None
    return ImapAccount(
        user.login, provider.imap, user.upstream_user, secret, provider.ca_file, bearer
    )


def sent_folder_override(user: User, provider: ProviderConfig) -> str | None:
    """The Sent folder a setting names: the user's, else the provider's."""
    return user.sent_folder or provider.sent_folder


def find_sent_folder(mailboxes: Sequence[Mailbox]) -> tuple[Mailbox, FolderSource] | None:
    """The Sent folder among mailboxes: the one flagged \\Sent, else one with a known name."""
    usable = [mailbox for mailbox in mailboxes if mailbox.selectable]
    for mailbox in usable:
        if "\\sent" in mailbox.flags:
            return mailbox, FolderSource.SPECIAL_USE
    by_key: dict[str, Mailbox] = {}
    for mailbox in usable:
        by_key.setdefault(_name_key(mailbox.name), mailbox)
        if mailbox.name[:6].casefold() in _INBOX_PREFIXES:
            by_key.setdefault(_name_key(mailbox.name[6:]), mailbox)
    for known in KNOWN_SENT_NAMES:
        found = by_key.get(_name_key(known))
        if found is not None:
            return found, FolderSource.KNOWN_NAME
    return None


def _name_key(name: str) -> str:
    # Names typed on different systems may differ in Unicode normal form as well as case.
    return unicodedata.normalize("NFC", name).casefold()


async def append_sent_copy(
    account: ImapAccount,
    message: MessageData,
    message_id: str,
    sent_at: float,
    *,
    plan: SentCopyPlan,
    folder_override: str | None,
    remembered_folder: str | None,
    tls: TlsContexts,
    timeout: float,
) -> SentCopyResult:
    """File the copy as plan says, each network step within timeout; SentCopyError if not."""
    if plan is SentCopyPlan.SKIP:
        raise ValueError("plan SKIP: there is no copy to file")
    if not (message_id.isascii() and message_id.isprintable() and message_id.strip()):
        raise ValueError(f"message_id must be printable ASCII, got {message_id!r}")
    job = _Job(
        account,
        # CRLF: spooled mail is, from the moment it arrives (message.prepare). A large copy is
        # read from the spool as the APPEND goes out.
        literal_for(message, asyncio.get_running_loop(), timeout),
        message_id,
        sent_at,
        plan,
        folder_override,
        remembered_folder,
        timeout,
    )
    context = tls.for_ca_file(account.ca_file)
    aborter = Aborter()
    started = time.monotonic()
    try:
        folder, found_by, appended, created = await asyncio.to_thread(
            _file_copy, job, context, aborter
        )
    except asyncio.CancelledError:
        # The worker thread is blocked on the socket; cutting it ends the thread now.
        aborter.abort()
        raise
    except SentCopyError as error:
        logger.warning(
            "sent.failed user=%s msg_id=%s step=%s retry=%s reply=%s",
            account.login,
            message_id,
            error.step,
            error.retry.value,
            error.reply,
        )
        raise
    result = SentCopyResult(folder, found_by, appended, created, time.monotonic() - started)
    event = "sent.appended" if appended else "sent.already_there"
    logger.info(
        "%s user=%s folder=%r found_by=%s msg_id=%s seconds=%.3f",
        event,
        account.login,
        folder,
        found_by.value,
        message_id,
        result.seconds,
    )
    return result


def _file_copy(
    job: _Job, context: ssl.SSLContext, aborter: Aborter
) -> tuple[str, FolderSource, bool, bool]:
    """In a worker thread: log in, choose the folder, look if asked to, append."""
    account = job.account
    session = connect(account, context, job.timeout, aborter)
    try:
        name, wire, found_by = _choose_folder(session, job)
        created = found_by is FolderSource.CREATED
        if (
            job.plan is SentCopyPlan.APPEND_IF_MISSING
            and not created
            and session.holds(wire, job.message_id)
        ):
            appended = False
        else:
            created = _append(session, job, name, wire) or created
            appended = True
    except BaseException:
        session.close()
        raise
    session.logout()
    return name, found_by, appended, created


def _choose_folder(session: ImapSession, job: _Job) -> tuple[str, str, FolderSource]:
    """(name, wire name, how found): override, remembered, \\Sent, known name, else created."""
    login = job.account.login
    found = _find_folder(session, login, job.folder_override, job.remembered_folder)
    if found is not None:
        return found
    wire = session.personal_prefix() + "Sent"
    session.create(wire)
    name = decoded_or_wire(wire)
    logger.info(
        "sent.folder_created user=%s folder=%r reason=no \\Sent flag and no known name",
        login,
        name,
    )
    return name, wire, FolderSource.CREATED


def _find_folder(
    session: ImapSession, login: str, override: str | None, remembered: str | None
) -> tuple[str, str, FolderSource] | None:
    """(name, wire name, how found) of the Sent folder there is, or None."""
    if override:
        return override, encode_mailbox(override), FolderSource.OVERRIDE
    if remembered:
        wire = encode_mailbox(remembered)
        # LIST with the name as pattern; a * or % in it only widens the answer.
        if any(m.wire == wire and m.selectable for m in session.list_mailboxes(wire)):
            return remembered, wire, FolderSource.REMEMBERED
        logger.info("sent.remembered_gone user=%s folder=%r", login, remembered)
    found = find_sent_folder(session.list_mailboxes())
    if found is None:
        return None
    mailbox, source = found
    return mailbox.name, mailbox.wire, source


async def sent_folder_holds(
    account: ImapAccount,
    message_id: str,
    *,
    folder_override: str | None,
    remembered_folder: str | None,
    tls: TlsContexts,
    timeout: float,
) -> bool:
    """Whether the user's Sent folder holds a mail with this Message-ID; SentCopyError if unsure."""
    context = tls.for_ca_file(account.ca_file)
    aborter = Aborter()

    def look() -> bool:
        session = connect(account, context, timeout, aborter)
        try:
            found = _find_folder(session, account.login, folder_override, remembered_folder)
            held = found is not None and session.holds(found[1], message_id)
        except BaseException:
            session.close()
            raise
        session.logout()
        return held

    try:
        return await asyncio.to_thread(look)
    except asyncio.CancelledError:
        aborter.abort()
        raise


def _append(session: ImapSession, job: _Job, name: str, wire: str) -> bool:
    """APPEND, creating the folder if the server says so; True if it had to be created."""
    try:
        session.append(wire, job.message, job.sent_at)
        return False
    except SentCopyError as error:
        if error.code != "TRYCREATE":
            raise
    # RFC 3501 §6.3.11: [TRYCREATE] means the APPEND would work once the mailbox exists.
    created = session.create(wire)
    logger.info(
        "sent.folder_created user=%s folder=%r reason=server said TRYCREATE",
        job.account.login,
        name,
    )
    session.append(wire, job.message, job.sent_at)
    return created
